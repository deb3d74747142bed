"""A call step finishes when the call does (engine 3), and its outcome takes a branch.

The real worker places the call through the real twilio client on the loopback Calls API;
Twilio's callbacks reach the real app under uvicorn, signed as Twilio signs them, and the
app signals the run; the runs are on the time-skipping Temporal server, so a run that hears
nothing skips ahead to its bound and asks the loopback API how the call went.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

import dee
from dee.cli._format import run_details
from dee.plans.versions import PlanVersion
from dee.runs.client import send_event
from dee.runs.model import (
    CURRENT_STEP_ATTRIBUTE,
    CallOutcome,
    Contact,
    RunInput,
    RunProgress,
    RunResult,
    RunState,
)
from tests.helpers.engine import CONTACT, Engine, engine
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.spec import EXAMPLES
from tests.helpers.twilio_api import TwilioApi, twilio_api
from tests.helpers.twilio_callbacks import (
    amd_params,
    callback,
    placed_call,
    server_settings,
    status_params,
)
from tests.helpers.windows import at_any_hour
from workflows import _interpreter as interpreter
from workflows._calls import outcome_bound
from workflows.execution_plan import ExecutionPlanWorkflow

#: The README's example (the issue's): after the follow-up call, a voicemail gets an email.
PLAN = EXAMPLES / "call-outcomes.yaml"
STEP = "follow-up-call"


def version(e: Engine) -> PlanVersion:
    """The example plan, under an id of the test's own."""
    plan = at_any_hour(dee.load_plan(PLAN))
    plan = plan.model_copy(update={"id": f"call-outcomes-{uuid.uuid4().hex[:8]}"})
    return e.version(plan, dee.load_content(EXAMPLES / "content", plan))


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


@pytest.fixture
async def dee_engine(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> AsyncIterator[Engine]:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as running:
        yield running


@pytest.fixture
async def server(
    time_skipping_env: WorkflowEnvironment, twilio: TwilioApi, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    settings = server_settings(twilio, tmp_path)
    async with running_server(settings, client=time_skipping_env.client) as running:
        yield running


async def _state(e: Engine, run_id: str) -> RunState:
    state: RunState = await e.client.get_workflow_handle(run_id).query(ExecutionPlanWorkflow.state)
    return state


@pytest.mark.parametrize(
    ("callbacks", "outcome", "ending"),
    [
        # The case: a machine answers (asynchronous AMD), the call completes.
        pytest.param(
            [("status", "in-progress"), ("amd", "machine_end_beep"), ("status", "completed")],
            "voicemail",
            "left-voicemail",
            id="voicemail",
        ),
        # Synchronous AMD: the completed status itself says a machine answered.
        pytest.param(
            [("status", "completed", "machine_start")],
            "voicemail",
            "left-voicemail",
            id="voicemail-sync-amd",
        ),
        # A person picks up and talks.
        pytest.param(
            [
                ("status", "ringing"),
                ("status", "in-progress"),
                ("amd", "human"),
                ("status", "completed"),
            ],
            "answered",
            "talked",
            id="answered",
        ),
        # Nobody picks up.
        pytest.param(
            [("status", "ringing"), ("status", "no-answer")],
            "no-answer",
            "not-reached",
            id="no-answer",
        ),
        pytest.param([("status", "busy")], "busy", "not-reached", id="busy"),
    ],
)
async def test_the_call_outcome_takes_its_branch(
    dee_engine: Engine,
    server: RunningServer,
    twilio: TwilioApi,
    callbacks: list[tuple[str, ...]],
    outcome: str,
    ending: str,
) -> None:
    e = dee_engine
    handle = await e.start(version(e))
    sid, status_url, amd_url = await placed_call(twilio, 0, set())
    for hook, value, *answered_by in callbacks:
        if hook == "amd":
            # The call is live when a machine is detected: the message can be left.
            twilio.set_status(sid, "in-progress")
            params, url = amd_params(twilio, sid, value), amd_url
        else:
            extra = {"AnsweredBy": answered_by[0]} if answered_by else {}
            params, url = status_params(twilio, sid, value, **extra), status_url
        # Twilio sends again at times: the outcome counts once.
        await callback(server, twilio, url, params)
        await callback(server, twilio, url, params)

    result: RunResult = await handle.result()
    state = await _state(e, handle.id)
    assert result.outcome == ending
    assert state.calls == (
        CallOutcome(step_id=STEP, visit=1, call_sid=sid, outcome=outcome, source="callback"),
    )
    call_step = state.history[0]
    assert (call_step.step_id, call_step.result) == (STEP, f"placed {sid} {outcome}")
    goto = {"voicemail": "vm-email", "answered": "end-talked"}.get(outcome, "end-sequence")
    assert state.history[1].result == f"-> {goto}"
    # The callback said it: nobody asked Twilio.
    assert twilio.fetches == []
    assert e.subjects == (["Sorry we missed you, Ana"] if outcome == "voicemail" else [])
    assert [event.type for event in state.events].count("call-outcome") == 1
    # The voicemail message was left on the machine the asynchronous AMD found.
    left = ("amd", "machine_end_beep") in callbacks
    assert [update.sid for update in twilio.updates] == ([sid] if left else [])


@pytest.mark.parametrize(
    ("status", "answered_by", "outcome", "ending"),
    [
        # The final callback was lost: Twilio has the call as ended by a machine.
        ("completed", "machine_end_beep", "voicemail", "left-voicemail"),
        ("completed", "human", "answered", "talked"),
        ("busy", None, "busy", "not-reached"),
        # Somehow still live past the bound: judged by where it is, and left alone.
        ("in-progress", None, "answered", "talked"),
        ("ringing", None, "no-answer", "not-reached"),
    ],
)
async def test_without_a_final_callback_the_run_asks_twilio(
    dee_engine: Engine,
    twilio: TwilioApi,
    status: str,
    answered_by: str | None,
    outcome: str,
    ending: str,
) -> None:
    e = dee_engine
    plan_version = version(e)
    handle = await e.start(plan_version)
    sid, _, _ = await placed_call(twilio, 0, set())
    twilio.set_status(sid, status, answered_by=answered_by)

    # Time skips to the bound: ring time + maxDuration (5 min) + margin.
    result: RunResult = await handle.result()
    state = await _state(e, handle.id)
    assert result.outcome == ending
    assert twilio.fetches == [sid]
    assert state.calls == (
        CallOutcome(step_id=STEP, visit=1, call_sid=sid, outcome=outcome, source="fetched"),
    )
    call_step = state.history[0]
    assert call_step.result == f"placed {sid} {outcome}"
    assert call_step.finished_at is not None
    waited = call_step.finished_at - call_step.started_at
    (step,) = (s for s in plan_version.plan.steps if s.id == STEP)
    assert isinstance(step, dee.SendVoiceStep)
    assert outcome_bound(step) == datetime.timedelta(minutes=16)
    assert outcome_bound(step) <= waited < outcome_bound(step) + datetime.timedelta(minutes=1)


async def test_a_call_twilio_does_not_know_fails_the_step(
    dee_engine: Engine, twilio: TwilioApi
) -> None:
    e = dee_engine
    handle = await e.start(version(e))
    sid, _, _ = await placed_call(twilio, 0, set())
    with twilio._state.lock:
        twilio._state.calls.clear()

    result: RunResult = await handle.result()
    assert result.outcome == "failed"
    assert result.failure is not None
    assert (result.failure.step_id, result.failure.kind) == (STEP, "CallRejected")
    assert "HTTP 404" in result.failure.reason
    assert twilio.fetches == [sid]


async def waiting_for_the_call(e: Engine) -> WorkflowHandle[Any, RunResult]:
    """A run of the example plan once it waits for its call to end (its bound's timer)."""
    handle = await e.start(version(e))
    await placed_call(e.twilio, 0, set())
    async with asyncio.timeout(30):
        while EventType.EVENT_TYPE_TIMER_STARTED not in [
            event.event_type async for event in handle.fetch_history_events()
        ]:
            await asyncio.sleep(0.05)
    return handle


async def test_an_unsubscribe_ends_the_call_wait_at_once(
    dee_engine: Engine, twilio: TwilioApi
) -> None:
    e = dee_engine
    handle = await waiting_for_the_call(e)
    # While the call lasts, the run shows the call step as where it is.
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(CURRENT_STEP_ATTRIBUTE) == STEP
    await send_event(e.client, handle.id, type="unsubscribe", event_id="stop")

    result: RunResult = await handle.result()
    state = await _state(e, handle.id)
    assert (result.outcome, result.step_id) == ("unsubscribed", STEP)
    # Ended while it waited, not at the bound: Twilio was never asked.
    assert twilio.fetches == []
    assert state.calls == ()
    call_step = state.history[0]
    assert call_step.finished_at is not None
    assert call_step.finished_at - call_step.started_at < outcome_bound(
        dee.SendVoiceStep(id=STEP, script_id="pitch", caller_id="+15551234567")
    )


async def test_engine_2_runs_finish_the_call_step_when_the_call_is_placed(
    dee_engine: Engine, twilio: TwilioApi
) -> None:
    e = dee_engine
    plan_version = version(e)
    contact = Contact.model_validate({**CONTACT, "id": f"c-{uuid.uuid4().hex[:8]}"})
    handle = await e.client.start_workflow(
        ExecutionPlanWorkflow.run,
        RunInput(
            plan=plan_version.plan,
            content=plan_version.content,
            digest=plan_version.digest,
            contact=contact,
            variables={"product": "DEE"},
            engine=2,
        ),
        id=f"{plan_version.plan.id}:{contact.id}",
        task_queue=e.task_queue,
    )
    result: RunResult = await handle.result()
    state = await handle.query(ExecutionPlanWorkflow.state)
    (call,) = twilio.calls
    assert result.outcome == "not-reached"
    assert state.history[0].result == f"placed {call['sid']}"
    assert state.calls == ()
    assert twilio.fetches == []


async def test_carried_outcomes_are_read_after_continue_as_new(dee_engine: Engine) -> None:
    # A run that continued as new after its call: its branch reads the carried outcome.
    e = dee_engine
    plan_version = version(e)
    contact = Contact.model_validate({**CONTACT, "id": f"c-{uuid.uuid4().hex[:8]}"})
    carried = CallOutcome(step_id=STEP, visit=1, call_sid="CA" + "0" * 32, outcome="voicemail")
    progress = RunProgress(
        next_step="after-call",
        visits={STEP: 1},
        started_at=datetime.datetime.now(datetime.UTC),
        continued=1,
        calls=(carried,),
    )
    handle = await e.client.start_workflow(
        ExecutionPlanWorkflow.run,
        RunInput(
            plan=plan_version.plan,
            content=plan_version.content,
            digest=plan_version.digest,
            contact=contact,
            variables={"product": "DEE"},
            progress=progress,
            engine=3,
        ),
        id=f"{plan_version.plan.id}:{contact.id}",
        task_queue=e.task_queue,
    )
    result: RunResult = await handle.result()
    state = await handle.query(ExecutionPlanWorkflow.state)
    assert result.outcome == "left-voicemail"
    assert state.calls == (carried,)


def test_runs_show_lists_the_calls() -> None:
    state = RunState(
        plan_id="p",
        plan_version=1,
        contact_id="c",
        status="running",
        current_step="after-call",
        history=(),
        events=(),
        calls=(
            CallOutcome(step_id=STEP, visit=1, call_sid="CA1", outcome="no-answer"),
            CallOutcome(
                step_id=STEP, visit=2, call_sid="CA2", outcome="voicemail", source="fetched"
            ),
        ),
    )
    lines = run_details("p:c", state)
    at_calls = lines.index("calls (2 calls):")
    assert [line.split() for line in lines[at_calls + 1 : at_calls + 4]] == [
        ["STEP", "CALL", "OUTCOME", "FROM"],
        [STEP, "CA1", "no-answer", "callback"],
        [STEP, "#2", "CA2", "voicemail", "fetched"],
    ]


async def test_a_late_voicemail_report_corrects_the_outcome(
    dee_engine: Engine, server: RunningServer, twilio: TwilioApi
) -> None:
    # The AMD callback reaches the server after the final status: the call step has
    # finished as answered, and a branch after a wait reads voicemail.
    e = dee_engine
    document = yaml.safe_load(PLAN.read_text())
    document["id"] = f"late-amd-{uuid.uuid4().hex[:8]}"
    document["steps"].insert(1, {"type": "wait", "id": "pause", "duration": {"hours": 1}})
    document["transitions"][0] = {"from": STEP, "to": "pause"}
    document["transitions"].append({"from": "pause", "to": "after-call"})
    plan = at_any_hour(dee.plan_from_document(document))
    handle = await e.start(e.version(plan, dee.load_content(EXAMPLES / "content", plan)))
    sid, status_url, amd_url = await placed_call(twilio, 0, set())
    await callback(server, twilio, status_url, status_params(twilio, sid, "completed"))
    async with asyncio.timeout(30):
        while (await _state(e, handle.id)).current_step != "pause":
            await asyncio.sleep(0.05)
    assert (await _state(e, handle.id)).calls[0].outcome == "answered"
    await callback(server, twilio, amd_url, amd_params(twilio, sid, "machine_end_other"))

    result: RunResult = await handle.result()
    state = await _state(e, handle.id)
    assert result.outcome == "left-voicemail"
    # The step's line says what it saw; the record (what the branch read) was corrected.
    assert state.history[0].result == f"placed {sid} answered"
    assert [(call.outcome, call.source) for call in state.calls] == [("voicemail", "callback")]


async def test_a_run_that_continues_as_new_after_its_call_keeps_the_outcome(
    dee_engine: Engine,
    server: RunningServer,
    twilio: TwilioApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The run continues as new after any signal (the worker is in this process, and the
    # interpreter is imported once per worker): right after its call step, before the
    # branch, which then reads the outcome the run carried.
    monkeypatch.setattr(interpreter, "CONTINUE_AFTER_SIGNALS", 1)
    e = dee_engine
    handle = await e.start(version(e))
    sid, status_url, _ = await placed_call(twilio, 0, set())
    params = status_params(twilio, sid, "completed", AnsweredBy="machine_end_beep")
    await callback(server, twilio, status_url, params)

    result: RunResult = await handle.result()
    state = await _state(e, handle.id)
    assert result.outcome == "left-voicemail"
    assert state.continued >= 1
    assert [(call.call_sid, call.outcome) for call in state.calls] == [(sid, "voicemail")]


async def test_a_run_cancelled_while_its_call_lasts_ends_cancelled_at_once(
    dee_engine: Engine, twilio: TwilioApi
) -> None:
    e = dee_engine
    handle = await waiting_for_the_call(e)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, CancelledError)
    state = await _state(e, handle.id)
    assert (state.outcome, state.current_step) == ("cancelled", STEP)
    # Cancelled in the wait, not at its bound: Twilio was never asked.
    assert twilio.fetches == []
