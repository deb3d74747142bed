"""Delivery status notifications (RFC 3464): the bounces a plain SMTP server mails back.

A DSN is ``multipart/report; report-type=delivery-status`` with a ``message/delivery-status``
part: a block of per-message fields, then one block per recipient with ``Action``
(``failed``, ``delayed``, ``delivered``, ``relayed``, ``expanded``), ``Status`` (an RFC 3463
code, ``5.1.1``) and ``Final-Recipient`` (``rfc822; ana@example.com``). After it comes the
returned message (``message/rfc822``) or only its headers (``text/rfc822-headers``), whose
``Message-ID`` is the one DEE sent: that is how the bounce finds its run.

:func:`read_bounce` answers a :class:`Bounce` when at least one recipient *failed*: a
``5.x.x`` status is a hard bounce (the address does not exist or refuses for good), any
other a soft one (a full mailbox, a server that gave up on a ``4.x.x``). A report with no
failed recipient (a delay warning, a delivery receipt) is no bounce, and stays what it was
before: an automatic reply.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from typing import Final

__all__ = ["Bounce", "read_bounce"]

_STATUS: Final = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")
#: Recipients read from one report; a DSN lists the few a message went to.
MAX_RECIPIENTS: Final = 50


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a DSN says about the recipients it failed to deliver to."""

    #: Whether any recipient failed with a permanent (``5.x.x``) status.
    hard: bool
    #: The first failed recipient's status, such as ``5.1.1``.
    status: str
    #: The failed recipients with a permanent status (their ``Final-Recipient``).
    hard_recipients: tuple[str, ...]
    #: The ``Message-ID`` header values of the returned message (raw header text).
    original_ids: tuple[str, ...]


def _recipient(value: str | None) -> str | None:
    """``rfc822; ana@example.com`` as ``ana@example.com``; ``None`` for other address types
    or values that are not one plain address."""
    if value is None:
        return None
    kind, semicolon, address = str(value).partition(";")
    if not semicolon or kind.strip().lower() != "rfc822":
        return None
    address = address.strip().strip("<>").strip()
    if "@" not in address or any(char.isspace() for char in address):
        return None
    return address


def _returned_ids(report: Message) -> tuple[str, ...]:
    for part in report.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                return tuple(str(value) for value in inner.get_all("Message-ID") or [])
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                headers = email.message_from_bytes(text, policy=email.policy.compat32)
                return tuple(str(value) for value in headers.get_all("Message-ID") or [])
    return ()


def read_bounce(message: Message) -> Bounce | None:
    """The bounce ``message`` reports, or ``None`` when it is no DSN with a failed
    recipient."""
    if message.get_content_type() != "multipart/report":
        return None
    if str(message.get_param("report-type", "")).lower() != "delivery-status":
        return None
    blocks: list[Message] = []
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks.extend(block for block in payload if isinstance(block, Message))
    failed: list[tuple[str, str | None]] = []
    # The first block holds the per-message fields; the rest are one per recipient.
    for block in blocks[1 : MAX_RECIPIENTS + 1]:
        if str(block.get("Action", "")).strip().lower() != "failed":
            continue
        status = str(block.get("Status", "")).split("(")[0].strip()
        found = _STATUS.match(status)
        failed.append((found.group(0) if found else "5.0.0", _recipient(block["Final-Recipient"])))
    if not failed:
        return None
    hard = tuple(address for status, address in failed if status[0] == "5" and address)
    return Bounce(
        hard=any(status[0] == "5" for status, _ in failed),
        status=failed[0][0],
        hard_recipients=hard,
        original_ids=_returned_ids(message),
    )
