"""What Temporal itself knows about a run, for when the run cannot be asked.

:func:`dee.runs.client.run_state` asks the run (a query that a worker answers). Around that
query, this module reads what needs no worker: the run's description (:func:`describe`),
whether any worker polls its task queue lately (:func:`worker_seen`), and, for a run that
has ended and no worker answers for, its state rebuilt from its Temporal history
(:func:`state_from_history`): its input, the events signalled to it and how it closed.
"""

from __future__ import annotations

import datetime
from datetime import timedelta
from typing import Any, Final

from temporalio.api.enums.v1 import EventType, TaskQueueKind, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from dee.plans.conditions import EventTally
from dee.runs.errors import RunNotFoundError
from dee.runs.model import (
    CANCELLED,
    CURRENT_STEP_ATTRIBUTE,
    EVENT_SIGNAL,
    FAILED,
    RunEvent,
    RunFailure,
    RunInput,
    RunResult,
    RunState,
    event_counts,
    event_digest,
)

__all__ = [
    "POLLER_RECENT",
    "describe",
    "not_found",
    "run_input",
    "state_from_history",
    "worker_seen",
]

#: A worker that polled a task queue this recently is taken to be there.
POLLER_RECENT: Final = timedelta(seconds=90)


def not_found(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND


async def describe(handle: WorkflowHandle[Any, Any], run_id: str) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except RPCError as exc:
        if not_found(exc):
            raise RunNotFoundError(run_id) from exc
        raise


async def worker_seen(client: Client, task_queue: str) -> bool:
    """Whether a worker polled ``task_queue`` lately, so a query has someone to answer it.

    Without one, a query waits out its whole timeout. Workers poll at least once a minute;
    the server keeps a poller listed for minutes after it stopped, so this can say yes for
    a worker that is gone, never no for one that runs.
    """
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        response = await client.workflow_service.describe_task_queue(request)
    except RPCError:
        # Not allowed to look (a narrow API key): ask the run and see.
        return True
    now = datetime.datetime.now(datetime.UTC)
    return any(
        now - poller.last_access_time.ToDatetime(tzinfo=datetime.UTC) < POLLER_RECENT
        for poller in response.pollers
    )


async def run_input(client: Client, run_id: str) -> RunInput:
    """What run ``run_id`` (its latest execution) was started with, from the first event of
    its history: no worker needed. :class:`RunNotFoundError` when there is no such run."""
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(run_id)
    try:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                (found,) = await client.data_converter.decode(payloads, [RunInput])
                if isinstance(found, RunInput):
                    return found
            break
    except RPCError as exc:
        if not_found(exc):
            raise RunNotFoundError(run_id) from exc
        raise
    raise RunNotFoundError(run_id)


async def state_from_history(
    client: Client, handle: WorkflowHandle[Any, Any], description: WorkflowExecutionDescription
) -> RunState:
    """A closed run's state from its history: input, signals and how it closed."""
    converter = client.data_converter
    run_input: RunInput | None = None
    execution: str | None = None
    events: list[RunEvent] = []
    seen: set[bytes] = set()
    tally = EventTally()
    outcome: str | None = None
    # Where the run was, as it last told visibility; the result says where it ended.
    step_id = description.typed_search_attributes.get(CURRENT_STEP_ATTRIBUTE) or None
    failure: RunFailure | None = None
    async for event in handle.fetch_history_events():
        match event.event_type:
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                started = event.workflow_execution_started_event_attributes
                execution = started.first_execution_run_id or None
                (run_input,) = await converter.decode(started.input.payloads, [RunInput])
                progress = run_input.progress
                if progress is not None:
                    events = list(progress.events)
                    tally = progress.tally(progress.execution or execution)
                    seen = progress.seen_digests()
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                received = await _signalled_event(converter, event)
                digest = event_digest(received.event_id) if received is not None else b""
                if received is not None and digest not in seen:
                    seen.add(digest)
                    events.append(received)
                    if received.execution in (None, execution):
                        tally.add(received.type, received.step_id)
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                payloads = event.workflow_execution_completed_event_attributes.result.payloads
                (result,) = await converter.decode(payloads, [RunResult])
                outcome, step_id, failure = result.outcome, result.step_id, result.failure
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
                outcome = CANCELLED
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                # Decoded: with payload keys, the message travels encrypted.
                closed = event.workflow_execution_failed_event_attributes.failure
                message = str(await converter.decode_failure(closed))
                outcome, failure = FAILED, _closed_by(step_id, "failed", message)
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                reason = event.workflow_execution_terminated_event_attributes.reason
                outcome, failure = FAILED, _closed_by(step_id, "terminated", reason)
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
                outcome, failure = FAILED, _closed_by(step_id, "timed-out", "")
    if run_input is None:
        raise RunNotFoundError(handle.id)
    assert run_input.plan.version is not None
    progress = run_input.progress
    return RunState(
        plan_id=run_input.plan.id,
        plan_version=run_input.plan.version,
        contact_id=run_input.contact.id,
        status="completed",
        current_step=step_id,
        history=progress.history if progress else (),
        events=tuple(events),
        outcome=outcome,
        failure=failure,
        execution=(progress.execution if progress else None) or execution,
        event_count=len(seen),
        counts=event_counts(tally),
        dropped=progress.dropped if progress else 0,
        foreign=progress.foreign if progress else 0,
        continued=progress.continued if progress else 0,
    )


def _closed_by(step_id: str | None, kind: str, reason: str) -> RunFailure:
    """A run that Temporal closed, not DEE (terminated by an operator, ...)."""
    what = {"failed": "the workflow failed", "terminated": "the run was terminated"}.get(
        kind, "the run timed out"
    )
    return RunFailure(
        step_id=step_id or "", reason=f"{what}: {reason}" if reason else what, kind=kind
    )


async def _signalled_event(converter: Any, event: HistoryEvent) -> RunEvent | None:
    attributes = event.workflow_execution_signaled_event_attributes
    if attributes.signal_name != EVENT_SIGNAL:
        return None
    try:
        (received,) = await converter.decode(attributes.input.payloads, [RunEvent])
    except Exception:
        # The run dropped what it could not read; so does its state.
        return None
    return received if isinstance(received, RunEvent) else None
