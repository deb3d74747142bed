"""``pauseOnAutoReply`` on the time-skipping test server, with the real worker, activities
and SMTP server: an out-of-office reply that names a return date holds the run's next send
until the day after it, at most ``maxDays`` after the reply."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

import dee
from dee.runs.client import send_event
from dee.runs.model import RunState
from tests.helpers.engine import engine, wait_for_messages
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import TwilioApi, twilio_api
from tests.helpers.windows import CONTENT, activity_starts, summaries
from workflows.execution_plan import ExecutionPlanWorkflow

UTC = datetime.UTC


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


def paused_plan(*, max_days: int = 14) -> dee.ExecutionPlan:
    """email -> wait a day -> email -> end, holding sends after an out-of-office reply."""
    return dee.execution_plan(
        id=f"ooo-{uuid.uuid4().hex[:8]}",
        name="Out of office",
        steps=[
            dee.steps.send_email(id="first", template_id="tmpl", subject="First"),
            dee.steps.wait(id="pause", duration={"days": 1}),
            dee.steps.send_email(id="second", template_id="tmpl", subject="Second"),
            dee.steps.end(id="done", outcome="done"),
        ],
        pause_on_auto_reply={"max_days": max_days},
    )


async def sent_at(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
    *,
    plan: dee.ExecutionPlan,
    back_in_days: int | None,
    back: str | None = None,
) -> tuple[datetime.datetime, datetime.datetime, list[str], RunState]:
    """When the first and second emails' sending attempts started, the timer summaries and
    the final state, for an auto-reply naming a return date ``back_in_days`` after the first
    email (or ``back`` as given; ``None`` for both: no auto-reply)."""
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(plan, CONTENT), contact={"timezone": "UTC"})
        await wait_for_messages(e, 1)
        state: RunState = await handle.query(ExecutionPlanWorkflow.state)
        first = state.history[0].started_at
        if back_in_days is not None or back is not None:
            returning = back or (first.date() + datetime.timedelta(days=back_in_days or 0))
            await send_event(
                e.client,
                handle.id,
                type="auto-reply",
                step_id="first",
                details={"returnDate": str(returning)},
            )
        await handle.result()
        starts = await activity_starts(handle)
        shown = await summaries(handle, time_skipping_env.client.data_converter.payload_converter)
        final: RunState = await handle.query(ExecutionPlanWorkflow.state)
    return starts[0], starts[-1], shown, final


async def test_the_next_send_waits_for_the_day_after_the_return_date(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    plan = paused_plan()
    # Positive control: without an auto-reply the second email goes after the day's wait.
    first, second, _, _ = await sent_at(
        time_skipping_env, task_queue, tmp_path, smtp, twilio, plan=plan, back_in_days=None
    )
    assert datetime.timedelta(days=1) <= second - first < datetime.timedelta(days=1, hours=1)
    first, second, shown, state = await sent_at(
        time_skipping_env, task_queue, tmp_path, smtp, twilio, plan=plan, back_in_days=5
    )
    resume = datetime.datetime.combine(
        first.date() + datetime.timedelta(days=6), datetime.time(), tzinfo=UTC
    )
    assert abs(second - resume) < datetime.timedelta(seconds=30), (first, second)
    back = first.date() + datetime.timedelta(days=5)
    assert any(text.startswith(f"out of office until {back:%Y-%m-%d}:") for text in shown), shown
    assert state.outcome == "done"


@pytest.mark.parametrize(
    "back",
    [
        "9999-12-31",  # the end of the calendar: held maxDays, no overflow
        "3000-01-01",  # far away: held maxDays
    ],
)
async def test_a_far_return_date_holds_at_most_max_days(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
    back: str,
) -> None:
    first, second, _, state = await sent_at(
        time_skipping_env,
        task_queue,
        tmp_path,
        smtp,
        twilio,
        plan=paused_plan(max_days=3),
        back_in_days=None,
        back=back,
    )
    resume = datetime.datetime.combine(
        first.date() + datetime.timedelta(days=3), datetime.time(), tzinfo=UTC
    )
    assert abs(second - resume) < datetime.timedelta(seconds=30), (first, second)
    assert state.outcome == "done"


@pytest.mark.parametrize("back", ["next tuesday", "2026-02-30", ""])
async def test_a_return_date_that_does_not_parse_holds_nothing(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
    back: str,
) -> None:
    first, second, _, state = await sent_at(
        time_skipping_env,
        task_queue,
        tmp_path,
        smtp,
        twilio,
        plan=paused_plan(),
        back_in_days=None,
        back=back or " ",
    )
    assert second - first < datetime.timedelta(days=1, hours=1)
    assert state.outcome == "done"
