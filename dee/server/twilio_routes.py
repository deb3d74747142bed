"""Twilio's callbacks for voice calls: call progress and answering machine detection.

The ``place_call`` activity (:mod:`activities.voice`) gives every call two callback URLs,
each with a signed DEE token naming the run, step and visit:

- ``POST /webhooks/twilio/status?token=...`` (token kind ``"call"``): call progress;
- ``POST /webhooks/twilio/amd?token=...`` (kind ``"amd"``): what answered, when the step
  asked for voicemail detection; the token may also carry the voicemail as TwiML (``"m"``).

Both are checked twice before anything reaches a run. First ``X-Twilio-Signature``, with
twilio's ``RequestValidator`` keyed by ``TWILIO_AUTH_TOKEN``, over the URL *Twilio* used:
``DEE_PUBLIC_URL`` plus the route's path and the query string exactly as sent (a proxy in
front of the server changes the URL the server sees, not the one Twilio signed), and the
form parameters. Then the DEE token. A missing or wrong signature, or a forged, altered or
wrong-kind token, is ``403`` and nothing is signalled; a server without an auth token or
secret key answers ``503``. Accepted callbacks are answered ``204``: Twilio reads no
TwiML from status callbacks.

What becomes an event on the run (``step_id`` is the call's step):

=====================================================  ================================
callback                                                event
=====================================================  ================================
status ``in-progress`` (answered)                       ``call-answered``
status ``completed``                                    ``call-answered`` (see below)
status ``no-answer``                                    ``no-answer``
status ``busy``                                         ``busy``
status ``failed``, ``canceled``                         ``call-failed``
status ``queued``, ``initiated``, ``ringing``           nothing
status with ``AnsweredBy`` a machine or fax             nothing: the AMD callback tells
AMD ``human``                                           ``call-answered``
AMD ``machine_start``, ``machine_end_*``, ``fax``       ``voicemail``
AMD ``unknown``                                         nothing: the status tells
=====================================================  ================================

Call outcomes
    A final status (``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``) is
    also one ``call-outcome`` event, beside the event above, whose ``details.outcome`` says
    how the call ended (:mod:`dee.plans.call_outcomes`): ``completed`` is ``voicemail``
    when its ``AnsweredBy`` is a machine or a fax, else ``answered``; the others are
    themselves. With asynchronous AMD a completed status has no ``AnsweredBy``: the run
    turns ``answered`` into ``voicemail`` when the AMD callback's ``voicemail`` event names
    the same call. An engine 3 run's ``sendVoice`` step waits for this event.

Event ids are ``twilio:{CallSid}:{event type}``, so the run drops a callback Twilio sends
again, and the answered, completed and AMD-human callbacks of one call make one
``call-answered`` between them: ``completed`` only counts when the answered callback was
lost (a completed call was answered). A machine picks up the line too, so a call that
reached voicemail has both ``voicemail`` and ``call-answered``: plans branch on
``events.has("voicemail")`` first. Details are the call's SID, status, durations,
``AnsweredBy`` and error codes, and the visit; never the phone numbers.

Voicemail
    When a machine answered (not a fax) and the AMD token carries a message, the live
    call's TwiML is replaced with it through twilio's client (``calls(sid).update(twiml=)``
    against ``DEE_TWILIO_API_URL``), so the message starts once the greeting has ended and
    is recorded after the beep. The TwiML travels inline rather than as a ``Url`` Twilio
    would fetch from this server: no extra round trip while the machine records, and
    nothing to serve. The update is claimed in the send ledger as ``voicemail-{CallSid}``
    first and marked sent after, so a callback Twilio sends again does not restart the
    message; one that failed (Twilio down, call hung up) is tried again by the next
    callback. The ``voicemail`` event says how it went in ``details.voicemailMessage``:
    ``sent``, ``already-sent`` or ``failed``.

Runs that have ended or no longer exist take no events; their callbacks are still answered
``204``, since Twilio can do nothing about it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from pydantic import JsonValue
from temporalio.service import RPCError
from twilio.base.exceptions import TwilioException
from twilio.request_validator import RequestValidator

from dee.plans.call_outcomes import CALL_OUTCOME_EVENT, call_outcome
from dee.runs.calls import CALL_SID_PATTERN, twilio_client
from dee.runs.client import send_event
from dee.runs.errors import RunClosedError, RunNotFoundError
from dee.runs.ledger import LedgerError, SendLedger
from dee.runs.tracking import CALL_AMD, CALL_STATUS, TokenError, execution_of, verify_token
from dee.server._http import ApiError
from dee.server.state import ServerState, server_state
from dee.settings import Settings

__all__ = ["AMD_EVENTS", "STATUS_EVENTS", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

STATUS_PATH: Final = "/webhooks/twilio/status"
AMD_PATH: Final = "/webhooks/twilio/amd"
SIGNATURE_HEADER: Final = "X-Twilio-Signature"

#: ``CallStatus`` to event type; statuses not listed (queued, initiated, ringing) are none.
STATUS_EVENTS: Final[dict[str, str]] = {
    "in-progress": "call-answered",
    "completed": "call-answered",
    "no-answer": "no-answer",
    "busy": "busy",
    "failed": "call-failed",
    "canceled": "call-failed",
}
#: ``AnsweredBy`` to event type; ``unknown`` is none.
AMD_EVENTS: Final[dict[str, str]] = {
    "human": "call-answered",
    "machine_start": "voicemail",
    "machine_end_beep": "voicemail",
    "machine_end_silence": "voicemail",
    "machine_end_other": "voicemail",
    "fax": "voicemail",
}
#: Callback fields copied into event details; phone numbers are left out on purpose.
DETAIL_FIELDS: Final = (
    "CallSid",
    "CallStatus",
    "CallDuration",
    "AnsweredBy",
    "MachineDetectionDuration",
    "SipResponseCode",
    "ErrorCode",
)
_MACHINES: Final = frozenset(kind for kind, event in AMD_EVENTS.items() if event == "voicemail")
_NUMERIC_FIELDS: Final = frozenset({"CallDuration", "MachineDetectionDuration", "SipResponseCode"})
#: How long the call update may take before it counts as failed.
HTTP_TIMEOUT_SECONDS: Final = 10.0

State = Annotated[ServerState, Depends(server_state)]


@dataclass(frozen=True, slots=True)
class _Call:
    """What a callback token says: the run, step and visit, the voicemail TwiML, and the
    run execution that placed the call (``None`` in tokens from before executions)."""

    run_id: str
    step_id: str
    visit: int
    voicemail_twiml: str | None
    execution: str | None = None


@router.post("/status", status_code=204, response_class=Response)
async def call_status(request: Request, state: State) -> Response:
    """Twilio's call status callback: answered, no answer, busy, failed become events, and
    a final status also the call's outcome."""
    form = await _signed_form(request, state.settings, STATUS_PATH)
    call = _call_token(request, state.settings, CALL_STATUS)
    sid = _call_sid(form)
    event_type = STATUS_EVENTS.get(form.get("CallStatus", ""))
    # Only synchronous AMD puts AnsweredBy here; for a machine the AMD callback reports.
    if event_type == "call-answered" and form.get("AnsweredBy") in _MACHINES:
        event_type = None
    if event_type is not None:
        await _signal(state, call, sid, event_type, _details(form, call))
    outcome = call_outcome(form.get("CallStatus", ""), form.get("AnsweredBy"))
    if outcome is not None:
        details = {**_details(form, call), "outcome": outcome}
        await _signal(state, call, sid, CALL_OUTCOME_EVENT, details)
    return Response(status_code=204)


@router.post("/amd", status_code=204, response_class=Response)
async def answering_machine(request: Request, state: State) -> Response:
    """Twilio's asynchronous AMD callback: a person or a machine; leaves the voicemail."""
    form = await _signed_form(request, state.settings, AMD_PATH)
    call = _call_token(request, state.settings, CALL_AMD)
    sid = _call_sid(form)
    answered_by = form.get("AnsweredBy", "")
    event_type = AMD_EVENTS.get(answered_by)
    if event_type is None:
        return Response(status_code=204)
    details = _details(form, call)
    if event_type == "voicemail" and answered_by != "fax" and call.voicemail_twiml is not None:
        details["voicemailMessage"] = await _leave_voicemail(state, call, sid)
    await _signal(state, call, sid, event_type, details)
    return Response(status_code=204)


# -- checks ---------------------------------------------------------------------------------


async def _signed_form(request: Request, settings: Settings, path: str) -> dict[str, str]:
    """The callback's form parameters, once ``X-Twilio-Signature`` proves Twilio sent them."""
    auth_token = settings.twilio_auth_token
    if not auth_token:
        raise ApiError(
            503,
            "twilio-not-configured",
            "TWILIO_AUTH_TOKEN is not set, so Twilio's callbacks cannot be verified: set it "
            "for the server",
        )
    # parse_qsl, not request.form(): Twilio signs empty parameters too, and keeps them.
    body = (await request.body()).decode("utf-8", errors="replace")
    pairs = parse_qsl(body, keep_blank_values=True)
    params = _Params()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"{settings.public_url.rstrip('/')}{path}" + (f"?{query}" if query else "")
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature or not RequestValidator(auth_token).validate(url, params, signature):
        logger.warning("refused a Twilio callback to %s: its signature does not match", path)
        raise ApiError(
            403,
            "invalid-signature",
            f"the {SIGNATURE_HEADER} header is missing or does not match the request as "
            f"Twilio would have signed it for {settings.public_url.rstrip('/')}{path}",
        )
    return {name: values[-1] for name, values in params.items()}


class _Params(dict[str, list[str]]):
    """Form parameters with every value of each name, as ``RequestValidator`` reads them
    (it asks for ``getall`` first)."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def _call_token(request: Request, settings: Settings, kind: str) -> _Call:
    if not settings.secret_key:
        raise ApiError(
            503,
            "secret-key-missing",
            "DEE_SECRET_KEY is not set, so callback tokens cannot be verified: set it for "
            "the server",
        )
    try:
        payload = verify_token(
            request.query_params.get("token", ""), secret=settings.secret_key, kind=kind
        )
        run_id, step_id, visit = payload.get("r"), payload.get("s"), payload.get("v")
        message = payload.get("m")
        if not isinstance(run_id, str) or not isinstance(step_id, str):
            raise TokenError("the token lacks the run or the step")
        if not isinstance(visit, int) or isinstance(visit, bool):
            raise TokenError("the token lacks the visit")
        if message is not None and not isinstance(message, str):
            raise TokenError("the token's voicemail is not text")
    except TokenError as exc:
        logger.warning("refused a Twilio callback: %s", exc)
        raise ApiError(403, "invalid-token", f"the callback's token is not valid: {exc}") from exc
    return _Call(run_id, step_id, visit, message, execution_of(payload))


def _call_sid(form: dict[str, str]) -> str:
    sid = form.get("CallSid", "")
    if not CALL_SID_PATTERN.match(sid):
        raise ApiError(400, "invalid-callback", f"CallSid {sid!r} is not a call SID (CA...)")
    return sid


def _details(form: dict[str, str], call: _Call) -> dict[str, JsonValue]:
    details: dict[str, JsonValue] = {"provider": "twilio", "visit": call.visit}
    for name in DETAIL_FIELDS:
        value = form.get(name)
        if value:
            details[name] = int(value) if name in _NUMERIC_FIELDS and value.isdigit() else value
    return details


# -- effects --------------------------------------------------------------------------------


async def _signal(
    state: ServerState, call: _Call, sid: str, event_type: str, details: dict[str, JsonValue]
) -> None:
    try:
        await send_event(
            state.client,
            call.run_id,
            type=event_type,
            step_id=call.step_id,
            event_id=f"twilio:{sid}:{event_type}",
            details=details,
            execution=call.execution,
        )
    except (RunNotFoundError, RunClosedError) as exc:
        logger.info("Twilio's %s for call %s was not recorded: %s", event_type, sid, exc)
        return
    except RPCError as exc:
        raise ApiError(
            503, "temporal-unavailable", f"the event could not reach the run: {exc.message}"
        ) from exc
    # Run ids hold contact ids (by default email addresses): the call SID names the call.
    logger.info("%s for step %r (call %s)", event_type, call.step_id, sid)


async def _leave_voicemail(state: ServerState, call: _Call, sid: str) -> str:
    """Play the voicemail on call ``sid`` once: ``sent``, ``already-sent`` or ``failed``."""
    twiml = call.voicemail_twiml
    assert twiml is not None
    message_id = f"voicemail-{sid}"
    ledger: SendLedger | None = None
    try:
        ledger = await state.store(SendLedger)
        claim = await asyncio.to_thread(
            ledger.claim,
            message_id,
            run_id=call.run_id,
            step_id=call.step_id,
            channel="voice",
            execution=call.execution,
        )
    except LedgerError as exc:
        # Leaving the message matters more than never leaving it twice.
        logger.warning("voicemail for call %s goes out unrecorded: %s", sid, exc)
        ledger, claim = None, "claimed"
    if claim == "already-sent":
        logger.info("voicemail for call %s was left before", sid)
        return "already-sent"
    try:
        await asyncio.to_thread(_update_call, state.settings, sid, twiml)
    except (TwilioException, OSError) as exc:
        # The claim stays "sending", so Twilio's next callback tries again.
        logger.warning("could not leave the voicemail on call %s: %s", sid, exc)
        return "failed"
    if ledger is not None:
        try:
            await asyncio.to_thread(ledger.mark_sent, message_id, provider_id=sid)
        except LedgerError as exc:
            logger.warning("voicemail for call %s left but not recorded: %s", sid, exc)
    logger.info("voicemail left on call %s for step %r", sid, call.step_id)
    return "sent"


def _update_call(settings: Settings, sid: str, twiml: str) -> None:
    """Replace live call ``sid``'s TwiML (blocking: run it in a thread)."""
    if not settings.twilio_account_sid:
        raise TwilioException("TWILIO_ACCOUNT_SID is not set for the server")
    client, http = twilio_client(settings, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        client.calls(sid).update(twiml=twiml)
    finally:
        http.session.close()
