"""Inbound mail, matched: the run and step that sent the email a message answers.

The inbound webhooks (:mod:`dee.server.inbound_routes`) hand every message they have read
(:mod:`dee.server.inbound_mail`) to :func:`match_message`.

**Matching**, first hit wins:

0. For a bounce (a delivery status notification, :mod:`dee.server.dsn`), the Message-ID of
   the message it returns.
1. Every Message-ID in ``In-Reply-To`` and then ``References``, newest first (References
   lists the thread oldest first). DEE's own Message-IDs are ``<{ledger key}@{domain}>``
   (:func:`dee.runs.ledger.email_key`), so the left part of one names its row in the send
   ledger, and with it the run and step. Ids that are not shaped like a ledger key are never
   looked up.
2. A signed plus-address among the recipients (``To``, ``Cc``, ``Delivered-To``,
   ``X-Original-To`` and the provider's envelope): ``replies+<token>@reply.example.com``,
   where the token is a :func:`~dee.runs.tracking.reply_token` (kind ``r``, payload run,
   step and visit) signed with ``DEE_SECRET_KEY``. It catches replies from clients that drop
   the threading headers, where the provider delivers plus-addresses (SendGrid Inbound
   Parse, Mailgun, Postmark do). The email activity would put
   :func:`~dee.runs.tracking.reply_address` in ``Reply-To`` when a reply domain is
   configured; it does not yet, but replies to such addresses are understood already. Tokens
   are case-sensitive and longer than the 64 octets RFC 5321 allows a local part, so an MTA
   that lower-cases or refuses long local parts leaves the message unmatched (and kept).

**Unsubscribes by mail** (:func:`unsubscribe_request`) are recognised before matching: the
``mailto:`` of every email's ``List-Unsubscribe`` has ``subject=unsubscribe <token>``, the
same signed token as the one-click link (run and address). Only a valid token counts, and
the address unsubscribed is the token's, never the mail's ``From``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dee.plans.model import ID_PATTERN
from dee.runs.ledger import SendRecord, key_of_message_id
from dee.runs.suppressions import InvalidContactValueError, normalize_address
from dee.runs.tracking import (
    REPLY,
    UNSUBSCRIBE,
    TokenError,
    execution_of,
    unsubscribe_address,
    verify_token,
)
from dee.server.inbound_mail import InboundMail

__all__ = ["Match", "UnsubscribeRequest", "match_message", "unsubscribe_request"]

#: Parent Message-IDs looked up per message: DEE's own are the newest in a thread.
MAX_LOOKUPS: Final = 20

_STEP_ID = re.compile(ID_PATTERN)
#: ``unsubscribe <token>`` anywhere in a subject ("Re: unsubscribe ..." too).
_UNSUBSCRIBE_SUBJECT = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", re.I)


@dataclass(frozen=True, slots=True)
class Match:
    run_id: str
    #: ``None`` for an unsubscribe, whose token names no step.
    step_id: str | None
    #: ``in-reply-to``/``references``/``original-message`` (a Message-ID DEE sent, the last
    #: one returned in a bounce), ``reply-address`` or ``unsubscribe-token``.
    matched_by: str
    #: The run execution that sent the email answered, when known.
    execution: str | None = None


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """A mail to the ``mailto:`` of ``List-Unsubscribe``: the run and address its signed
    token names."""

    run_id: str
    address: str


def unsubscribe_request(mail: InboundMail, *, secret: str | None) -> UnsubscribeRequest | None:
    """The unsubscribe ``mail`` asks for, when its subject carries an unsubscribe token
    DEE signed with ``secret``; ``None`` otherwise (no token, a forged or altered one, one
    of another kind): such a mail is matched like any other, and unsubscribes nobody."""
    if not secret:
        return None
    for token in _UNSUBSCRIBE_SUBJECT.findall(mail.subject):
        try:
            payload = verify_token(token, secret=secret, kind=UNSUBSCRIBE)
            address = unsubscribe_address(payload, secret=secret)
            return UnsubscribeRequest(run_id=payload["r"], address=normalize_address(address))
        except (TokenError, InvalidContactValueError):
            continue
    return None


def _from_reply_address(address: str, secret: str) -> Match | None:
    local = address.rpartition("@")[0]
    _, plus, token = local.partition("+")
    if not plus or "." not in token:
        return None
    try:
        payload = verify_token(token, secret=secret, kind=REPLY)
    except TokenError:
        return None
    run_id, step_id, visit = payload.get("r"), payload.get("s"), payload.get("v")
    if not isinstance(run_id, str) or not isinstance(step_id, str) or not isinstance(visit, int):
        return None
    if not _STEP_ID.match(step_id):
        return None
    return Match(
        run_id=run_id,
        step_id=step_id,
        matched_by="reply-address",
        execution=execution_of(payload),
    )


def match_message(
    mail: InboundMail,
    *,
    lookup: Callable[[str], SendRecord | None],
    secret: str | None,
) -> Match | None:
    """The run and step ``mail`` answers, or ``None``. ``lookup`` is the send ledger's
    ``get``; ``secret`` (``DEE_SECRET_KEY``) verifies reply addresses. Blocks on the
    ledger: from async code run it in a thread."""
    for parent in mail.parents[:MAX_LOOKUPS]:
        key = key_of_message_id(parent)
        if key is None:
            continue
        record = lookup(key)
        if record is not None and record.channel == "email":
            if parent in mail.originals:
                via = "original-message"
            elif parent in mail.in_reply_to:
                via = "in-reply-to"
            else:
                via = "references"
            return Match(
                run_id=record.run_id,
                step_id=record.step_id,
                matched_by=via,
                execution=record.execution,
            )
    if secret:
        for address in mail.recipients:
            found = _from_reply_address(address, secret)
            if found is not None:
                return found
    return None
