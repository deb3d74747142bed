"""Continue-as-new keeps what a run counts: a run in a long wait takes 12,000 events (more
than Temporal's 10,000 signals a run execution), continues as new several times in the
middle of the wait with signals arriving throughout, and counts every distinct event
exactly once, its repeats from earlier executions included. Then an unsubscribe still ends
it. On the dev server, whose history limits suggest continue-as-new as production's do.

The budget for what a run carries is checked too, on the largest run DEE lets start."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import MAX_CONTENT_CHARS, MAX_PLAN_DOCUMENT_BYTES, EmailTemplate, PlanContent
from dee.plans.validation import validate_plan
from dee.runs.client import send_event
from dee.runs.errors import RunBusyError
from dee.runs.model import (
    MAX_CARRIED_EVENT_BYTES,
    MAX_CARRIED_HISTORY,
    MAX_CONTACT_AND_VARIABLES_BYTES,
    MAX_RUN_EVENTS,
    EventCount,
    RunEvent,
    RunInput,
    RunProgress,
    RunResult,
    RunState,
    StepVisit,
    event_digest,
    pack_digests,
)
from tests.helpers.engine import engine
from tests.helpers.plans import simple_plan
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api
from workflows.execution_plan import MAX_CARRIED_INPUT_BYTES, ExecutionPlanWorkflow

EVENTS = 12_000
#: Signals in flight at once, and how many are sent before the test waits for the run to
#: have taken them. Temporal fails a continue-as-new that signals arrived during, so an
#: unbroken stream keeps one from completing until the execution holds its 10,000
#: signals; Temporal then refuses more (RunBusyError: the webhooks answer 503 and
#: providers send again, as the sender here does) and the continue-as-new goes through.
#: Providers send in bursts, as here: each wave lands while the run may be continuing.
CONCURRENCY = 16
WAVE = 1_000


async def _signal_all(
    handle: WorkflowHandle[ExecutionPlanWorkflow, RunResult], ids: list[str], *, distinct: int
) -> None:
    """Send an ``open`` for each of ``ids`` in waves, each wave until the run counted it;
    ``distinct`` is how many distinct events the run has counted before."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(event_id: str) -> None:
        async with gate:
            for _ in range(600):
                try:
                    await send_event(
                        handle._client, handle.id, type="open", step_id="hello", event_id=event_id
                    )
                    return
                except RunBusyError:
                    await asyncio.sleep(0.1)
            raise AssertionError(f"event {event_id} was refused for a minute")

    seen = {f"open-{number}" for number in range(distinct)}
    for at in range(0, len(ids), WAVE):
        wave = ids[at : at + WAVE]
        await asyncio.gather(*(one(event_id) for event_id in wave))
        seen.update(wave)
        async with asyncio.timeout(120):
            while (await _state(handle)).event_count < len(seen):
                await asyncio.sleep(0.1)


async def _state(handle: WorkflowHandle[ExecutionPlanWorkflow, RunResult]) -> RunState:
    # A handle on the workflow id follows the run to its latest execution.
    latest = handle._client.get_workflow_handle(handle.id)
    state: RunState = await latest.query(ExecutionPlanWorkflow.state)
    return state


async def test_twelve_thousand_events_across_continue_as_new_count_exactly(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            # The plan only waits a day: the run just gathers events.
            version = e.registry.create(simple_plan("gather", hours=24), PlanContent())
            handle = await e.start(version)
            ids = [f"open-{number}" for number in range(EVENTS)]
            first, rest = ids[:6_000], ids[6_000:]
            await _signal_all(handle, first, distinct=0)
            # Repeats of ids the run saw before it continued as new, mixed with new ones.
            again = [*rest[:3_000], *first[:2_000], *rest[3_000:]]
            await _signal_all(handle, again, distinct=len(first))
            state = await _state(handle)
            await send_event(e.client, handle.id, type="unsubscribe", event_id="bye")
            result = await e.client.get_workflow_handle(handle.id, result_type=RunResult).result()

    # Positive control: the run did continue as new, more than once, inside its wait.
    assert state.continued >= 2, state.continued
    assert state.status == "running" and state.current_step == "pause"
    # The wait was entered once: continuing as new inside it is not a new visit.
    assert [visit.step_id for visit in state.history] == ["pause"]
    assert state.execution is not None
    assert state.event_count == EVENTS
    assert state.counts == (EventCount(type="open", step_id="hello", count=EVENTS),)
    assert (state.dropped, state.foreign) == (0, 0)
    assert result.outcome == "unsubscribed" and result.step_id == "pause"
    assert result.events == EVENTS + 1


def _biggest_input() -> RunInput:
    """The largest run DEE starts, carrying the most a run carries across continue-as-new."""
    plan = simple_plan("big")
    content = PlanContent(templates={"t": EmailTemplate(html="x" * MAX_CONTENT_CHARS)})
    budget = MAX_PLAN_DOCUMENT_BYTES - len(plan.model_dump_json()) - len(content.model_dump_json())
    content = PlanContent(
        templates={"t": EmailTemplate(html="x" * MAX_CONTENT_CHARS, text="y" * (budget - 10))}
    )
    assert not [p for p in validate_plan(plan, content) if p.code == "plan-too-large"]
    now = datetime.datetime.now(datetime.UTC)
    filler = "z" * (MAX_CONTACT_AND_VARIABLES_BYTES - 200)
    event = RunEvent(
        event_id="e" * 200, type="reply", step_id="hello", at=now, details={"text": "w" * 4000}
    )
    progress = RunProgress(
        next_step="pause",
        visits={"pause": 1},
        history=tuple(
            StepVisit(
                step_id="s" * 100, type="sendEmail", visit=1, started_at=now, result="r" * 300
            )
            for _ in range(MAX_CARRIED_HISTORY)
        ),
        events=tuple(event for _ in range(MAX_CARRIED_EVENT_BYTES // len(event.model_dump_json()))),
        started_at=now,
        continued=1,
        execution="x" * 36,
        counts=tuple(EventCount(type="open", step_id=f"s{n}", count=1) for n in range(50)),
        seen=pack_digests(event_digest(str(n)) for n in range(MAX_RUN_EVENTS)),
        wait_until=now,
    )
    return RunInput(
        plan=plan.model_copy(update={"version": 1}),
        content=content,
        digest="d" * 64,
        contact={"id": "c", "notes": filler},
        variables={},
        progress=progress,
    )


def test_the_largest_run_fits_in_one_temporal_payload_when_it_continues_as_new() -> None:
    carried = _biggest_input()
    size = len(carried.model_dump_json().encode())
    # Positive control: the input really is at every limit at once.
    assert size > MAX_PLAN_DOCUMENT_BYTES + MAX_CONTACT_AND_VARIABLES_BYTES // 2
    assert size <= MAX_CARRIED_INPUT_BYTES < 2 * 1024 * 1024, size
    # The contact alone at its limit is refused by start_run (tests/runs/test_client.py).
    assert len(json.dumps(carried.contact.attributes())) < MAX_CONTACT_AND_VARIABLES_BYTES


def test_a_plan_larger_than_a_run_can_carry_is_refused_at_creation() -> None:
    plan = simple_plan("huge")
    big = "x" * MAX_CONTENT_CHARS
    content = PlanContent(
        templates={name: EmailTemplate(html=big, text=big) for name in ("a", "b")}
    )
    problems = [p for p in validate_plan(plan, content) if p.code == "plan-too-large"]
    assert len(problems) == 1
    message = problems[0].message
    assert "templates/a.html" in message and "the most a run can carry is 1,048,576" in message
