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
active at a time: starting another while it runs raises
:class:`~dee.runs.errors.RunAlreadyStartedError`. Errors about runs derive from
:class:`~dee.runs.errors.RunError` (see :mod:`dee.runs.errors`). Reading a run that no worker
answers for goes through :mod:`dee.runs._history`.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from dee.metrics import count_signal
from dee.plans.model import ID_PATTERN
from dee.plans.versions import PlanVersion
from dee.runs._history import describe, not_found, state_from_history, worker_seen
from dee.runs._start import prepare_run, reachable, submit_run
from dee.runs.errors import (
    ContactSuppressedError,
    RunBusyError,
    RunClosedError,
    RunNotFoundError,
    RunUnavailableError,
)
from dee.runs.model import (
    CONTACT_ID_ATTRIBUTE,
    CURRENT_STEP_ATTRIBUTE,
    DEFAULT_MAX_VISITS_PER_STEP,
    DEFAULT_TASK_QUEUE,
    EVENT_SIGNAL,
    OUTCOME_ATTRIBUTE,
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    STATE_QUERY,
    WORKFLOW_NAME,
    Contact,
    RunEvent,
    RunState,
)

if TYPE_CHECKING:
    # Only the types: ``import dee`` must not load the SQL stack these are built on.
    from dee.runs.contacts import ContactIds
    from dee.runs.suppressions import Suppressions

__all__ = [
    "RunStatus",
    "RunSummary",
    "cancel_run",
    "list_runs",
    "run_state",
    "send_event",
    "start_run",
]

#: How long a state query waits for a worker to answer before DEE looks elsewhere.
QUERY_TIMEOUT: Final = timedelta(seconds=10)

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


def contact_query(contact_ids: Iterable[str]) -> str | None:
    """The visibility filter ``DeeContactId IN (...)`` for ``contact_ids``, or ``None`` when
    none can be quoted safely (contact ids may hold quotes, and backslashes escape: such
    an id is left out, so it matches nothing rather than steering the query)."""
    quoted = []
    for contact_id in dict.fromkeys(contact_ids):
        if "\\" in contact_id:
            continue
        if "'" not in contact_id:
            quoted.append(f"'{contact_id}'")
        elif '"' not in contact_id:
            quoted.append(f'"{contact_id}"')
    if not quoted:
        return None
    return f"{CONTACT_ID_ATTRIBUTE.name} IN ({', '.join(quoted)})"


async def start_run(
    client: Client,
    version: PlanVersion,
    *,
    contact: Contact | Mapping[str, Any],
    variables: Mapping[str, JsonValue] | None = None,
    run_id: str | None = None,
    sender: str | None = None,
    task_queue: str = DEFAULT_TASK_QUEUE,
    max_visits_per_step: int = DEFAULT_MAX_VISITS_PER_STEP,
    suppressions: Suppressions | None = None,
    contact_ids: ContactIds | None = None,
) -> str:
    """Start ``contact`` on plan ``version``; returns the run id.

    Refuses before anything starts when the contact and ``variables`` lack a name the plan's
    templates and scripts use (:class:`~dee.errors.MissingVariablesError` names each one).
    ``run_id`` defaults to ``<plan id>:<contact id>``; while a run with that id is active,
    another is refused with :class:`RunAlreadyStartedError` (a finished one may be reused).
    Contact and variables together may take at most 64 KiB as JSON
    (:class:`~dee.runs.errors.RunInputTooLargeError`).
    A contact given as a mapping is validated as a :class:`~dee.runs.model.Contact` (pydantic's
    ``ValidationError`` when it is not one). A mapping without an ``id`` gets, with
    ``contact_ids`` (the server and the CLI pass theirs), the keyed hash of its address
    (:mod:`dee.runs.contacts`), so the run id carries no address; without it, the address
    itself.

    With ``suppressions`` (the server and the CLI pass theirs), a contact whose email
    address is suppressed is not started on a plan that sends email, nor one whose phone
    number is suppressed on a plan that calls: :class:`ContactSuppressedError` names the
    address or number, the reason and how to lift it. Without it (or from a plain Temporal
    client) the run starts, and both activities still refuse a suppressed contact at send
    time.
    """
    if contact_ids is not None:
        await asyncio.to_thread(getattr, contact_ids, "key")  # read once, off the loop
    prepared = prepare_run(
        version,
        contact=contact,
        variables=variables,
        run_id=run_id,
        sender=sender,
        max_visits_per_step=max_visits_per_step,
        contact_ids=contact_ids,
    )
    if suppressions is not None:
        await _check_suppressed(suppressions, version, prepared.contact, prepared.run_id)
    await submit_run(client, prepared, task_queue=task_queue)
    return prepared.run_id


def _signals_exhausted(exc: RPCError) -> bool:
    # Temporal refuses signals past a run execution's limit (10,000 by default) with
    # INVALID_ARGUMENT, though nothing is wrong with the signal: the run continues as new.
    return exc.status == RPCStatusCode.INVALID_ARGUMENT and "limit for signal" in exc.message


async def _check_suppressed(
    suppressions: Suppressions, version: PlanVersion, contact: Contact, run_id: str
) -> None:
    """:class:`ContactSuppressedError` when a channel the plan uses would reach the contact
    at a suppressed address or number."""
    wanted = reachable(version, contact)
    for value in wanted:
        found = await asyncio.to_thread(suppressions.suppression, value)
        if found is not None:
            raise ContactSuppressedError(
                run_id,
                value=found.address,
                channel=found.channel,
                reason=found.reason,
                source=found.source,
            )


def _closed(exc: RPCError) -> bool:
    # Temporal answers NOT_FOUND for signals and cancels to a closed run, saying so.
    return not_found(exc) and "already completed" in exc.message


async def send_event(
    client: Client,
    run_id: str,
    *,
    type: str,
    step_id: str | None = None,
    event_id: str | None = None,
    details: Mapping[str, JsonValue] | None = None,
    at: datetime.datetime | None = None,
    execution: str | None = None,
) -> RunEvent:
    """Deliver an event (``reply``, ``open``, ...) to a running run; returns it.

    ``event_id`` (default: a new UUID) de-duplicates: the run ignores an id it has seen.
    ``at`` defaults to now. An unknown ``type`` is pydantic's ``ValidationError``.
    ``execution`` names the run execution the event belongs to (from a token or ledger
    row): when the run with this id is a later one, the event is kept but not counted.
    :class:`~dee.runs.errors.RunBusyError` when the run takes no events for a moment
    (send it again shortly).
    """
    event = RunEvent(
        event_id=event_id or str(uuid.uuid4()),
        type=type,
        step_id=step_id,
        at=at or datetime.datetime.now(datetime.UTC),
        details=dict(details or {}),
        execution=execution,
    )
    outcome = "error"
    try:
        await client.get_workflow_handle(run_id).signal(EVENT_SIGNAL, event)
        outcome = "signalled"
    except RPCError as exc:
        if _closed(exc):
            outcome = "run-closed"
            raise RunClosedError(run_id, action="take events") from exc
        if not_found(exc):
            outcome = "run-not-found"
            raise RunNotFoundError(run_id) from exc
        if _signals_exhausted(exc):
            outcome = "busy"
            raise RunBusyError(run_id, exc.message) from exc
        raise
    finally:
        # The event's type is one RunEvent takes: a bounded label.
        count_signal(event.type, outcome)
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
    description = await describe(handle, run_id)
    running = description.status == WorkflowExecutionStatus.RUNNING
    if await worker_seen(client, description.task_queue):
        try:
            state: RunState = await handle.query(
                STATE_QUERY, result_type=RunState, rpc_timeout=QUERY_TIMEOUT
            )
            return state
        except RPCError as exc:
            if not_found(exc):
                raise RunNotFoundError(run_id) from exc
            reason = exc.message
        except WorkflowQueryFailedError as exc:
            reason = str(exc)
    else:
        reason = f"no worker has polled task queue {description.task_queue!r} lately"
    if running:
        raise RunUnavailableError(run_id, reason)
    return await state_from_history(client, handle, description)


async def cancel_run(client: Client, run_id: str) -> None:
    """Ask a running run to stop; it ends with outcome ``cancelled`` once a worker sees it.

    :class:`RunClosedError` when the run has already ended.
    """
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(run_id)
    # Temporal accepts a cancel request for a closed run and does nothing with it.
    description = await describe(handle, run_id)
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise RunClosedError(run_id, action="be cancelled")
    try:
        await handle.cancel()
    except RPCError as exc:
        if not_found(exc):
            raise RunClosedError(run_id, action="be cancelled") from exc
        raise


async def list_runs(
    client: Client,
    *,
    plan_id: str | None = None,
    contact_ids: Iterable[str] = (),
    limit: int = 100,
) -> list[RunSummary]:
    """Runs in the client's namespace, newest first; only plan ``plan_id``'s when given,
    and only those whose contact id is one of ``contact_ids`` when any are given
    (:meth:`~dee.runs.contacts.ContactIds.lookup` gives a contact's)."""
    query = f"WorkflowType = '{WORKFLOW_NAME}'"
    if plan_id is not None:
        # Plan ids are slugs, so one that is not cannot match and is never quoted into SQL.
        if not re.fullmatch(ID_PATTERN, plan_id):
            return []
        query += f" AND {PLAN_ID_ATTRIBUTE.name} = '{plan_id}'"
    wanted = tuple(contact_ids)
    if wanted:
        among = contact_query(wanted)
        if among is None:
            return []
        query += f" AND {among}"
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
