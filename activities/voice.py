"""Voice calls through Twilio: the ``place_call`` and ``call_outcome`` activities.

A send-voice step becomes one outbound call whose TwiML ``<Say>``s the rendered script.
Twilio reports the call's progress (initiated, ringing, answered, completed) to
``{DEE_PUBLIC_URL}/webhooks/twilio/status?token=...``, where the server turns it into run
events; the token is signed with ``DEE_SECRET_KEY`` and names the run, step and visit.

Voicemail
    With ``voicemail.detect`` the call uses Twilio's *asynchronous* answering machine
    detection: the script starts as soon as someone answers (a person hears no pause
    while Twilio listens), and Twilio posts what answered to
    ``{DEE_PUBLIC_URL}/webhooks/twilio/amd?token=...``. With a ``voicemail.messageId``
    the detection waits for the end of the greeting (``DetectMessageEnd``) and the AMD
    token also carries the voicemail as ready TwiML (``"m"``), rendered here so that a
    broken message fails the step before anyone is called. When a machine answered, the
    server replaces the live call's TwiML with it (``calls(sid).update(twiml=...)``) and
    the message is recorded after the beep; the server needs nothing but the token, and a
    forged callback cannot make DEE's number say anything DEE did not render. The price:
    the message must fit in a token (:data:`dee.runs.tracking.MAX_TOKEN_LENGTH`, about 1,200
    characters of text; longer fails as ``ScriptTooLong``), and as the token is signed,
    not encrypted, callback URLs must stay out of logs like every tracking URL. Without a
    message the detection answers as fast as it can (``Enable``), only to tell the server
    whether a person or a machine picked up.

Suppressed numbers
    A number on the suppression list (:mod:`dee.runs.suppressions`: the do-not-call list)
    is never dialled: as for a suppressed email address, the activity returns status
    ``suppressed`` (call SID ``-``) without claiming the call in the ledger or talking to
    Twilio, and the run shows ``suppressed -`` and goes on. A call an earlier attempt placed
    before the number was suppressed is still answered ``already-placed``.

Exactly once
    Each call is claimed in the send ledger (:mod:`dee.runs.ledger`) under an id derived from
    the workflow execution, run, step and visit *before* Twilio is asked to dial, and its
    SID is recorded right after. A retry of a call already recorded returns the recorded
    SID (``already-placed``) without dialling. A claim without a SID ("in doubt") means an
    earlier attempt died between the two (worker killed, connection lost mid-request, 5xx
    after Twilio took the call, database down): rather than call twice, the activity asks
    Twilio for calls to the same number from the same caller id created since that claim
    (less a minute of clock skew), and adopts the newest; only when there is none does it
    dial. The limits: a call to the same number from the same caller id made in that
    window by something else (another plan) would be taken for ours; a call Twilio
    accepted but does not list yet would be placed twice; and, as the ledger says, two
    attempts running *at once* are not stopped, so keep the activity's start-to-close
    timeout above two Twilio requests (2 x 30 s).

How the call went
    An engine 3 run learns its call's outcome from Twilio's final status callback
    (:mod:`dee.server.twilio_routes`). When none came within the step's bound, the run
    asks: ``call_outcome`` fetches the call (``calls(sid).fetch()``) and maps its status
    with :func:`dee.plans.call_outcomes.call_outcome`. A call that is somehow not over by
    then (Twilio ends calls at the step's ``maxDuration``, or at 4 hours, so it should be)
    is judged by where it is, and left alone: ``in-progress`` counts as ``answered``
    (``voicemail`` when a machine answered), ``queued``, ``initiated`` and ``ringing`` as
    ``no-answer`` (nobody picked up in all that time), anything else as ``failed``. The
    activity only reads, so its retries are harmless.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

from pydantic import JsonValue
from temporalio import activity
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.twiml.voice_response import VoiceResponse

from activities._attempt import check_window, counted, heartbeating, permanent
from dee.errors import ContentError
from dee.metrics import timed
from dee.plans.call_outcomes import MACHINE_ANSWERS, call_outcome
from dee.plans.content import PlanContent, render_script
from dee.runs.calls import CALL_SID_PATTERN, twilio_client
from dee.runs.channels import (
    CallOutcomeInput,
    CallOutcomeResult,
    PlaceCallInput,
    PlaceCallResult,
)
from dee.runs.ledger import SendLedger, call_key
from dee.runs.suppressions import Suppressions
from dee.runs.tracking import CALL_AMD, CALL_STATUS, EXECUTION, TokenError, sign_token
from dee.settings import Settings

__all__ = [
    "VoiceActivities",
]

#: The call SID of a call that was not placed (the number is suppressed).
NO_CALL: Final = "-"

#: The call progress Twilio reports to the status callback.
STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
#: Twilio refuses a ``Twiml`` parameter longer than this.
MAX_TWIML_CHARS: Final = 4000
#: How long one request to Twilio may take before it counts as a transient failure.
HTTP_TIMEOUT_SECONDS: Final = 30.0
#: Calls created this long before an in-doubt claim still count as ours: clocks differ.
CLOCK_SKEW: Final = datetime.timedelta(minutes=1)
#: The most calls looked at when adopting an in-doubt call (newest first).
ADOPT_SCAN_LIMIT: Final = 50
#: Statuses of a call that has not been picked up (yet).
NOT_PICKED_UP: Final = frozenset({"queued", "initiated", "ringing"})

_T = TypeVar("_T")


class VoiceActivities:
    """Activities that place calls through Twilio; register ``place_call`` and
    ``call_outcome`` on the worker."""

    def __init__(self, settings: Settings, ledger: SendLedger) -> None:
        self._settings = settings
        self._ledger = ledger
        # The suppression list lives in the ledger's database: read it on its connections.
        self._suppressions = Suppressions.sharing(ledger)

    @activity.defn(name="place_call")
    async def place_call(self, input: PlaceCallInput) -> PlaceCallResult:
        """Place the call for one visit of a send-voice step, at most once."""
        # Before anything else: a send outside its window renders, claims and sends nothing.
        await check_window(input.window, input.contact)
        async with heartbeating():
            return await counted("voice", self._place_call(input))

    @activity.defn(name="call_outcome")
    async def call_outcome(self, input: CallOutcomeInput) -> CallOutcomeResult:
        """How call ``input.call_sid`` went, as Twilio has it now (see the module's doc)."""
        self._require_credentials()
        if not CALL_SID_PATTERN.match(input.call_sid):
            raise permanent(
                f"step {input.step_id!r}: {input.call_sid[:40]!r} is not a Twilio call SID "
                "(CA and 32 hex digits), so the call cannot be looked up",
                "InvalidCallSid",
            )
        async with heartbeating():
            return await asyncio.to_thread(self._fetch_outcome, input)

    def _fetch_outcome(self, input: CallOutcomeInput) -> CallOutcomeResult:
        client, http = self._client()
        try:
            call = _twilio("fetch the call", lambda: client.calls(input.call_sid).fetch())
        finally:
            http.session.close()
        status = str(call.status or "")
        answered_by = str(call.answered_by) if call.answered_by else None
        outcome = call_outcome(status, answered_by)
        if outcome is None and status == "in-progress":
            outcome = "voicemail" if answered_by in MACHINE_ANSWERS else "answered"
        elif outcome is None:
            outcome = "no-answer" if status in NOT_PICKED_UP else "failed"
        activity.logger.info(
            "call %s of step %r is %s: outcome %s", input.call_sid, input.step_id, status, outcome
        )
        return CallOutcomeResult(status=status, answered_by=answered_by, outcome=outcome)

    def _require_credentials(self) -> None:
        if not self._settings.twilio_account_sid or not self._settings.twilio_auth_token:
            raise permanent(
                "Twilio credentials are not configured: set TWILIO_ACCOUNT_SID and "
                "TWILIO_AUTH_TOKEN for the worker",
                "MissingCredentials",
            )

    async def _place_call(self, input: PlaceCallInput) -> PlaceCallResult:
        settings = self._settings
        step = input.step
        self._require_credentials()
        if not settings.secret_key:
            raise permanent(
                "DEE_SECRET_KEY is not set: the call's status callbacks cannot be signed",
                "MissingSecretKey",
            )
        if input.contact.phone is None:
            raise permanent(
                f"contact {input.contact.id!r} has no phone number: give the contact a "
                "`phone` in E.164 form (+15551234567)",
                "MissingPhone",
            )
        # Off the event loop, as for email (templates are bounded by dee.plans.sandbox).
        with timed("render", "voice"):
            twiml, voicemail_twiml = await asyncio.to_thread(self._twiml, input)
        create: dict[str, Any] = {
            "to": input.contact.phone,
            "from_": step.caller_id,
            "twiml": twiml,
            "status_callback": self._callback_url(CALL_STATUS, input),
            "status_callback_method": "POST",
            "status_callback_event": list(STATUS_EVENTS),
        }
        if step.max_duration is not None:
            create["time_limit"] = step.max_duration.total_seconds
        if step.voicemail.detect:
            # Waiting for the beep only matters when there is a message to leave after it.
            create["machine_detection"] = (
                "DetectMessageEnd" if voicemail_twiml is not None else "Enable"
            )
            create["async_amd"] = "true"
            create["async_amd_status_callback"] = self._callback_url(
                CALL_AMD, input, voicemail_twiml=voicemail_twiml
            )
            create["async_amd_status_callback_method"] = "POST"
        # The ledger and twilio's client both block; one worker thread runs them in turn.
        return await asyncio.to_thread(self._place, input, create)

    def _twiml(self, input: PlaceCallInput) -> tuple[str, str | None]:
        """The call's TwiML, and the voicemail's when the step leaves a message."""
        step = input.step
        message_id = step.voicemail.message_id if step.voicemail.detect else None
        if message_id is not None and input.voicemail_message is None:
            raise permanent(
                f"step {step.id!r} leaves voicemail message {message_id!r} but the activity "
                "was not given its source",
                "TemplateError",
            )
        scripts = {step.script_id: input.script}
        if message_id is not None and input.voicemail_message is not None:
            scripts[message_id] = input.voicemail_message
        content = PlanContent(scripts=scripts)
        twiml = self._render(input, content, step.script_id, hang_up=False)
        if message_id is None:
            return twiml, None
        # Nobody is on the line to hang up after a message left on a machine.
        return twiml, self._render(input, content, message_id, hang_up=True)

    def _render(
        self, input: PlaceCallInput, content: PlanContent, script_id: str, *, hang_up: bool
    ) -> str:
        step = input.step
        try:
            text = render_script(
                script_id,
                content,
                contact=input.contact.attributes(),
                variables=input.variables,
                step_id=step.id,
            )
        except ContentError as exc:
            raise permanent(f"step {step.id!r}: {exc}", "TemplateError") from exc
        response = VoiceResponse()
        response.say(text)
        if hang_up:
            response.hangup()
        twiml = str(response.to_xml(xml_declaration=False))
        if len(twiml) > MAX_TWIML_CHARS:
            raise permanent(
                f"step {step.id!r}: scripts/{script_id}.txt renders to {len(twiml):,} "
                f"characters of TwiML; Twilio takes at most {MAX_TWIML_CHARS:,}: shorten it",
                "ScriptTooLong",
            )
        return twiml

    def _callback_url(
        self, kind: str, input: PlaceCallInput, *, voicemail_twiml: str | None = None
    ) -> str:
        """``{public_url}/webhooks/twilio/{status|amd}?token=...`` for this run, step, visit."""
        secret = self._settings.secret_key
        assert secret is not None
        payload: dict[str, JsonValue] = {
            "k": kind,
            "r": input.run_id,
            "s": input.step.id,
            "v": input.visit,
        }
        if input.execution is not None:
            payload[EXECUTION] = input.execution
        if voicemail_twiml is not None:
            payload["m"] = voicemail_twiml
        try:
            token = sign_token(payload, secret=secret)
        except TokenError as exc:
            # Only the voicemail makes a token long: the ids are bounded by the plan model.
            raise permanent(
                f"step {input.step.id!r}: the voicemail message is too long to carry in the "
                f"answering machine callback ({exc}): shorten "
                f"scripts/{input.step.voicemail.message_id}.txt",
                "ScriptTooLong",
            ) from exc
        hook = "amd" if kind == CALL_AMD else "status"
        return f"{self._settings.public_url}/webhooks/twilio/{hook}?token={token}"

    def _client(self) -> tuple[Any, TwilioHttpClient]:
        return twilio_client(self._settings, timeout=HTTP_TIMEOUT_SECONDS)

    def _place(self, input: PlaceCallInput, create: dict[str, Any]) -> PlaceCallResult:
        log = activity.logger
        message_id = call_key(
            activity.info().workflow_run_id, input.run_id, input.step.id, input.visit
        )
        assert input.contact.phone is not None
        if self._suppressions.is_suppressed(input.contact.phone):
            # Unless an earlier attempt placed it before the number was suppressed.
            earlier = self._ledger.get(message_id)
            if earlier is None or earlier.status != "sent":
                log.info("call %s not placed: the number is on the suppression list", message_id)
                return PlaceCallResult(call_sid=NO_CALL, status="suppressed")
        attempt = uuid.uuid4().hex
        claim = self._ledger.claim(
            message_id,
            run_id=input.run_id,
            step_id=input.step.id,
            channel="voice",
            attempt=attempt,
            execution=input.execution,
        )
        if claim == "already-sent":
            record = self._ledger.get(message_id)
            if record is None or record.provider_id is None:
                raise permanent(
                    f"the send ledger has call {message_id} as placed but without its SID",
                    "LedgerInconsistent",
                )
            log.info("call %s was placed before: %s", message_id, record.provider_id)
            return PlaceCallResult(call_sid=record.provider_id, status="already-placed")
        client, http = self._client()
        try:
            if claim == "in-doubt":
                sid = self._earlier_call(client, message_id, create)
                if sid is not None:
                    self._ledger.mark_sent(message_id, provider_id=sid, attempt=attempt)
                    log.info("call %s adopted from an earlier attempt: %s", message_id, sid)
                    return PlaceCallResult(call_sid=sid, status="already-placed")
            # Last look before dialling: a cancelled attempt, or one a retry took over while
            # it stalled, must not call.
            if activity.is_cancelled():
                raise asyncio.CancelledError("the activity was cancelled before it dialled")
            if not self._ledger.holds(message_id, attempt=attempt):
                raise permanent(
                    f"call {message_id}: another attempt took this call over", "Superseded"
                )
            with timed("send", "voice"):
                call = _twilio("place the call", lambda: client.calls.create(**create))
            sid = str(call.sid)
            self._ledger.mark_sent(message_id, provider_id=sid, attempt=attempt)
            # Not the run id: it holds the contact id, which can be an address.
            log.info(
                "placed call %s for step %r visit %d: %s",
                message_id,
                input.step.id,
                input.visit,
                sid,
            )
            return PlaceCallResult(call_sid=sid, status="placed")
        finally:
            http.session.close()

    def _earlier_call(self, client: Any, message_id: str, create: dict[str, Any]) -> str | None:
        """The SID of a call an earlier attempt placed but did not record, if Twilio has one.

        The list is not filtered by ``StartTime``: a call still queued has not started, and
        Twilio's date filters would hide exactly the call looked for. Calls come newest
        first; the ones created since the claim (less clock skew) are candidates.
        """
        record = self._ledger.get(message_id)
        assert record is not None, message_id
        since = record.created_at - CLOCK_SKEW
        calls = _twilio(
            "list calls",
            lambda: client.calls.list(
                to=create["to"], from_=create["from_"], limit=ADOPT_SCAN_LIMIT
            ),
        )
        recent = [
            str(call.sid)
            for call in calls
            if call.date_created is not None and call.date_created >= since
        ]
        # A call the ledger has for another send (another step, visit or run to the same
        # number) is that send's, never this one's.
        taken = self._ledger.recorded_provider_ids(recent)
        return next((sid for sid in recent if sid not in taken), None)


def _twilio(what: str, request: Callable[[], _T]) -> _T:
    """Run one request to Twilio, turning refusals into permanent failures.

    4xx answers other than 429 mean the request itself is wrong (bad number, unverified
    caller id, bad credentials) and will be refused again; 429 and 5xx are Twilio's own
    state, and connection errors the network's: those re-raise so the retry policy applies.
    """
    try:
        return request()
    except TwilioException as exc:
        status, code, message = _describe(exc)
        if status is not None and 400 <= status < 500 and status != 429:
            raise permanent(
                f"Twilio refused to {what}: HTTP {status}, error {code}: {message}",
                "CallRejected",
            ) from exc
        raise


def _describe(exc: TwilioException) -> tuple[int | None, int | None, str]:
    """HTTP status, Twilio error code and message of a failed request."""
    status = getattr(exc, "status", None)
    if status is not None:
        message = getattr(exc, "detail", None) or getattr(exc, "msg", None) or str(exc)
        return int(status), getattr(exc, "code", None), str(message)
    # A failed list page is a bare TwilioException carrying the HTTP response.
    response: Any = exc.args[1] if len(exc.args) > 1 else None
    status_code = getattr(response, "status_code", None)
    if status_code is None:
        return None, None, str(exc)
    try:
        body = json.loads(response.text)
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    return int(status_code), body.get("code"), str(body.get("message") or exc.args[0])
