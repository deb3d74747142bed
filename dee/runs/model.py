"""What a run is made of, shared by the client, the workflow and the activities.

A run is one contact going through one plan version. It starts from a :class:`RunInput`
that carries the whole plan version with its pinned content, so the run continues on the
version it started with whatever is created later; events from the outside world arrive
as :class:`RunEvent` signals; the ``state`` query answers a :class:`RunState`; and the run
ends with a :class:`RunResult` whose ``outcome`` is the end step's outcome, or one of
:data:`FAILED`, :data:`VISIT_LIMIT`, :data:`UNSUBSCRIBED` (set by the engine).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from temporalio.common import SearchAttributeKey

from dee.plans.conditions import EVENT_TYPES
from dee.plans.content import PlanContent
from dee.plans.decoding import TolerantModel
from dee.plans.model import EMAIL_PATTERN, ID_PATTERN, PHONE_PATTERN, ExecutionPlan

__all__ = [
    "DEFAULT_TASK_QUEUE",
    "FAILED",
    "SEARCH_ATTRIBUTES",
    "UNSUBSCRIBED",
    "VISIT_LIMIT",
    "WORKFLOW_NAME",
    "Contact",
    "RunEvent",
    "RunFailure",
    "RunInput",
    "RunProgress",
    "RunResult",
    "RunState",
    "StepVisit",
    "default_run_id",
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


def default_run_id(plan_id: str, contact_id: str) -> str:
    """``<plan id>:<contact id>``: one active run per plan and contact."""
    return f"{plan_id}:{contact_id}"


class RunEvent(_Frozen):
    """Something that happened to the contact: a reply, an open, a call outcome, ...

    ``event_id`` identifies the event for de-duplication: a second event with the same id
    is dropped. ``step_id`` is the step it belongs to (the email that was opened), if any.
    """

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    type: Annotated[str, Field(min_length=1, max_length=50)]
    step_id: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    at: datetime.datetime
    details: dict[str, JsonValue] = {}

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


class RunFailure(_Frozen):
    step_id: str
    reason: str
    #: The failure's type, such as ``InvalidRecipient`` or ``MissingCredentials``.
    kind: str | None = None


class RunProgress(_Frozen):
    """What a run carries across continue-as-new, so it never loses its place."""

    next_step: str
    visits: dict[str, int] = {}
    history: tuple[StepVisit, ...] = ()
    events: tuple[RunEvent, ...] = ()
    started_at: datetime.datetime
    continued: int = 0


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

    @model_validator(mode="after")
    def _versioned(self) -> RunInput:
        if self.plan.version is None:
            raise ValueError("a run needs a created plan version (plan.version is not set)")
        return self


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
