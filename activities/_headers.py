"""The headers of the emails DEE sends: the policy that writes them, and the one way to set
them from data, which no data can use to add a header or replace the body."""

from __future__ import annotations

import email.policy
import re
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from typing import Final

from activities._attempt import permanent

__all__ = ["POLICY", "set_header"]


class _UnfoldedHeader(UnstructuredHeader, BaseHeader):
    """A header whose value must reach the reader as written.

    The standard folding turns a long unbreakable token (a URL in List-Unsubscribe, a long
    run id) into RFC 2047 encoded words, which unsubscribe handlers do not decode. These
    values are ASCII and single-line (the policy refuses CR and LF), so they are folded
    only after commas, never inside a URL.
    """

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if not value.isascii():
            return super().fold(policy=policy)
        return f"{self.name}: " + f",{policy.linesep} ".join(value.split(", ")) + policy.linesep


_FACTORY = HeaderRegistry()
for _name in ("list-unsubscribe", "x-dee-run", "x-dee-step"):
    _FACTORY.map_to_type(_name, _UnfoldedHeader)
POLICY: Final = email.policy.SMTP.clone(header_factory=_FACTORY)


#: What no header may hold once its value is parsed, encoded words (RFC 2047) decoded: line
#: breaks, NUL, the other C0 controls and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def set_header(message: EmailMessage, name: str, value: str, *, step_id: str) -> None:
    """Set one header, refusing any value that could end it early.

    The policy refuses raw CR and LF, but the header registry decodes encoded words
    (``=?utf-8?q?...=0D=0A...?=``, ``=?utf-8?b?...?=``) and would write the line breaks they
    hold out as real ones, adding headers or a body of the sender's choosing. So the value
    is checked as parsed, not as given.
    """
    try:
        message[name] = value
    except ValueError as exc:
        raise permanent(
            f"step {step_id!r}: the {name} header cannot be built: {exc}", "InvalidHeader"
        ) from None
    if _CONTROL.search(str(message[name])):
        raise permanent(
            f"step {step_id!r}: the {name} header would hold a line break or control "
            "character once its encoded words (=?...?=) are decoded; remove them from the "
            "contact, variable or template it comes from",
            "InvalidHeader",
        )
