"""Starting many contacts on one plan version: what ``dee runs start --contacts`` and
``POST /v1/runs:bulk`` are built on::

    rows = [ContactRow(row=1, contact={"email": "ana@example.com", "firstName": "Ana"}),
            ContactRow(row=2, contact={"email": "bo@example.com", "firstName": "Bo"})]
    result = await start_runs(client, version, rows, variables={"product": "DEE"},
                              contact_ids=contact_ids, suppressions=suppressions)
    result.summary.started, result.refused

Every row ends as one :class:`RowResult`: ``started``; ``already-running`` (a run with its
id is active) or ``already-ended`` (one has ended, within the namespace's retention, and
``restart_ended`` is off); ``duplicate`` (an earlier row of the batch is the same run);
``suppressed``; ``invalid`` (the row, contact or variables are not what the plan needs);
``failed`` (Temporal refused, or did not answer after the retries). A result names its row
and says why in a short reason that repeats nothing of the contact.

Starting twice is safe: a row's run id is ``<plan id>:<contact id>`` unless it gives one,
the contact id is the keyed hash of the address when the row gives none
(:mod:`dee.runs.contacts`), and Temporal refuses a second run with an id in use. After an
interruption, run the same rows again: those already started come back as
``already-running`` (or ``already-ended``) and only the others start. A start that timed
out but reached Temporal comes back the same way on its retry.

Rows are checked in order, in chunks, in a thread (the suppression list is read once a
chunk); the starts go to Temporal ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import MissingVariablesError
from dee.plans.content import required_variables
from dee.plans.versions import PlanVersion
from dee.runs._start import PreparedRun, prepare_run, reachable, submit_run
from dee.runs.errors import RunAlreadyStartedError, RunInputError, RunInputTooLargeError
from dee.runs.model import DEFAULT_MAX_VISITS_PER_STEP, DEFAULT_TASK_QUEUE
from dee.runs.temporal import TemporalSetupError

if TYPE_CHECKING:
    # Only the types: ``import dee`` must not load the SQL stack these are built on.
    from dee.runs.contacts import ContactIds
    from dee.runs.suppressions import Suppression, Suppressions

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_RETRIES",
    "DONE",
    "BulkResult",
    "BulkSummary",
    "ContactRow",
    "RowResult",
    "RowStatus",
    "start_runs",
]

logger = logging.getLogger(__name__)

RowStatus = Literal[
    "started", "already-running", "already-ended", "duplicate", "suppressed", "invalid", "failed"
]
#: Rows that need nothing more: their run is started, or was already.
DONE: Final[frozenset[RowStatus]] = frozenset(
    {"started", "already-running", "already-ended", "duplicate"}
)
DEFAULT_CONCURRENCY: Final = 32
#: Tries after the first when Temporal does not answer.
DEFAULT_RETRIES: Final = 4
_CHUNK: Final = 256
_MAX_REASON: Final = 300
#: Answers after which the same start may succeed a moment later.
_TRANSIENT: Final = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    }
)
_FIELDS: Final = frozenset({"contact", "variables", "runId"})
_INPUT_PROBLEMS: Final = {
    "runId": "runId is not one DEE takes: it starts with a letter or digit and holds no "
    "whitespace, control characters or slashes, at most 255 characters",
    "contact": "the contact nests deeper than 32 levels of lists and objects",
    "variables": "the variables nest deeper than 32 levels of lists and objects",
}


@dataclass(frozen=True)
class ContactRow:
    """One contact to start: its number in reports (a line, a spreadsheet row), the contact
    (``email``, ``phone``, ``id``, ``timezone`` and attributes), its run variables and run id.
    ``problem`` marks a row its reader could not make sense of: it is reported invalid."""

    row: int
    contact: Mapping[str, Any]
    variables: Mapping[str, JsonValue] = field(default_factory=dict)
    run_id: str | None = None
    problem: str | None = None

    @classmethod
    def from_document(cls, document: Any, *, row: int) -> ContactRow:
        """A row from ``{"contact": {...}, "variables": {...}, "runId": "..."}`` (only
        ``contact`` required); anything else is a row with a ``problem``."""
        if not isinstance(document, dict):
            return cls(row, {}, problem="expected an object with `contact`")
        if not set(document) <= _FIELDS:
            return cls(row, {}, problem="unknown fields: a row has `contact`, `variables`, `runId`")
        contact, variables = document.get("contact"), document.get("variables", {})
        run_id = document.get("runId")
        if not isinstance(contact, dict):
            return cls(row, {}, problem="`contact` must be an object")
        if not isinstance(variables, dict):
            return cls(row, {}, problem="`variables` must be an object")
        if "contact" in variables:
            return cls(row, {}, problem="`contact` is reserved: give contact fields in `contact`")
        if run_id is not None and not isinstance(run_id, str):
            return cls(row, {}, problem="`runId` must be a string")
        return cls(row, contact, variables, run_id)


class RowResult(BaseModel):
    """How one row ended; ``run_id`` for rows whose run is started or was already,
    ``code`` (stable) and ``reason`` (for people) for the others."""

    model_config = ConfigDict(frozen=True)

    row: int
    status: RowStatus
    run_id: str | None = None
    code: str | None = None
    reason: str | None = None


class BulkSummary(BaseModel):
    """How many rows ended each way."""

    model_config = ConfigDict(frozen=True)

    total: int = 0
    started: int = 0
    already_running: int = 0
    already_ended: int = 0
    duplicate: int = 0
    suppressed: int = 0
    invalid: int = 0
    failed: int = 0

    @classmethod
    def of(cls, rows: Iterable[RowResult]) -> BulkSummary:
        counts = dict.fromkeys(get_args(RowStatus), 0)
        for result in rows:
            counts[result.status] += 1
        named = {status.replace("-", "_"): count for status, count in counts.items()}
        return cls(total=sum(counts.values()), **named)


class BulkResult(BaseModel):
    """Every row's result, in row order, and the counts."""

    model_config = ConfigDict(frozen=True)

    summary: BulkSummary
    rows: tuple[RowResult, ...]

    @property
    def refused(self) -> tuple[RowResult, ...]:
        """The rows that did not start and have no run: suppressed, invalid, failed."""
        return tuple(result for result in self.rows if result.status not in DONE)


def _refused(row: int, status: RowStatus, code: str, reason: str) -> RowResult:
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 1] + "…"
    return RowResult(row=row, status=status, code=code, reason=reason)


def _contact_problems(error: ValidationError) -> str:
    # Locations and messages only: pydantic's messages name the rule, never the input.
    return "contact: " + "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'contact'}: {item['msg']}"
        for item in error.errors()
    )


@dataclass
class _Checker:
    """Checks rows in order, a chunk at a time, in a worker thread."""

    version: PlanVersion
    required: frozenset[str]
    variables: Mapping[str, JsonValue]
    sender: str | None
    max_visits_per_step: int
    contact_ids: ContactIds | None
    suppressions: Suppressions | None
    #: Run id to the row that claimed it first.
    seen: dict[str, int] = field(default_factory=dict)

    def chunk(self, rows: Iterator[ContactRow]) -> list[RowResult | tuple[int, PreparedRun]]:
        checked: list[RowResult | tuple[int, PreparedRun]] = []
        ready: list[tuple[int, PreparedRun]] = []
        for row in itertools.islice(rows, _CHUNK):
            outcome = self._check(row)
            if isinstance(outcome, RowResult):
                checked.append(outcome)
            else:
                ready.append(outcome)
        found: dict[str, Suppression] = {}
        if self.suppressions is not None and ready:
            wanted = (value for _, run in ready for value in reachable(self.version, run.contact))
            found = self.suppressions.suppressions_of(wanted)
        for number, run in ready:
            hit = next((found[v] for v in reachable(self.version, run.contact) if v in found), None)
            if hit is not None:
                what = "phone number" if hit.channel == "phone" else "email address"
                reason = f"the contact's {what} is suppressed ({hit.reason}, from {hit.source})"
                checked.append(_refused(number, "suppressed", "contact-suppressed", reason))
            elif run.run_id in self.seen:
                first = self.seen[run.run_id]
                checked.append(
                    RowResult(
                        row=number,
                        status="duplicate",
                        run_id=run.run_id,
                        code="duplicate-row",
                        reason=f"the same run as row {first}",
                    )
                )
            else:
                self.seen[run.run_id] = number
                checked.append((number, run))
        return checked

    def _check(self, row: ContactRow) -> RowResult | tuple[int, PreparedRun]:
        number = row.row
        if row.problem is not None:
            return _refused(number, "invalid", "invalid-row", row.problem)
        try:
            run = prepare_run(
                self.version,
                contact=row.contact,
                variables={**self.variables, **row.variables},
                run_id=row.run_id,
                sender=self.sender,
                max_visits_per_step=self.max_visits_per_step,
                contact_ids=self.contact_ids,
                required=self.required,
            )
        except ValidationError as exc:
            return _refused(number, "invalid", "invalid-contact", _contact_problems(exc))
        except MissingVariablesError as exc:
            reason = f"missing variables {', '.join(exc.missing)}"
            return _refused(number, "invalid", "missing-variables", reason)
        except RunInputTooLargeError as exc:
            reason = (
                f"the contact and variables take {exc.size:,} bytes as JSON, over {exc.limit:,}"
            )
            return _refused(number, "invalid", "run-input-too-large", reason)
        except RunInputError as exc:
            reason = _INPUT_PROBLEMS.get(exc.field or "", "not something a run can carry")
            return _refused(number, "invalid", "invalid-run-input", reason)
        return number, run


@dataclass
class _Starter:
    """Starts checked rows, retrying what Temporal did not answer; once a row has used up
    its retries, the rows after it are not tried (a re-run starts them)."""

    client: Client
    task_queue: str
    restart_ended: bool
    retries: int
    backoff: float
    gave_up: str | None = None

    async def start(self, number: int, run: PreparedRun) -> RowResult:
        last: RPCError | None = None
        for attempt in range(self.retries + 1):
            if self.gave_up is not None:
                stopped = "not tried" if attempt == 0 else f"stopped after {attempt} tries"
                reason = f"{stopped}: {self.gave_up}"
                return _refused(number, "failed", "temporal-unavailable", reason)
            try:
                await submit_run(
                    self.client, run, task_queue=self.task_queue, reuse_ended=self.restart_ended
                )
            except RunAlreadyStartedError:
                status = await self._conflict(run.run_id)
                return RowResult(row=number, status=status, run_id=run.run_id)
            except TemporalSetupError:
                reason = "the namespace lacks DEE's search attributes: run `dee worker` once"
                return _refused(number, "failed", "temporal-not-ready", reason)
            except RPCError as exc:
                if exc.status not in _TRANSIENT:
                    logger.warning(
                        "row %d: Temporal refused the start (%s)", number, exc.status.name
                    )
                    reason = f"Temporal refused the start ({exc.status.name})"
                    return _refused(number, "failed", "temporal-refused", reason)
                last = exc
                if attempt < self.retries:
                    # Jittered, so that rows that failed together do not retry together.
                    await asyncio.sleep(self.backoff * 2**attempt * random.uniform(0.5, 1.5))
            else:
                return RowResult(row=number, status="started", run_id=run.run_id)
        assert last is not None
        reason = f"Temporal did not answer ({last.status.name}) in {self.retries + 1} tries"
        self.gave_up = self.gave_up or reason
        return _refused(number, "failed", "temporal-unavailable", reason)

    async def _conflict(self, run_id: str) -> RowStatus:
        if self.restart_ended:
            return "already-running"  # Temporal refuses only an active run then
        try:
            description = await self.client.get_workflow_handle(run_id).describe()
        except RPCError:
            return "already-running"  # it exists; whether it still runs is unknown
        running = description.status == WorkflowExecutionStatus.RUNNING
        return "already-running" if running else "already-ended"


async def start_runs(
    client: Client,
    version: PlanVersion,
    rows: Iterable[ContactRow],
    *,
    variables: Mapping[str, JsonValue] | None = None,
    sender: str | None = None,
    task_queue: str = DEFAULT_TASK_QUEUE,
    max_visits_per_step: int = DEFAULT_MAX_VISITS_PER_STEP,
    contact_ids: ContactIds | None = None,
    suppressions: Suppressions | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    restart_ended: bool = False,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 0.5,
    on_result: Callable[[RowResult], None] | None = None,
) -> BulkResult:
    """Start a run of ``version`` for each of ``rows``, ``concurrency`` starts at a time.

    Each row is checked as :func:`~dee.runs.client.start_run` checks one contact, with
    ``variables`` under the row's own, and refused on its own (the others go on).
    ``restart_ended`` starts a contact again whose run has ended (Temporal keeps ended runs
    for the namespace's retention period); off, such rows are ``already-ended``. Starts that
    Temporal does not answer are tried ``retries`` more times, waiting ``backoff`` seconds
    and doubling; after that the row and the ones not yet tried are ``failed``.
    ``on_result`` sees each row's result as it comes (for progress), in no set order; the
    iterable is read from a worker thread.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    if contact_ids is not None:
        await asyncio.to_thread(getattr, contact_ids, "key")  # read once, off the loop
    required = required_variables(version.plan, version.content)
    checker = _Checker(
        version,
        required,
        dict(variables or {}),
        sender,
        max_visits_per_step,
        contact_ids,
        suppressions,
    )
    starter = _Starter(client, task_queue, restart_ended, retries, backoff)
    results: list[RowResult] = []
    queue: asyncio.Queue[tuple[int, PreparedRun] | None] = asyncio.Queue(concurrency * 2)
    source = iter(rows)

    def record(result: RowResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    async def check() -> None:
        while checked := await asyncio.to_thread(checker.chunk, source):
            for item in checked:
                if isinstance(item, RowResult):
                    record(item)
                else:
                    await queue.put(item)
        for _ in range(concurrency):
            await queue.put(None)

    async def start() -> None:
        while (item := await queue.get()) is not None:
            record(await starter.start(*item))

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(check())
            for _ in range(concurrency):
                group.create_task(start())
    except BaseExceptionGroup as failures:
        # One failure (a row source that cannot be read, say) is raised as itself.
        if len(failures.exceptions) == 1:
            raise failures.exceptions[0] from None
        raise
    ordered = tuple(sorted(results, key=lambda result: result.row))
    return BulkResult(summary=BulkSummary.of(ordered), rows=ordered)
