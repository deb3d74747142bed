"""``exitOn`` and a wait's ``until`` on the time-skipping test server, with the real worker,
activities and SMTP server: events that end a run wherever it is, and waits that end early."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.model import WaitStep
from dee.plans.versions import PlanVersion
from dee.runs.client import send_event
from dee.runs.model import RunResult, RunState
from tests.helpers.engine import Engine, engine, wait_for_messages
from tests.helpers.smtp import SmtpServer
from tests.helpers.spec import SPEC_CONTENT, SPEC_YAML
from tests.helpers.twilio_api import TwilioApi, twilio_api
from workflows.execution_plan import ExecutionPlanWorkflow


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


def spec_variant(e: Engine, plan_id: str, **update: object) -> PlanVersion:
    """The spec's plan under another id, with ``update`` applied to the plan (validated)."""
    plan = dee.load_plan(SPEC_YAML)
    document = plan.model_copy(update={"id": plan_id, **update}).to_document()
    changed = dee.plan_from_document(document)
    return e.registry.create(changed, dee.load_content(SPEC_CONTENT, changed))


def with_until(until: str) -> dict[str, object]:
    """The spec's steps with ``until`` on its wait."""
    plan = dee.load_plan(SPEC_YAML)
    steps = tuple(
        step.model_copy(update={"until": until}) if isinstance(step, WaitStep) else step
        for step in plan.steps
    )
    return {"steps": steps}


async def timers_fired(handle: WorkflowHandle[ExecutionPlanWorkflow, RunResult]) -> int:
    history = await handle.fetch_history()
    return sum(
        1 for event in history.events if event.event_type == EventType.EVENT_TYPE_TIMER_FIRED
    )


async def test_a_reply_mid_wait_ends_a_run_that_exits_on_replies(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        exits = spec_variant(e, "exits-on-reply", exit_on=("reply",))
        # Positive control: the same plan without a reply waits out its 3.5 days and goes on.
        control = await e.start(exits)
        control_result = await control.result()
        handle = await e.start(exits)
        await wait_for_messages(e, 3)  # the control's two emails and this run's first
        await send_event(e.client, handle.id, type="reply", step_id="intro-email")
        result = await handle.result()
        state: RunState = await handle.query(ExecutionPlanWorkflow.state)
        fired = await timers_fired(handle)
    assert control_result.step_id == "end-sequence"
    assert result.outcome == "replied" and result.step_id == "wait-for-reply"
    assert [visit.step_id for visit in state.history] == ["intro-email", "wait-for-reply"]
    assert state.history[-1].result == "outcome replied"
    assert fired == 0
    # The control's intro and cold follow-up, and this run's intro: nothing after the reply.
    assert e.subjects.count("Introducing DEE") == 2 and len(e.subjects) == 3


@pytest.mark.parametrize(
    ("event_type", "outcome"),
    [
        ("bounce", "bounced"),  # in exitOn by default
        ("spamreport", "complained"),  # a complaint, in exitOn by default
        ("unsubscribe", "unsubscribed"),
    ],
)
async def test_default_exits_end_a_run_mid_wait(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
    event_type: str,
    outcome: str,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await wait_for_messages(e, 1)
        await send_event(e.client, handle.id, type=event_type, step_id="intro-email")
        result = await handle.result()
    assert (result.outcome, result.step_id) == (outcome, "wait-for-reply")
    assert e.subjects == ["Introducing DEE"]


async def test_a_reply_does_not_end_a_run_by_default(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await wait_for_messages(e, 1)
        await send_event(e.client, handle.id, type="reply", step_id="intro-email")
        result = await handle.result()
        fired = await timers_fired(handle)
    # The wait ran its course and the branch took the reply's way.
    assert (result.outcome, result.step_id) == ("replied", "end-sequence")
    assert fired == 1


async def test_a_bounce_of_another_execution_ends_nothing(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await wait_for_messages(e, 1)
        # A bounce of the email an earlier run with the same run id sent.
        await send_event(
            e.client,
            handle.id,
            type="bounce",
            step_id="intro-email",
            event_id="old-bounce",
            execution="an-earlier-execution",
        )
        result = await handle.result()
        state: RunState = await handle.query(ExecutionPlanWorkflow.state)
    assert result.step_id == "end-sequence"
    assert state.foreign == 1


async def test_a_wait_ends_when_its_condition_holds(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        until = spec_variant(e, "until-open", **with_until('events.hasOpen("intro-email")'))
        # Positive control: without an open the wait runs out and says so.
        control = await e.start(until)
        await control.result()
        control_state: RunState = await control.query(ExecutionPlanWorkflow.state)
        handle = await e.start(until)
        await wait_for_messages(e, 3)
        await send_event(e.client, handle.id, type="open", step_id="intro-email")
        result = await handle.result()
        state: RunState = await handle.query(ExecutionPlanWorkflow.state)
        fired = await timers_fired(handle)
    waits = [visit for visit in control_state.history if visit.step_id == "wait-for-reply"]
    assert [visit.result for visit in waits] == ["waited 3d 12h"]
    assert result.step_id == "end-sequence"
    results = {visit.step_id: visit.result for visit in state.history}
    assert results["wait-for-reply"] == "until held"
    assert results["check-response"] == "-> warm-follow-up"
    assert fired == 0
