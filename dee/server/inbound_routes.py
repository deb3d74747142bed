"""Inbound webhooks: replies by mail, and SendGrid's delivery events.

- ``POST /webhooks/inbound/raw?key=<DEE_INBOUND_SECRET>``: one raw RFC 822 message
  (``message/rfc822``, ``application/octet-stream`` or ``text/plain``), as an MTA pipe or a
  provider that forwards raw mail would post it;
- ``POST /webhooks/inbound/sendgrid?key=...``: SendGrid Inbound Parse's form, raw (field
  ``email``) or parsed (field ``headers``);
- ``POST /webhooks/sendgrid/events``: SendGrid's event webhook, verified by its ECDSA
  signature.

A reply becomes a ``reply`` event (``auto-reply`` for an out-of-office notice) on the step
that sent the email it answers (:mod:`dee.server.inbound_match`); a mail to the ``mailto:``
of ``List-Unsubscribe`` with a valid signed token unsubscribes (:mod:`dee.runs.unsubscribe`);
a delivery status notification with a failed recipient (:mod:`dee.server.dsn`) is a
``bounce`` on the step that sent the returned message, and a hard one suppresses the address
when it is the run's contact. Every inbound message is kept, and one that matches no run is
logged as a warning and listed by :meth:`InboundStore.unmatched`.
Event ids come from the provider's own ids (the inbound Message-ID, SendGrid's
``sg_event_id``), and what was processed is recorded, so a retried or replayed delivery is
answered 200 again without signalling twice. A run that has ended is no reason for the
provider to retry: that is answered 200 too, and noted.

The key sits in the URL because that is all providers let one configure; keep access logs
that record query strings out of reach, or strip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import logging
from typing import Annotated, Final, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, JsonValue

from dee.runs.client import send_event
from dee.runs.contacts import ContactIds
from dee.runs.errors import RunClosedError, RunNotFoundError
from dee.runs.ledger import SendLedger
from dee.runs.suppressions import InvalidContactValueError, Suppressions, normalize_address
from dee.runs.unsubscribe import run_contact, unsubscribe
from dee.server._http import ApiError
from dee.server.inbound_mail import (
    InboundError,
    InboundMail,
    parse_message,
    parse_sendgrid_form,
)
from dee.server.inbound_match import (
    Match,
    UnsubscribeRequest,
    match_message,
    unsubscribe_request,
)
from dee.server.inbound_store import Delivery, InboundKind, InboundStore
from dee.server.return_date import message_return_date
from dee.server.sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridError,
    SendGridEvent,
    SignatureError,
    load_public_key,
    parse_events,
    verify_signature,
)
from dee.server.state import ServerState, server_state
from dee.settings import split_keys
from dee.storage.store import Store

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["webhooks"])

State = Annotated[ServerState, Depends(server_state)]
_S = TypeVar("_S", bound=Store)

#: The ``stores`` names; the send ledger is shared with the other routes that use it.
_RAW_TYPES: Final = frozenset({"", "message/rfc822", "application/octet-stream", "text/plain"})


class InboundAnswer(BaseModel):
    """What became of an inbound message."""

    #: ``reply``, ``auto-reply``, ``unmatched``; ``duplicate`` for one received before.
    status: str
    #: Its row in ``inbound_messages``.
    inbound_id: int
    run_id: str | None = None
    step_id: str | None = None
    #: Whether the run took the event (``signalled``), had ended, or there was none.
    delivery: str


class EventsAnswer(BaseModel):
    """How many events of a SendGrid POST went where."""

    received: int
    signalled: int = 0
    duplicates: int = 0
    #: Events of types runs do not hear about (``processed``, ``deferred``).
    ignored: int = 0
    #: Events whose ``smtp-id`` names no message DEE sent.
    unmatched: int = 0
    #: Events for runs that have ended or do not exist.
    closed: int = 0
    suppressed: int = 0


async def _ledger(state: ServerState) -> SendLedger:
    return await state.store(SendLedger)


async def _inbound(state: ServerState) -> InboundStore:
    return await state.store(InboundStore)


def _check_key(state: ServerState, key: str | None) -> None:
    secret = state.settings.inbound_secret
    if not secret:
        raise ApiError(
            503,
            "not-configured",
            "the inbound-mail webhook is off: set DEE_INBOUND_SECRET and put it in the "
            "webhook URL as ?key=...",
        )
    if not key:
        raise ApiError(401, "missing-key", "add ?key=<DEE_INBOUND_SECRET> to the webhook URL")
    # Several secrets, comma-separated, while one is rotated: any of them is accepted.
    matches = [hmac.compare_digest(key.encode(), value.encode()) for value in split_keys(secret)]
    if not any(matches):
        raise ApiError(403, "bad-key", "the key does not match DEE_INBOUND_SECRET")


Key = Annotated[str | None, Query(description="DEE_INBOUND_SECRET")]


@router.post("/webhooks/inbound/raw", response_model=InboundAnswer)
async def inbound_raw(request: Request, state: State, key: Key = None) -> InboundAnswer:
    """Receive one raw RFC 822 message."""
    _check_key(state, key)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _RAW_TYPES:
        raise ApiError(
            415,
            "unsupported-media-type",
            f"expected the raw message as message/rfc822 or application/octet-stream, "
            f"not {media!r}",
        )
    body = await request.body()
    try:
        mail = parse_message(body)
    except InboundError as exc:
        raise ApiError(400, "bad-message", str(exc)) from None
    return await _receive(state, mail, source="raw")


@router.post("/webhooks/inbound/sendgrid", response_model=InboundAnswer)
async def inbound_sendgrid(request: Request, state: State, key: Key = None) -> InboundAnswer:
    """Receive one message from SendGrid Inbound Parse (raw or parsed)."""
    _check_key(state, key)
    body = await request.body()
    try:
        mail = parse_sendgrid_form(request.headers.get("content-type", ""), body)
    except InboundError as exc:
        raise ApiError(400, "bad-message", str(exc)) from None
    return await _receive(state, mail, source="sendgrid-parse")


async def _deliver(
    state: ServerState,
    run_id: str,
    *,
    type: str,
    step_id: str | None,
    event_id: str,
    details: dict[str, JsonValue],
    at: datetime.datetime | None = None,
    execution: str | None = None,
) -> Delivery:
    """Signal the run; an ended or unknown run is noted, not retried by the provider.
    Temporal being unreachable propagates (500), so the provider tries again later."""
    try:
        await send_event(
            state.client,
            run_id,
            type=type,
            step_id=step_id,
            event_id=event_id,
            details=details,
            at=at,
            execution=execution,
        )
    except RunClosedError:
        return "run-closed"
    except RunNotFoundError:
        return "run-not-found"
    return "signalled"


async def _receive(state: ServerState, mail: InboundMail, *, source: str) -> InboundAnswer:
    store = await _inbound(state)
    seen = await asyncio.to_thread(store.find, mail.event_id)
    if seen is not None:
        logger.info("inbound message %d delivered again; already processed", seen.id)
        return InboundAnswer(
            status="duplicate",
            inbound_id=seen.id,
            run_id=seen.run_id,
            step_id=seen.step_id,
            delivery=seen.delivery,
        )
    ledger = await _ledger(state)
    match: Match | None
    delivery: Delivery = "none"
    kind: InboundKind
    request = unsubscribe_request(mail, secret=state.settings.secret_key)
    if request is not None:
        match = Match(run_id=request.run_id, step_id=None, matched_by="unsubscribe-token")
        kind, delivery = "unsubscribe", await _unsubscribe_by_mail(state, ledger, request)
    else:
        match = await asyncio.to_thread(
            match_message, mail, lookup=ledger.get, secret=state.settings.secret_key
        )
    if match is None:
        kind = "unmatched"
    elif request is None and mail.bounce is not None:
        kind, delivery = "bounce", await _bounce(state, ledger, mail, match, source=source)
    elif request is None:
        kind = "auto-reply" if mail.auto_reason else "reply"
        details: dict[str, JsonValue] = {"source": source, "matchedBy": match.matched_by}
        if mail.auto_reason:
            details["autoReason"] = mail.auto_reason
            back = message_return_date(
                mail.raw, subject=mail.subject, received=datetime.datetime.now(datetime.UTC).date()
            )
            if back is not None:
                # For pauseOnAutoReply: the run holds its next send until the day after.
                details["returnDate"] = back.isoformat()
        # Recorded only after the run took it: a failed signal leaves the provider to retry.
        delivery = await _deliver(
            state,
            match.run_id,
            type=kind,
            step_id=match.step_id,
            event_id=mail.event_id,
            details=details,
            execution=match.execution,
        )
    record, created = await asyncio.to_thread(
        store.record, mail, source=source, kind=kind, match=match, delivery=delivery
    )
    if not created:
        status = "duplicate"
    elif match is None:
        status = kind
        logger.warning(
            "inbound message matched no run: kept as inbound message %d (from a sender at "
            "%s, %d bytes)",
            record.id,
            record.from_domain or "no domain",
            record.size,
        )
    else:
        status = kind
        logger.info(
            "inbound message %d is %s for step %s (matched by %s): %s",
            record.id,
            kind,
            match.step_id or "-",
            match.matched_by,
            delivery,
        )
    return InboundAnswer(
        status=status,
        inbound_id=record.id,
        run_id=record.run_id,
        step_id=record.step_id,
        delivery=record.delivery,
    )


async def _unsubscribe_by_mail(
    state: ServerState, ledger: SendLedger, request: UnsubscribeRequest
) -> Delivery:
    """Suppress the token's address and end its runs; whether the token's own run took it.
    Temporal being unreachable propagates (500): the address is suppressed already, and the
    provider's retry ends the runs."""
    done = await unsubscribe(
        state.client,
        Suppressions.sharing(ledger),
        [request.address],
        reason="unsubscribe",
        source="mailto",
        run_id=request.run_id,
        contacts=await state.store(ContactIds),
    )
    return "signalled" if request.run_id in done.runs_ended else "run-closed"


async def _bounce(
    state: ServerState, ledger: SendLedger, mail: InboundMail, match: Match, *, source: str
) -> Delivery:
    """Signal ``bounce`` to the run whose message came back; a hard bounce also suppresses
    the failed recipient, when it is the run's own contact (a DSN is only mail: anyone can
    write one, and it must not suppress addresses the run never wrote to)."""
    bounce = mail.bounce
    assert bounce is not None
    details: dict[str, JsonValue] = {
        "source": source,
        "matchedBy": match.matched_by,
        "bounceType": "hard" if bounce.hard else "soft",
        "status": bounce.status,
    }
    delivery = await _deliver(
        state,
        match.run_id,
        type="bounce",
        step_id=match.step_id,
        event_id=mail.event_id,
        details=details,
    )
    if not bounce.hard_recipients:
        return delivery
    try:
        contact = await run_contact(state.client, match.run_id)
    except RunNotFoundError:
        logger.warning("a hard bounce for a run that is gone suppressed nothing")
        return delivery
    own = normalize_address(contact.email) if contact.email else None
    for address in bounce.hard_recipients:
        with contextlib.suppress(InvalidContactValueError):
            if normalize_address(address) == own:
                await asyncio.to_thread(
                    Suppressions.sharing(ledger).suppress,
                    address,
                    reason="bounce",
                    source="inbound-bounce",
                    run_id=match.run_id,
                )
    return delivery


# -- SendGrid events ------------------------------------------------------------------------


@router.post("/webhooks/sendgrid/events", response_model=EventsAnswer)
async def sendgrid_events(request: Request, state: State) -> EventsAnswer:
    """Receive a batch of SendGrid events, signed by SendGrid."""
    configured = state.settings.sendgrid_webhook_public_key
    if not configured:
        raise ApiError(
            503,
            "not-configured",
            "the SendGrid event webhook is off: set DEE_SENDGRID_WEBHOOK_PUBLIC_KEY to the "
            "verification key SendGrid shows",
        )
    try:
        public_key = load_public_key(configured)
    except SendGridError as exc:
        raise ApiError(503, "not-configured", str(exc)) from None
    signature = request.headers.get(SIGNATURE_HEADER)
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise ApiError(
            403, "missing-signature", f"the request lacks {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}"
        )
    body = await request.body()
    try:
        verify_signature(public_key, signature=signature, timestamp=timestamp, body=body)
    except SignatureError as exc:
        logger.warning("SendGrid event webhook refused: %s", exc)
        raise ApiError(403, exc.code, str(exc)) from None
    try:
        events = parse_events(body)
    except SendGridError as exc:
        raise ApiError(400, "bad-events", str(exc)) from None
    answer = EventsAnswer(received=len(events))
    store = await _inbound(state)
    ledger = await _ledger(state)
    for event in events:
        await _sendgrid_event(state, event, answer, store=store, ledger=ledger)
    logger.info(
        "SendGrid events: %d received, %d signalled, %d duplicates, %d unmatched, %d suppressed",
        answer.received,
        answer.signalled,
        answer.duplicates,
        answer.unmatched,
        answer.suppressed,
    )
    return answer


async def _sendgrid_event(
    state: ServerState,
    event: SendGridEvent,
    answer: EventsAnswer,
    *,
    store: InboundStore,
    ledger: SendLedger,
) -> None:
    if await asyncio.to_thread(store.seen_event, event.event_id):
        answer.duplicates += 1
        return
    run_id = step_id = execution = None
    for key in event.keys:
        record = await asyncio.to_thread(ledger.get, key)
        if record is not None and record.channel == "email":
            run_id, step_id, execution = record.run_id, record.step_id, record.execution
            break
    if event.type is None:
        answer.ignored += 1
    elif run_id is None or step_id is None:
        answer.unmatched += 1
    else:
        delivery = await _deliver(
            state,
            run_id,
            type=event.type,
            step_id=step_id,
            event_id=event.event_id,
            details=event.details(),
            at=event.at,
            execution=execution,
        )
        if delivery == "signalled":
            answer.signalled += 1
        else:
            answer.closed += 1
    reason = event.suppression
    if reason is not None and event.email is not None:
        suppressions = Suppressions.sharing(ledger)
        try:
            if event.ends_runs:
                await unsubscribe(
                    state.client,
                    suppressions,
                    [event.email],
                    reason=reason,
                    source="sendgrid",
                    run_id=run_id,
                    contacts=await state.store(ContactIds),
                )
            else:
                await asyncio.to_thread(
                    suppressions.suppress,
                    event.email,
                    reason=reason,
                    source="sendgrid",
                    run_id=run_id,
                )
            answer.suppressed += 1
        except InvalidContactValueError:
            logger.warning("SendGrid %s event names no plain address: ignored", event.event)
    # Last, so an event whose signal failed is processed again when SendGrid retries.
    await asyncio.to_thread(
        store.record_event,
        event.event_id,
        provider="sendgrid",
        type=event.event,
        run_id=run_id,
        step_id=step_id,
    )
