"""Twilio's call callbacks through the real app under uvicorn, signed the way Twilio signs
them (``RequestValidator.compute_signature`` over the public URL), against runs on the
time-skipping Temporal server, with voicemail left through the real twilio client on the
loopback Calls API.

What the server signalled is read from the run's Temporal history (every signal is there,
duplicates included); what the run kept, from its state; and the end-to-end cases place
the call through the real worker and answer its own callback URLs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.client import send_event
from dee.runs.ledger import SendLedger
from dee.runs.model import EVENT_SIGNAL, Contact, RunEvent, RunInput, RunResult
from dee.runs.tracking import sign_token, verify_token
from tests.helpers.engine import CONTACT, Engine, engine
from tests.helpers.logs import captured_logs
from tests.helpers.plans import simple_plan
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import new_task_queue, running_worker
from tests.helpers.twilio_api import TwilioApi, new_sid, twilio_api
from tests.helpers.twilio_callbacks import (
    CALLER_ID,
    PHONE,
    PUBLIC_URL,
    SECRET,
    amd_params,
    callback,
    deliver,
    placed_call,
    server_settings,
    signature,
    status_params,
)
from tests.helpers.windows import ANY_HOUR
from workflows.execution_plan import ExecutionPlanWorkflow

STATUS = "/webhooks/twilio/status"
AMD = "/webhooks/twilio/amd"
VOICEMAIL_TWIML = "<Response><Say>Sorry we missed you.</Say><Hangup/></Response>"


def call_plan(plan_id: str) -> tuple[ExecutionPlan, PlanContent]:
    """Call (leaving voicemail), wait an hour, then branch on how the call went."""
    plan = ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Call",
            # Calls at any hour: the test is not about calling hours.
            "schedule": ANY_HOUR,
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendVoice",
                    "id": "call",
                    "scriptId": "pitch",
                    "callerId": CALLER_ID,
                    "voicemail": {"detect": True, "messageId": "vm"},
                },
                {"type": "wait", "id": "listen", "duration": {"hours": 1}},
                {
                    "type": "branch",
                    "id": "route",
                    "conditions": [
                        {"when": 'events.has("voicemail")', "goto": "left-message"},
                        {"when": 'events.has("call-answered")', "goto": "talked"},
                        {"when": "default", "goto": "not-reached"},
                    ],
                },
                {"type": "end", "id": "left-message", "outcome": "left-message"},
                {"type": "end", "id": "talked", "outcome": "talked"},
                {"type": "end", "id": "not-reached", "outcome": "not-reached"},
            ],
            "transitions": [
                {"from": "call", "to": "listen"},
                {"from": "listen", "to": "route"},
                {"from": "route", "to": "left-message", "condition": "voicemail"},
                {"from": "route", "to": "talked", "condition": "answered"},
                {"from": "route", "to": "not-reached", "condition": "default"},
            ],
        }
    )
    content = PlanContent(
        scripts={
            "pitch": "Hello {{ contact.firstName }}, about {{ product }}.",
            "vm": "Sorry we missed you, {{ contact.firstName }}.",
        }
    )
    return plan, content


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


@pytest.fixture(scope="module")
async def server(
    time_skipping_env: WorkflowEnvironment,
    twilio: TwilioApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningServer]:
    settings = server_settings(twilio, tmp_path_factory.mktemp("server"))
    async with running_server(settings, client=time_skipping_env.client) as running:
        yield running


@pytest.fixture(scope="module")
async def listening_queue(
    time_skipping_env: WorkflowEnvironment,
    twilio: TwilioApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """A task queue the real worker polls, for the module's listening runs."""
    queue = new_task_queue()
    settings = server_settings(twilio, tmp_path_factory.mktemp("worker"), task_queue=queue)
    with SendLedger(settings.database_url) as ledger:
        async with running_worker(
            time_skipping_env.client, task_queue=queue, settings=settings, ledger=ledger
        ):
            yield queue


@pytest.fixture(scope="module")
def listening(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlanVersion]:
    """A plan that only waits an hour: its runs just collect the events they are sent."""
    database = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'dee.db'}"
    with PlanRegistry(database) as registry:
        yield registry.create(simple_plan("listen"), PlanContent())


@pytest.fixture
async def run(
    time_skipping_env: WorkflowEnvironment, listening: PlanVersion, listening_queue: str
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A run waiting in its hour; callbacks name its step ``call``, visit 1."""
    contact = Contact.model_validate({**CONTACT, "id": f"c-{uuid.uuid4().hex[:8]}"})
    handle = await time_skipping_env.client.start_workflow(
        ExecutionPlanWorkflow.run,
        RunInput(
            plan=listening.plan,
            content=listening.content,
            digest=listening.digest,
            contact=contact,
        ),
        id=f"listen:{contact.id}",
        task_queue=listening_queue,
    )
    try:
        yield handle
    finally:
        # The run ends itself (an unsubscribe ends a wait) rather than being terminated:
        # terminating a run mid workflow task leaves the time-skipping server's clock
        # locked, and later tests waiting on a timer would hang.
        await send_event(
            time_skipping_env.client, handle.id, type="unsubscribe", event_id="teardown"
        )
        await handle.result()


@pytest.fixture
async def dee(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> AsyncIterator[Engine]:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as running:
        yield running


# -- helpers --------------------------------------------------------------------------------


def callback_url(
    path: str, run_id: str, *, kind: str | None = None, message: str | None = None
) -> str:
    """The public callback URL the activity would have given Twilio for ``run_id``."""
    payload: dict[str, JsonValue] = {
        "k": kind or ("amd" if path == AMD else "call"),
        "r": run_id,
        "s": "call",
        "v": 1,
    }
    if message is not None:
        payload["m"] = message
    return f"{PUBLIC_URL}{path}?token={sign_token(payload, secret=SECRET)}"


async def signalled(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> list[RunEvent]:
    """Every event the server signalled to the run, duplicates included, from its history.

    Temporal writes a signal that arrives during a workflow task after that task, so the
    test signals a fence of its own and reads up to it: anything the server sent is before.
    """
    fence = await send_event(
        env.client, handle.id, type="delivered", event_id=f"fence-{uuid.uuid4()}"
    )
    for _ in range(200):
        events: list[RunEvent] = []
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_execution_signaled_event_attributes"):
                attributes = event.workflow_execution_signaled_event_attributes
                assert attributes.signal_name == EVENT_SIGNAL
                (run_event,) = await env.client.data_converter.decode(
                    attributes.input.payloads, [RunEvent]
                )
                if run_event.event_id == fence.event_id:
                    return events
                events.append(run_event)
        await asyncio.sleep(0.025)
    raise AssertionError("the fence signal never reached the run's history")


# -- the mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_status", "answered_by", "expected", "outcome"),
    [
        # Progress before anyone picks up is not an event.
        ("queued", None, None, None),
        ("initiated", None, None, None),
        ("ringing", None, None, None),
        # Picked up: not over yet, so no outcome.
        ("in-progress", None, "call-answered", None),
        # Ended after being answered: the same event as the answer (same id), and the
        # call's outcome.
        ("completed", None, "call-answered", "answered"),
        ("no-answer", None, "no-answer", "no-answer"),
        ("busy", None, "busy", "busy"),
        ("failed", None, "call-failed", "failed"),
        # Cancelled through the API before it connected.
        ("canceled", None, "call-failed", "canceled"),
        # Synchronous AMD saying "machine": the AMD callback reports voicemail, not this.
        ("in-progress", "machine_start", None, None),
        # ... but a completed call a machine answered ended in voicemail.
        ("completed", "machine_end_beep", None, "voicemail"),
        ("completed", "fax", None, "voicemail"),
        # Synchronous AMD saying "human" is still an answer.
        ("in-progress", "human", "call-answered", None),
        ("completed", "human", "call-answered", "answered"),
        # A status Twilio may add one day.
        ("paused", None, None, None),
    ],
)
async def test_status_callbacks_become_events(
    time_skipping_env: WorkflowEnvironment,
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
    call_status: str,
    answered_by: str | None,
    expected: str | None,
    outcome: str | None,
) -> None:
    sid = new_sid("CA")
    extra = {"CallDuration": "42"} if call_status == "completed" else {}
    if answered_by is not None:
        extra["AnsweredBy"] = answered_by
    params = status_params(twilio, sid, call_status, **extra)
    await callback(server, twilio, callback_url(STATUS, run.id), params)

    events = await signalled(time_skipping_env, run)
    types = [expected] if expected else []
    types += ["call-outcome"] if outcome else []
    assert [event.type for event in events] == types
    details: dict[str, JsonValue] = {
        "provider": "twilio",
        "visit": 1,
        "CallSid": sid,
        "CallStatus": call_status,
    }
    if call_status == "completed":
        details["CallDuration"] = 42
    if answered_by is not None:
        details["AnsweredBy"] = answered_by
    for event in events:
        assert (event.event_id, event.step_id) == (f"twilio:{sid}:{event.type}", "call")
        # No phone numbers: not To, From, Called nor Caller.
        if event.type == "call-outcome":
            assert event.details == {**details, "outcome": outcome}
        else:
            assert event.details == details


@pytest.mark.parametrize(
    ("answered_by", "expected"),
    [
        ("human", "call-answered"),
        # DetectMessageEnd: the greeting ended in a beep, silence, or something else.
        ("machine_end_beep", "voicemail"),
        ("machine_end_silence", "voicemail"),
        ("machine_end_other", "voicemail"),
        # Enable: a machine, known as soon as it answers.
        ("machine_start", "voicemail"),
        ("fax", "voicemail"),
        # Twilio could not tell: the status callback has already reported the answer.
        ("unknown", None),
    ],
)
async def test_amd_callbacks_become_events(
    time_skipping_env: WorkflowEnvironment,
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
    answered_by: str,
    expected: str | None,
) -> None:
    sid = new_sid("CA")
    await callback(server, twilio, callback_url(AMD, run.id), amd_params(twilio, sid, answered_by))

    events = await signalled(time_skipping_env, run)
    if expected is None:
        assert events == []
        return
    (event,) = events
    assert (event.event_id, event.type, event.step_id) == (
        f"twilio:{sid}:{expected}",
        expected,
        "call",
    )
    assert event.details == {
        "provider": "twilio",
        "visit": 1,
        "CallSid": sid,
        "AnsweredBy": answered_by,
        "MachineDetectionDuration": 2140,
    }


# -- voicemail ------------------------------------------------------------------------------


async def test_a_machine_gets_the_voicemail_once(
    time_skipping_env: WorkflowEnvironment,
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
) -> None:
    sid = twilio.add_call(to=PHONE, from_=CALLER_ID, status="in-progress")
    url = callback_url(AMD, run.id, message=VOICEMAIL_TWIML)
    before = len(twilio.updates)
    params = amd_params(twilio, sid, "machine_end_beep")
    await callback(server, twilio, url, params)
    # Twilio sending the callback again must not restart the message.
    await callback(server, twilio, url, params)

    (update,) = twilio.updates[before:]
    assert update.sid == sid
    assert update.form == {"Twiml": [VOICEMAIL_TWIML]}
    first, again = await signalled(time_skipping_env, run)
    assert first.event_id == again.event_id == f"twilio:{sid}:voicemail"
    assert first.details["voicemailMessage"] == "sent"
    assert again.details["voicemailMessage"] == "already-sent"


@pytest.mark.parametrize(
    ("answered_by", "message"),
    [
        # A person: the script plays on.
        ("human", VOICEMAIL_TWIML),
        # A fax records no message.
        ("fax", VOICEMAIL_TWIML),
        # The step has no voicemail message.
        ("machine_end_beep", None),
    ],
)
async def test_no_voicemail_without_a_machine_and_a_message(
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
    answered_by: str,
    message: str | None,
) -> None:
    sid = twilio.add_call(to=PHONE, from_=CALLER_ID, status="in-progress")
    before = len(twilio.updates)
    url = callback_url(AMD, run.id, message=message)
    await callback(server, twilio, url, amd_params(twilio, sid, answered_by))
    assert twilio.updates[before:] == []


async def test_a_voicemail_twilio_refuses_is_reported_and_tried_again(
    time_skipping_env: WorkflowEnvironment,
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
) -> None:
    # The callee hung up before the update: Twilio answers 21220.
    sid = twilio.add_call(to=PHONE, from_=CALLER_ID, status="completed")
    url = callback_url(AMD, run.id, message=VOICEMAIL_TWIML)
    params = amd_params(twilio, sid, "machine_end_silence")
    before = len(twilio.updates)
    await callback(server, twilio, url, params)
    await callback(server, twilio, url, params)

    assert [update.sid for update in twilio.updates[before:]] == [sid, sid]
    events = await signalled(time_skipping_env, run)
    assert [event.details["voicemailMessage"] for event in events] == ["failed", "failed"]


# -- refusals -------------------------------------------------------------------------------


def _forged(
    case: str, twilio: TwilioApi, run_id: str, sid: str
) -> tuple[str, dict[str, str], str | None]:
    """The URL, form and signature of one forged callback."""
    url = callback_url(STATUS, run_id)
    params = status_params(twilio, sid, "in-progress")
    token = twilio.auth_token
    match case:
        case "wrong-auth-token":
            return url, params, signature(url, params, "not-the-auth-token")
        case "altered-status":
            return url, {**params, "CallStatus": "busy"}, signature(url, params, token)
        case "added-param":
            return url, {**params, "AnsweredBy": "human"}, signature(url, params, token)
        case "missing-signature":
            return url, params, None
        case "empty-signature":
            return url, params, ""
        case "local-url":
            # Signed for the URL the server sees, not the public one Twilio uses.
            local = url.replace(PUBLIC_URL, "http://127.0.0.1:8000")
            return url, params, signature(local, params, token)
        case "other-token-in-url":
            other = callback_url(STATUS, "listen:someone-else")
            return url, params, signature(other, params, token)
        case "forged-dee-token":
            # Twilio really sent it, but DEE did not make the token (another secret).
            payload: dict[str, JsonValue] = {"k": "call", "r": run_id, "s": "call", "v": 1}
            forged = f"{PUBLIC_URL}{STATUS}?token={sign_token(payload, secret='guessed')}"
            return forged, params, signature(forged, params, token)
        case "amd-token-on-status":
            other = callback_url(STATUS, run_id, kind="amd")
            return other, params, signature(other, params, token)
        case "no-dee-token":
            bare = f"{PUBLIC_URL}{STATUS}"
            return bare, params, signature(bare, params, token)
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        # Signed with some other key.
        ("wrong-auth-token", "invalid-signature"),
        # A parameter changed after signing.
        ("altered-status", "invalid-signature"),
        # A parameter added after signing.
        ("added-param", "invalid-signature"),
        ("missing-signature", "invalid-signature"),
        ("empty-signature", "invalid-signature"),
        # Signed over the wrong URL.
        ("local-url", "invalid-signature"),
        # A genuine signature for another callback URL, replayed on this one.
        ("other-token-in-url", "invalid-signature"),
        # Correctly signed by Twilio, but the DEE token is not DEE's.
        ("forged-dee-token", "invalid-token"),
        # A DEE token of the wrong kind.
        ("amd-token-on-status", "invalid-token"),
        ("no-dee-token", "invalid-token"),
    ],
)
async def test_forged_callbacks_are_refused(
    time_skipping_env: WorkflowEnvironment,
    server: RunningServer,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
    case: str,
    code: str,
) -> None:
    url, params, sent_signature = _forged(case, twilio, run.id, new_sid("CA"))
    response = await deliver(server, url, params, signature=sent_signature)
    assert response.status_code == 403
    assert response.json()["code"] == code
    assert await signalled(time_skipping_env, run) == []


@pytest.mark.parametrize(
    ("missing", "code", "variable"),
    [
        # Signatures cannot be checked.
        ("twilio_auth_token", "twilio-not-configured", "TWILIO_AUTH_TOKEN"),
        # Tokens cannot be checked.
        ("secret_key", "secret-key-missing", "DEE_SECRET_KEY"),
    ],
)
async def test_a_server_without_its_keys_answers_503(
    time_skipping_env: WorkflowEnvironment,
    twilio: TwilioApi,
    run: WorkflowHandle[Any, Any],
    tmp_path: Path,
    missing: str,
    code: str,
    variable: str,
) -> None:
    settings = server_settings(twilio, tmp_path, **{missing: None})
    url = callback_url(STATUS, run.id)
    params = status_params(twilio, new_sid("CA"), "in-progress")
    async with running_server(settings, client=time_skipping_env.client) as bare:
        response = await deliver(
            bare, url, params, signature=signature(url, params, twilio.auth_token)
        )
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == code
    assert variable in body["message"]
    assert await signalled(time_skipping_env, run) == []


async def test_callbacks_for_a_run_that_is_gone_are_accepted(
    server: RunningServer, twilio: TwilioApi
) -> None:
    url = callback_url(STATUS, "listen:nobody")
    await callback(server, twilio, url, status_params(twilio, new_sid("CA"), "busy"))


# -- a call through a run -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("callbacks", "outcome", "events"),
    [
        # A person picks up and talks for 42 s.
        pytest.param(
            [
                ("status", "ringing"),
                ("status", "in-progress"),
                ("amd", "human"),
                ("status", "completed"),
            ],
            "talked",
            ["call-answered", "call-outcome"],
            id="person",
        ),
        # A machine picks up; the message is left after the beep.
        pytest.param(
            [("status", "in-progress"), ("amd", "machine_end_beep"), ("status", "completed")],
            "left-message",
            ["call-answered", "call-outcome", "voicemail"],
            id="machine",
        ),
        # Nobody picks up.
        pytest.param(
            [("status", "ringing"), ("status", "no-answer")],
            "not-reached",
            ["call-outcome", "no-answer"],
            id="no-answer",
        ),
        # The line is busy.
        pytest.param([("status", "busy")], "not-reached", ["busy", "call-outcome"], id="busy"),
    ],
)
async def test_a_call_through_a_run(
    dee: Engine,
    server: RunningServer,
    twilio: TwilioApi,
    callbacks: list[tuple[str, str]],
    outcome: str,
    events: list[str],
) -> None:
    with captured_logs() as logs:
        before_creates, before_updates = len(twilio.creates), len(twilio.updates)
        known = {call["sid"] for call in twilio.calls}
        plan, content = call_plan(f"call-{uuid.uuid4().hex[:8]}")
        handle = await dee.start(dee.version(plan, content))
        sid, status_url, amd_url = await placed_call(twilio, before_creates, known)

        for hook, value in callbacks:
            if hook == "amd":
                twilio.set_status(sid, "in-progress")
                params, url = amd_params(twilio, sid, value), amd_url
            else:
                extra = {"CallDuration": "42"} if value == "completed" else {}
                params, url = status_params(twilio, sid, value, **extra), status_url
            # Every callback twice, as Twilio retries: each counts once.
            await callback(server, twilio, url, params)
            await callback(server, twilio, url, params)

        result: RunResult = await handle.result()
    # Positive control: the capture saw the call's callbacks; and no line of it holds the
    # contact's number or address, the secret, or a callback token.
    assert len(logs.containing("POST /webhooks/twilio/status")) >= 2
    tokens = [url.partition("?token=")[2] for url in (status_url, amd_url)]
    leaked = logs.containing(CONTACT["phone"], CONTACT["email"], SECRET, *tokens)
    assert leaked == []
    assert result.outcome == outcome
    state = await handle.query(ExecutionPlanWorkflow.state)
    assert sorted(event.type for event in state.events) == events
    assert all(event.event_id == f"twilio:{sid}:{event.type}" for event in state.events)
    # The call step waited for the call to end, and recorded how it did.
    (call,) = state.calls
    assert (call.step_id, call.call_sid, call.source) == ("call", sid, "callback")
    expected_outcome = {"talked": "answered", "left-message": "voicemail"}
    assert call.outcome == expected_outcome.get(outcome, callbacks[-1][1])
    assert state.history[0].result == f"placed {sid} {call.outcome}"
    updates = twilio.updates[before_updates:]
    if "voicemail" not in events:
        assert updates == []
        return
    # The message the activity rendered into the AMD token, played once.
    token = amd_url.partition("?token=")[2]
    message = verify_token(token, secret=SECRET, kind="amd")["m"]
    assert message == "<Response><Say>Sorry we missed you, Ana.</Say><Hangup /></Response>"
    (update,) = updates
    assert (update.sid, update.form) == (sid, {"Twiml": [message]})
