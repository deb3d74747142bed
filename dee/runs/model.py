"""What a run is made of, shared by the client, the workflow and the activities.

A run is one contact going through one plan version. It starts from a :class:`RunInput`
that carries the whole plan version with its pinned content, so the run continues on the
version it started with whatever is created later; events from the outside world arrive
as :class:`RunEvent` signals; the ``state`` query answers a :class:`RunState`; and the run
ends with a :class:`RunResult` whose ``outcome`` is the end step's outcome, or one of
:data:`FAILED`, :data:`VISIT_LIMIT`, :data:`UNSUBSCRIBED` (set by the engine).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from temporalio.common import SearchAttributeKey

from dee.plans.conditions import EVENT_TYPES, EventTally
from dee.plans.content import PlanContent
from dee.plans.decoding import TolerantModel
from dee.plans.model import EMAIL_PATTERN, ID_PATTERN, PHONE_PATTERN, ExecutionPlan

__all__ = [
    "DEFAULT_TASK_QUEUE",
    "ENGINE",
    "MAX_CARRIED_EVENT_BYTES",
    "MAX_CARRIED_HISTORY",
    "MAX_RUN_EVENTS",
    "FAILED",
    "SEARCH_ATTRIBUTES",
    "Hold",
    "UNSUBSCRIBED",
    "VISIT_LIMIT",
    "WORKFLOW_NAME",
    "CallOutcome",
    "Contact",
    "EventCount",
    "RunEvent",
    "RunFailure",
    "RunInput",
    "RunProgress",
    "RunResult",
    "RunState",
    "StepVisit",
    "default_run_id",
    "event_counts",
    "event_digest",
    "nesting_problem",
    "pack_digests",
    "unpack_digests",
]

#: The workflow's Temporal type name, for plain Temporal clients.
WORKFLOW_NAME: Final = "ExecutionPlanWorkflow"
DEFAULT_TASK_QUEUE: Final = "dee"
#: The signal that delivers a :class:`RunEvent`, and the query that answers a RunState.
EVENT_SIGNAL: Final = "event"
STATE_QUERY: Final = "state"

#: Outcomes the engine sets itself.
FAILED: Final = "failed"
VISIT_LIMIT: Final = "visit-limit"
UNSUBSCRIBED: Final = "unsubscribed"
CANCELLED: Final = "cancelled"

#: Distinct events one run counts over its whole life (across continue-as-new); events past
#: this many are counted as dropped, except an unsubscribe, which always ends the run.
MAX_RUN_EVENTS: Final = 20_000
#: The latest events a run shows in its state and carries across continue-as-new.
MAX_SHOWN_EVENTS: Final = 500
MAX_CARRIED_EVENT_BYTES: Final = 64 * 1024
#: Step visits carried across continue-as-new (counts are always carried in full).
MAX_CARRIED_HISTORY: Final = 200
#: A contact and run variables, as JSON, at most this big (checked by start_run and run).
MAX_CONTACT_AND_VARIABLES_BYTES: Final = 64 * 1024

#: A run id given by hand: a letter or digit, then up to 254 more characters that are not
#: whitespace, control characters or slashes (the default ``<plan>:<contact>`` is one).
RUN_ID_PATTERN: Final = r"^[A-Za-z0-9][^\s\x00-\x1f\x7f/\\]{0,254}$"
#: How deep a contact or the run variables may nest (a list or object in another is 2).
MAX_NESTING: Final = 32

#: How often a run may enter one step before it ends as a runaway (outcome visit-limit).
DEFAULT_MAX_VISITS_PER_STEP: Final = 100

PLAN_ID_ATTRIBUTE: Final = SearchAttributeKey.for_keyword("DeePlanId")
PLAN_VERSION_ATTRIBUTE: Final = SearchAttributeKey.for_int("DeePlanVersion")
CONTACT_ID_ATTRIBUTE: Final = SearchAttributeKey.for_keyword("DeeContactId")
CURRENT_STEP_ATTRIBUTE: Final = SearchAttributeKey.for_keyword("DeeCurrentStep")
OUTCOME_ATTRIBUTE: Final = SearchAttributeKey.for_keyword("DeeOutcome")
#: Every search attribute DEE uses; the worker and ``dee dev`` register them.
SEARCH_ATTRIBUTES: Final = (
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    CONTACT_ID_ATTRIBUTE,
    CURRENT_STEP_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
)


class _Frozen(TolerantModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Contact(BaseModel):
    """The person a run is for. Any other attributes (``firstName``, ``company``, ...) are
    kept as given and visible to templates and conditions as ``contact.<name>``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    # Run ids are "<plan id>:<contact id>": at most 100 + 1 + 150, within Temporal's 255.
    id: Annotated[str, Field(min_length=1, max_length=150, pattern=r"^[^\s:]+$")]
    email: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)] | None = None
    phone: Annotated[str, Field(pattern=PHONE_PATTERN)] | None = None
    timezone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _id_defaults_to_email(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("id") is None and value.get("email"):
            return {**value, "id": value["email"]}
        return value

    def attributes(self) -> dict[str, Any]:
        """Everything templates see as ``contact``."""
        return self.model_dump(mode="json", exclude_none=True)


#: The engine behaviour new runs get (:attr:`RunInput.engine`). 1: ``DeeCurrentStep`` is
#: upserted at every send and wait, and two behaviours are patched (one marker event each).
#: 2: ``DeeCurrentStep`` is set at start to the first step and upserted only where the run
#: waits (sends take milliseconds, and show in the Temporal UI as pending activities while
#: they retry), both patched behaviours are simply on, so no markers: 2 to 4 fewer history
#: events a run. A version in the input rather than a patch marker, since the marker would
#: itself be an event of every run.
#: 3: the timing features (send and call windows, ``exitOn`` with its default of
#: unsubscribe, bounce and complaint, calls that finish when the call does); runs of
#: engines 1 and 2 keep doing what they did when they started (only an unsubscribe ends
#: them early, a call step finishes when the call is placed).
ENGINE: Final = 3

#: A run remembers the ids of the events it has seen as digests this long: 20,000 of them
#: take 160 KB, and the odds that two of them collide are below one in 10^10.
EVENT_DIGEST_BYTES: Final = 8


def event_digest(event_id: str) -> bytes:
    """How a run remembers that it has seen the event ``event_id``."""
    return hashlib.blake2b(event_id.encode(), digest_size=EVENT_DIGEST_BYTES).digest()


def pack_digests(digests: Iterable[bytes]) -> str:
    """:func:`event_digest` values as one base64 string, in a stable order."""
    return base64.b64encode(b"".join(sorted(digests))).decode("ascii")


def unpack_digests(packed: str) -> set[bytes]:
    """The digests :func:`pack_digests` packed."""
    raw = base64.b64decode(packed)
    size = EVENT_DIGEST_BYTES
    return {raw[at : at + size] for at in range(0, len(raw), size)}


def nesting_problem(value: Any, *, path: str, limit: int = MAX_NESTING) -> str | None:
    """Where ``value`` nests deeper than ``limit`` levels of lists and objects (a dotted
    path from ``path``), or ``None``; iterative, so no depth can exhaust the stack."""
    pending: list[tuple[Any, str, int]] = [(value, path, 1)]
    while pending:
        item, where, depth = pending.pop()
        if isinstance(item, dict):
            children = [(child, f"{where}.{key}") for key, child in item.items()]
        elif isinstance(item, list | tuple):
            children = [(child, f"{where}[{index}]") for index, child in enumerate(item)]
        else:
            continue
        if depth > limit:
            return where
        pending.extend((child, child_path, depth + 1) for child, child_path in children)
    return None


def default_run_id(plan_id: str, contact_id: str) -> str:
    """``<plan id>:<contact id>``: one active run per plan and contact."""
    return f"{plan_id}:{contact_id}"


class RunEvent(_Frozen):
    """Something that happened to the contact: a reply, an open, a call outcome, ...

    ``event_id`` identifies the event for de-duplication: a second event with the same id
    is dropped. ``step_id`` is the step it belongs to (the email that was opened), if any.
    ``execution`` is the run execution it belongs to (:attr:`RunState.execution`, carried in
    every token and ledger row): a run id comes back when a contact runs a plan again, and
    an open of the previous run's email must not count in the new run. ``None`` means the
    event names no execution (an API event, a link sent before executions were tracked):
    it counts in whichever execution receives it.
    """

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    type: Annotated[str, Field(min_length=1, max_length=50)]
    step_id: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    at: datetime.datetime
    details: dict[str, JsonValue] = {}
    execution: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _known_type(self) -> RunEvent:
        if self.type not in EVENT_TYPES:
            raise ValueError(
                f"event type {self.type!r} is unknown; expected one of "
                f"{', '.join(sorted(EVENT_TYPES))}"
            )
        return self


class StepVisit(_Frozen):
    """One time the run entered a step, and what came of it."""

    step_id: str
    type: str
    visit: int
    started_at: datetime.datetime
    finished_at: datetime.datetime | None = None
    #: What the step did: ``sent <message-id>``, ``waited 3d 12h``, ``-> warm-follow-up``.
    result: str | None = None


class CallOutcome(_Frozen):
    """How the latest call of one ``sendVoice`` step ended (engine 3 runs; the outcomes
    are :data:`dee.plans.call_outcomes.CALL_OUTCOMES`)."""

    step_id: str
    visit: int
    call_sid: str
    outcome: str
    #: ``callback``: Twilio's final status callback said it; ``fetched``: no callback came
    #: in time and the run asked Twilio.
    source: Literal["callback", "fetched"] = "callback"


class RunFailure(_Frozen):
    step_id: str
    reason: str
    #: The failure's type, such as ``InvalidRecipient`` or ``MissingCredentials``.
    kind: str | None = None


class EventCount(_Frozen):
    """How many distinct events of one type (for one step) the run has counted."""

    type: str
    step_id: str | None = None
    count: Annotated[int, Field(ge=1)]


class RunProgress(_Frozen):
    """What a run carries across continue-as-new, so it never loses its place.

    Everything a branch reads is carried exactly: visit counts, event counts, the ids seen
    for de-duplication and whether the contact unsubscribed. What is only shown (the step
    history and the events themselves) is carried within a budget: the last
    :data:`MAX_CARRIED_HISTORY` visits and the latest events up to
    :data:`MAX_CARRIED_EVENT_BYTES`. Runs that continued as new before a field existed
    carry its default, and their counts are recomputed from ``events``.
    """

    next_step: str
    visits: dict[str, int] = {}
    history: tuple[StepVisit, ...] = ()
    events: tuple[RunEvent, ...] = ()
    started_at: datetime.datetime
    continued: int = 0
    #: The run execution's identity (see :attr:`RunEvent.execution`).
    execution: str | None = None
    #: Exact counts of the distinct events counted so far; ``None``: count ``events``.
    counts: tuple[EventCount, ...] | None = None
    #: The ids of every distinct event received, as 8-byte BLAKE2b digests, base64.
    seen: str | None = None
    #: Events received past :data:`MAX_RUN_EVENTS`: neither counted nor de-duplicated.
    dropped: int = 0
    #: Events that belong to another execution of the same run id: kept, never counted.
    foreign: int = 0
    unsubscribed: bool = False
    #: The outcome an ``exitOn`` event ended the run with (:mod:`dee.plans.exits`), when
    #: one arrived in the execution that continued as new.
    exit: Annotated[str, Field(max_length=64)] | None = None
    #: The day the next send waits for after an out-of-office reply (``pauseOnAutoReply``).
    resume_on: datetime.date | None = None
    #: When the run continued as new during a wait: the moment that wait ends.
    wait_until: datetime.datetime | None = None
    #: The latest call outcome of each sendVoice step (what ``events.callOutcome`` reads).
    calls: tuple[CallOutcome, ...] = ()

    def seen_digests(self) -> set[bytes]:
        """The digests of every event id the run has seen (recomputed from ``events`` for
        progress carried before the ids were)."""
        if self.seen is not None:
            return unpack_digests(self.seen)
        return {event_digest(event.event_id) for event in self.events}

    def tally(self, execution: str | None) -> EventTally:
        """What the run's branches count (recounted from the events of ``execution`` for
        progress carried before the counts were)."""
        if self.counts is None:
            return EventTally(
                (event.type, event.step_id)
                for event in self.events
                if event.execution in (None, execution)
            )
        tally = EventTally()
        for counted in self.counts:
            tally.add(counted.type, counted.step_id, counted.count)
        return tally


def event_counts(tally: EventTally) -> tuple[EventCount, ...]:
    """``tally`` as the counts a run carries and shows."""
    return tuple(
        EventCount(type=event_type, step_id=step_id, count=count)
        for event_type, step_id, count in tally.counts()
    )


class RunInput(_Frozen):
    """Everything a run needs, so it depends on nothing outside itself."""

    plan: ExecutionPlan
    content: PlanContent
    #: The plan version's digest, for the record.
    digest: str
    contact: Contact
    variables: dict[str, JsonValue] = {}
    #: ``From`` for this run's emails; ``DEE_FROM_ADDRESS`` when not given.
    sender: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)] | None = None
    max_visits_per_step: Annotated[int, Field(ge=1)] = DEFAULT_MAX_VISITS_PER_STEP
    #: Set when the run continued as new; ``None`` on a fresh start.
    progress: RunProgress | None = None
    #: How the workflow writes this run's history, where releases changed it (see
    #: :data:`ENGINE`). Absent, as in runs started before it existed: 1. Carried across
    #: continue-as-new, so a run keeps the behaviour it started with.
    engine: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _versioned(self) -> RunInput:
        if self.plan.version is None:
            raise ValueError("a run needs a created plan version (plan.version is not set)")
        return self


class Hold(_Frozen):
    """A send the run holds back until ``until``: its window is closed (engine 3)."""

    step_id: str
    until: datetime.datetime
    #: ``send window of intro-email opens 2026-12-07 09:00 America/New_York``
    reason: str


class RunResult(_Frozen):
    """How a run ended."""

    outcome: str
    #: The end step, or the step where the run failed or stopped.
    step_id: str | None
    failure: RunFailure | None = None
    steps: int
    events: int


class RunState(_Frozen):
    """The answer to the ``state`` query."""

    plan_id: str
    plan_version: int
    contact_id: str
    status: Literal["running", "completed"]
    current_step: str | None
    history: tuple[StepVisit, ...]
    events: tuple[RunEvent, ...]
    outcome: str | None = None
    failure: RunFailure | None = None
    #: The run execution's identity, the same across continue-as-new.
    execution: str | None = None
    #: Distinct events received (``events`` lists at most the latest few hundred).
    event_count: int = 0
    #: What the run's branches count: distinct events of this execution by type and step.
    counts: tuple[EventCount, ...] = ()
    #: Events received past the run's limit, and events of another execution.
    dropped: int = 0
    foreign: int = 0
    #: How often the run continued as new.
    continued: int = 0
    #: The send the run is holding until its window opens, if any.
    holding: Hold | None = None
    #: The latest call outcome of each sendVoice step, in the order the calls ended.
    calls: tuple[CallOutcome, ...] = ()
