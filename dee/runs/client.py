"""Starting runs and talking to them: the Python API that ``dee runs`` is built on.

Every function takes a :class:`temporalio.client.Client` that uses the pydantic data
converter, such as :func:`dee.runs.temporal.connect` returns::

    client = await connect()
    with PlanRegistry() as registry:
        version = registry.get("outbound-intro")
    run_id = await start_run(client, version, contact={"email": "ana@example.com",
                             "firstName": "Ana"}, variables={"product": "DEE"})
    await send_event(client, run_id, type="reply", step_id="intro-email")
    state = await run_state(client, run_id)

A run's id defaults to ``<plan id>:<contact id>``, and only one run with a given id may be
active at a time: starting another while it runs raises :class:`RunAlreadyStartedError`.
Errors about runs derive from :class:`RunError` (itself a :class:`~dee.errors.DeeError`)::

    RunError
    ├── RunNotFoundError        no run has this id
    ├── RunAlreadyStartedError  a run with this id is still active
    ├── RunClosedError          the run has ended and takes no more events or cancellation
    └── RunUnavailableError     the run exists but no worker answered for it
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from temporalio.api.enums.v1 import EventType, TaskQueueKind, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import DeeError
from dee.plans.content import check_variables
from dee.plans.model import ID_PATTERN
from dee.plans.versions import PlanVersion
from dee.runs.model import (
    CANCELLED,
    CONTACT_ID_ATTRIBUTE,
    CURRENT_STEP_ATTRIBUTE,
    DEFAULT_TASK_QUEUE,
    EVENT_SIGNAL,
    FAILED,
    OUTCOME_ATTRIBUTE,
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    STATE_QUERY,
    WORKFLOW_NAME,
    Contact,
    RunEvent,
    RunFailure,
    RunInput,
    RunResult,
    RunState,
    default_run_id,
)
from dee.runs.temporal import TemporalSetupError

__all__ = [
    "RunAlreadyStartedError",
    "RunClosedError",
    "RunError",
    "RunNotFoundError",
    "RunStatus",
    "RunSummary",
    "RunUnavailableError",
    "cancel_run",
    "list_runs",
    "run_state",
    "send_event",
    "start_run",
]

#: How long a state query waits for a worker to answer before DEE looks elsewhere.
QUERY_TIMEOUT: Final = timedelta(seconds=10)
#: A worker that polled a task queue this recently is taken to be there.
POLLER_RECENT: Final = timedelta(seconds=90)

RunStatus = Literal[
    "running", "completed", "failed", "cancelled", "terminated", "timed-out", "continued-as-new"
]

_STATUSES: Final[dict[WorkflowExecutionStatus, RunStatus]] = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed-out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued-as-new",
}


def _status(status: WorkflowExecutionStatus | None) -> RunStatus:
    return _STATUSES.get(status, "running") if status is not None else "running"


class RunError(DeeError):
    """Something about one run; ``run_id`` names it."""

    def __init__(self, message: str, *, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunNotFoundError(RunError):
    """No run has this id (in the client's namespace)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist: see `dee runs list`", run_id=run_id)


class RunAlreadyStartedError(RunError):
    """A run with this id is active; one plan and contact have one active run at a time."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} is already active: cancel it first with `dee runs cancel {run_id}` "
            "or pass --run-id",
            run_id=run_id,
        )


class RunClosedError(RunError):
    """The run has ended: it takes no more events and cannot be cancelled."""

    def __init__(self, run_id: str, *, action: str) -> None:
        self.action = action
        super().__init__(
            f"run {run_id!r} has ended, so it cannot {action}: see `dee runs show {run_id}`",
            run_id=run_id,
        )


class RunUnavailableError(RunError):
    """The run exists but its state could not be read: no worker answered the query."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(
            f"run {run_id!r} did not answer ({reason}): is a worker running on its task "
            "queue? Start one with `dee worker` or `dee dev`",
            run_id=run_id,
        )


class RunSummary(BaseModel):
    """One run in :func:`list_runs`, from Temporal's visibility store (which can lag a
    second or so behind the run itself)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    status: RunStatus
    plan_id: str | None
    plan_version: int | None
    contact_id: str | None
    #: The step the run was on when visibility last heard of it, or where it ended.
    current_step: str | None
    outcome: str | None
    started_at: datetime.datetime
    closed_at: datetime.datetime | None = None


def _contact(contact: Contact | Mapping[str, Any]) -> Contact:
    return contact if isinstance(contact, Contact) else Contact.model_validate(dict(contact))


def _summary(version: PlanVersion, contact: Contact) -> str:
    return f"plan {version.plan.id} v{version.version} · contact {contact.id}"


def _details(
    run_id: str, version: PlanVersion, contact: Contact, variables: Mapping[str, Any]
) -> str:
    plan = version.plan
    names = ", ".join(f"`{name}`" for name in sorted(variables)) or "none"
    return "\n".join(
        [
            f"**{plan.name}** (`{plan.id}` v{version.version}) for contact `{contact.id}`.",
            "",
            f"- steps: {len(plan.steps)}, starting at `{plan.steps[0].id}`",
            f"- run variables: {names}",
            f"- digest: `{version.digest[:12]}`",
            "",
            f"Inspect with `dee runs show {run_id}`; the plan with `dee plans show {plan.id} "
            f"--version {version.version}`.",
        ]
    )


async def start_run(
    client: Client,
    version: PlanVersion,
    *,
    contact: Contact | Mapping[str, Any],
    variables: Mapping[str, JsonValue] | None = None,
    run_id: str | None = None,
    sender: str | None = None,
    task_queue: str = DEFAULT_TASK_QUEUE,
) -> str:
    """Start ``contact`` on plan ``version``; returns the run id.

    Refuses before anything starts when the contact and ``variables`` lack a name the plan's
    templates and scripts use (:class:`~dee.errors.MissingVariablesError` names each one).
    ``run_id`` defaults to ``<plan id>:<contact id>``; while a run with that id is active,
    another is refused with :class:`RunAlreadyStartedError` (a finished one may be reused).
    A contact given as a mapping is validated as a :class:`~dee.runs.model.Contact` (pydantic's
    ``ValidationError`` when it is not one).
    """
    person = _contact(contact)
    given = dict(variables or {})
    plan = version.plan
    check_variables(plan, version.content, contact=person.attributes(), variables=given)
    run_id = run_id or default_run_id(plan.id, person.id)
    run_input = RunInput(
        plan=plan,
        content=version.content,
        digest=version.digest,
        contact=person,
        variables=given,
        sender=sender,
    )
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            run_input,
            id=run_id,
            task_queue=task_queue,
            # A finished run's id may be used again; an active one may not.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(PLAN_ID_ATTRIBUTE, plan.id),
                    SearchAttributePair(PLAN_VERSION_ATTRIBUTE, version.version),
                    SearchAttributePair(CONTACT_ID_ATTRIBUTE, person.id),
                ]
            ),
            static_summary=_summary(version, person),
            static_details=_details(run_id, version, person, given),
        )
    except WorkflowAlreadyStartedError as exc:
        raise RunAlreadyStartedError(run_id) from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message:
            raise TemporalSetupError(
                f"Temporal namespace {client.namespace!r} lacks DEE's search attributes "
                f"({exc.message}): start `dee worker` or `dee dev` once, which registers them"
            ) from exc
        raise
    return run_id


def _not_found(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND


def _closed(exc: RPCError) -> bool:
    # Temporal answers NOT_FOUND for signals and cancels to a closed run, saying so.
    return _not_found(exc) and "already completed" in exc.message


async def send_event(
    client: Client,
    run_id: str,
    *,
    type: str,
    step_id: str | None = None,
    event_id: str | None = None,
    details: Mapping[str, JsonValue] | None = None,
    at: datetime.datetime | None = None,
) -> RunEvent:
    """Deliver an event (``reply``, ``open``, ...) to a running run; returns it.

    ``event_id`` (default: a new UUID) de-duplicates: the run ignores an id it has seen.
    ``at`` defaults to now. An unknown ``type`` is pydantic's ``ValidationError``.
    """
    event = RunEvent(
        event_id=event_id or str(uuid.uuid4()),
        type=type,
        step_id=step_id,
        at=at or datetime.datetime.now(datetime.UTC),
        details=dict(details or {}),
    )
    try:
        await client.get_workflow_handle(run_id).signal(EVENT_SIGNAL, event)
    except RPCError as exc:
        if _closed(exc):
            raise RunClosedError(run_id, action="take events") from exc
        if _not_found(exc):
            raise RunNotFoundError(run_id) from exc
        raise
    return event


async def run_state(client: Client, run_id: str) -> RunState:
    """Where the run is: its current step, step history, events, and outcome once ended.

    Asks the run itself (a query, answered by a worker). For a run that has ended and no
    worker answers for, the state is read from the run's Temporal history instead: outcome
    and events are exact, and the step history is what the run carried into its last
    continue-as-new (empty for most runs). A running run that no worker answers for is
    :class:`RunUnavailableError`.
    """
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(run_id)
    description = await _describe(handle, run_id)
    running = description.status == WorkflowExecutionStatus.RUNNING
    if await _worker_seen(client, description.task_queue):
        try:
            state: RunState = await handle.query(
                STATE_QUERY, result_type=RunState, rpc_timeout=QUERY_TIMEOUT
            )
            return state
        except RPCError as exc:
            if _not_found(exc):
                raise RunNotFoundError(run_id) from exc
            reason = exc.message
        except WorkflowQueryFailedError as exc:
            reason = str(exc)
    else:
        reason = f"no worker has polled task queue {description.task_queue!r} lately"
    if running:
        raise RunUnavailableError(run_id, reason)
    return await _state_from_history(client, handle, description)


async def _worker_seen(client: Client, task_queue: str) -> bool:
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


async def _describe(handle: WorkflowHandle[Any, Any], run_id: str) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(run_id) from exc
        raise


async def _state_from_history(
    client: Client, handle: WorkflowHandle[Any, Any], description: WorkflowExecutionDescription
) -> RunState:
    """A closed run's state from its history: input, signals and how it closed."""
    converter = client.data_converter
    run_input: RunInput | None = None
    events: list[RunEvent] = []
    seen: set[str] = set()
    outcome: str | None = None
    # Where the run was, as it last told visibility; the result says where it ended.
    step_id = description.typed_search_attributes.get(CURRENT_STEP_ATTRIBUTE) or None
    failure: RunFailure | None = None
    async for event in handle.fetch_history_events():
        match event.event_type:
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                (run_input,) = await converter.decode(payloads, [RunInput])
                if run_input.progress is not None:
                    events = list(run_input.progress.events)
                    seen = {carried.event_id for carried in events}
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                received = await _signalled_event(converter, event)
                if received is not None and received.event_id not in seen:
                    seen.add(received.event_id)
                    events.append(received)
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                payloads = event.workflow_execution_completed_event_attributes.result.payloads
                (result,) = await converter.decode(payloads, [RunResult])
                outcome, step_id, failure = result.outcome, result.step_id, result.failure
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
                outcome = CANCELLED
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                message = event.workflow_execution_failed_event_attributes.failure.message
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


async def cancel_run(client: Client, run_id: str) -> None:
    """Ask a running run to stop; it ends with outcome ``cancelled`` once a worker sees it.

    :class:`RunClosedError` when the run has already ended.
    """
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(run_id)
    # Temporal accepts a cancel request for a closed run and does nothing with it.
    description = await _describe(handle, run_id)
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise RunClosedError(run_id, action="be cancelled")
    try:
        await handle.cancel()
    except RPCError as exc:
        if _not_found(exc):
            raise RunClosedError(run_id, action="be cancelled") from exc
        raise


async def list_runs(
    client: Client, *, plan_id: str | None = None, limit: int = 100
) -> list[RunSummary]:
    """Runs in the client's namespace, newest first; only plan ``plan_id``'s when given."""
    query = f"WorkflowType = '{WORKFLOW_NAME}'"
    if plan_id is not None:
        # Plan ids are slugs, so one that is not cannot match and is never quoted into SQL.
        if not re.fullmatch(ID_PATTERN, plan_id):
            return []
        query += f" AND {PLAN_ID_ATTRIBUTE.name} = '{plan_id}'"
    summaries = []
    async for execution in client.list_workflows(query, limit=limit):
        attributes = execution.typed_search_attributes
        summaries.append(
            RunSummary(
                run_id=execution.id,
                status=_status(execution.status),
                plan_id=attributes.get(PLAN_ID_ATTRIBUTE),
                plan_version=attributes.get(PLAN_VERSION_ATTRIBUTE),
                contact_id=attributes.get(CONTACT_ID_ATTRIBUTE),
                current_step=attributes.get(CURRENT_STEP_ATTRIBUTE) or None,
                outcome=attributes.get(OUTCOME_ATTRIBUTE),
                started_at=execution.start_time,
                closed_at=execution.close_time,
            )
        )
    return summaries
