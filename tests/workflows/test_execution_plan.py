"""ExecutionPlanWorkflow on the time-skipping test server, with the real activities against a
real SMTP server (aiosmtpd) and the real twilio client against a loopback Calls API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.runs.client import send_event
from dee.runs.model import (
    CURRENT_STEP_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    RunState,
)
from tests.helpers.engine import CONTACT, engine, wait_for_messages
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import TwilioApi, twilio_api
from workflows.execution_plan import ExecutionPlanWorkflow


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


async def test_spec_plan_reply_path(
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
        started = time.monotonic()
        result = await handle.result()
        elapsed = time.monotonic() - started
    assert result.outcome == "replied" and result.step_id == "end-sequence"
    assert result.failure is None
    assert e.subjects == ["Introducing DEE"]
    assert twilio.creates == []
    # Three and a half days of waiting, skipped: a sanity bound, not a benchmark.
    assert elapsed < 30, elapsed


async def test_spec_plan_open_path(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await send_event(e.client, handle.id, type="open", step_id="intro-email")
        result = await handle.result()
        state: RunState = await handle.query(ExecutionPlanWorkflow.state)
    assert result.outcome == "replied"
    assert e.subjects == ["Introducing DEE", "Following up on DEE"]
    assert [(v.step_id, (v.result or "").split(" ")[0]) for v in state.history] == [
        ("intro-email", "sent"),
        ("wait-for-reply", "waited"),
        ("check-response", "->"),
        ("warm-follow-up", "sent"),
        ("end-sequence", "outcome"),
    ]
    assert state.status == "completed" and state.outcome == "replied"
    assert [event.type for event in state.events] == ["open"]


async def test_spec_plan_neither_path_calls(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        result = await handle.result()
        description = await handle.describe()
    assert result.outcome == "replied" and result.steps == 6
    assert e.subjects == ["Introducing DEE", "Did you see my note about DEE?"]
    [call] = twilio.creates
    assert call["To"] == CONTACT["phone"] and call["From"] == "+15551234567"
    assert "this is a quick follow-up about DEE" in call["Twiml"]
    assert call["TimeLimit"] == "300"
    attributes = description.typed_search_attributes
    assert attributes.get(OUTCOME_ATTRIBUTE) == "replied"
    assert attributes.get(CURRENT_STEP_ATTRIBUTE) == "end-sequence"


async def test_the_ui_reads_like_the_plan(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await handle.result()
        history = await handle.fetch_history()
    converter = time_skipping_env.client.data_converter.payload_converter
    summaries = [
        converter.from_payload(event.user_metadata.summary, str)
        for event in history.events
        if event.HasField("user_metadata") and event.user_metadata.HasField("summary")
    ]
    # The run's own summary first (start_run's), then one a command.
    assert summaries[0].startswith("plan outbound-intro v1 · contact ")
    assert summaries[1:] == [
        "email intro-email",
        "wait wait-for-reply 3d 12h",
        "email cold-follow-up",
        "call follow-up-call",
        # No callback reaches this run: the call step waits for its bound, then asks Twilio.
        "call follow-up-call outcome",
        "call follow-up-call outcome from Twilio",
    ]


async def test_events_before_their_step_are_kept_and_duplicates_dropped(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        for _ in range(3):
            await send_event(
                e.client, handle.id, type="open", step_id="intro-email", event_id="same"
            )
        await send_event(e.client, handle.id, type="click", step_id="intro-email")
        result = await handle.result()
        state = await handle.query(ExecutionPlanWorkflow.state)
    assert [event.type for event in state.events] == ["open", "click"]
    assert result.events == 2
    assert e.subjects == ["Introducing DEE", "Following up on DEE"]


async def test_a_rejected_recipient_fails_the_run_without_hanging(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    smtp.handler.refuse("ana@example.com", "550 5.1.1 no such user")
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        result = await handle.result()
        history = await handle.fetch_history()
    assert result.outcome == "failed" and result.step_id == "intro-email"
    assert result.failure is not None and result.failure.kind == "InvalidRecipient"
    assert e.subjects == []
    # Non-retryable: one attempt, no retry storm.
    assert smtp.handler.rcpt_attempts == ["ana@example.com"]
    assert any(
        event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED for event in history.events
    )


async def test_missing_twilio_credentials_fail_the_call_step(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(
        time_skipping_env, task_queue, tmp_path, smtp, twilio, twilio_auth_token=None
    ) as e:
        result = await (await e.start(e.spec_version())).result()
    assert result.outcome == "failed" and result.step_id == "follow-up-call"
    assert result.failure is not None and result.failure.kind == "MissingCredentials"
    assert "TWILIO_AUTH_TOKEN" in result.failure.reason
    assert twilio.creates == []


async def test_unsubscribe_ends_the_run_during_a_wait(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        await wait_for_messages(e, 1)
        await send_event(e.client, handle.id, type="unsubscribe", step_id="intro-email")
        result = await handle.result()
    assert result.outcome == "unsubscribed" and result.step_id == "wait-for-reply"
    assert e.subjects == ["Introducing DEE"]


def loop_plan(*, rounds: int) -> tuple[dee.ExecutionPlan, PlanContent]:
    """Email, then wait and check until ``rounds`` checks have happened or a reply came."""
    plan = dee.execution_plan(
        id="nurture",
        name="Nurture loop",
        created_by="tests",
        steps=[
            dee.steps.send_email(id="hello", template_id="t", subject="Hi {{ product }}"),
            dee.steps.wait(id="pause", duration={"hours": 1}),
            dee.steps.branch(
                id="check",
                conditions=[
                    {"when": 'events.hasReply("hello")', "goto": "done"},
                    {"when": f'steps.visits("check") < {rounds}', "goto": "pause"},
                    {"when": "default", "goto": "done"},
                ],
            ),
            dee.steps.end(id="done", outcome="finished"),
        ],
    )
    return plan, PlanContent(templates={"t": EmailTemplate(html="<p>hi</p>")})


async def test_a_runaway_loop_ends_at_the_visit_cap(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(*loop_plan(rounds=1_000)), max_visits_per_step=5)
        result = await handle.result()
    assert result.outcome == "visit-limit" and result.step_id == "pause"
    assert result.failure is not None and "more than 5 times" in result.failure.reason
    assert e.subjects == ["Hi DEE"]


async def test_long_loops_continue_as_new_and_keep_their_place(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    rounds = 900  # past the 4,096 events at which Temporal suggests continuing as new
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(*loop_plan(rounds=rounds)), max_visits_per_step=rounds + 1)
        first_run = handle.result_run_id
        result = await handle.result()
        first_history = await e.client.get_workflow_handle(
            handle.id, run_id=first_run
        ).fetch_history()
    assert result.outcome == "finished"
    # Every round counted across runs: 1 email + rounds waits + rounds checks + the end.
    assert result.steps == 1 + rounds + rounds + 1
    assert first_history.events[-1].event_type == (
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )
    assert e.subjects == ["Hi DEE"]


async def test_cancelling_during_a_send_ends_the_run_cancelled(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    # The server takes its time with the intro email; the run is cancelled meanwhile.
    smtp.handler.data_delay = 6.0
    async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.spec_version())
        async with asyncio.timeout(30):
            while not smtp.handler.rcpt_attempts:
                await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
        description = await handle.describe()
    assert isinstance(caught.value.cause, CancelledError)
    assert description.typed_search_attributes.get(OUTCOME_ATTRIBUTE) == "cancelled"
    assert description.typed_search_attributes.get(CURRENT_STEP_ATTRIBUTE) == "intro-email"
