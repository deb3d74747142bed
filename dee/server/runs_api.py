"""The REST API's runs, under ``/v1``, behind bearer API keys (:mod:`dee.server._api`).

::

    POST /v1/runs                               start a run (201)
    GET  /v1/runs?planId=&limit=                runs, newest first
    GET  /v1/runs/{run_id}                      a run's state
    POST /v1/runs/{run_id}/events               deliver an event (202)
    POST /v1/runs/{run_id}/cancel               cancel (202)
    GET  /v1/runs/{run_id}/hits?limit=          a run's raw tracking hits
    GET  /v1/inbound/unmatched?limit=           inbound messages that matched no run

Bodies and answers use the camelCase names of plan documents; errors are
:class:`~dee.server._http.ErrorBody` JSON with a stable code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

from fastapi import Header, Path, Query
from pydantic import Field, JsonValue, ValidationError, field_validator
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import MissingVariablesError
from dee.plans.conditions import EVENT_TYPES
from dee.plans.model import EMAIL_PATTERN, ID_PATTERN
from dee.runs.client import (
    RunStatus,
    cancel_run,
    list_runs,
    run_state,
    send_event,
    start_run,
)
from dee.runs.contacts import ContactIds
from dee.runs.errors import (
    ContactSuppressedError,
    RunAlreadyStartedError,
    RunInputError,
    RunInputTooLargeError,
    RunUnavailableError,
)
from dee.runs.model import RUN_ID_PATTERN, Contact, RunEvent, RunState
from dee.runs.suppressions import Suppressions
from dee.runs.temporal import TemporalSetupError
from dee.runs.unsubscribe import unsubscribe_run
from dee.server._api import (
    MAX_VERSION,
    NOT_JSON,
    PLAN_NOT_FOUND,
    ApiAnswer,
    ApiRequest,
    Responses,
    State,
    error_response,
    registry_errors,
    v1_router,
)
from dee.server._http import ApiError
from dee.server.hits import HitStore
from dee.server.inbound_store import InboundStore

__all__ = ["router"]

#: Temporal's default limit on workflow ids is 1,000 bytes; DEE's own ids are far shorter.
MAX_RUN_ID: Final = 255

router = v1_router()

RunId = Annotated[str, Path(min_length=1, max_length=MAX_RUN_ID, description="The run's id")]


# Models ---------------------------------------------------------------------------------


def _contact_schema() -> dict[str, Any]:
    schema = Contact.model_json_schema()
    schema.pop("required", None)
    schema["description"] = (
        "The contact: `id` (default: `email`), `email`, `phone`, `timezone`, and any other "
        "attributes the plan's templates and conditions use (`firstName`, ...)."
    )
    return schema


class StartRunRequest(ApiRequest):
    plan_id: Annotated[str, Field(pattern=ID_PATTERN)]
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = Field(
        default=None, description="default: the latest"
    )
    contact: dict[str, Any] = Field(json_schema_extra=_contact_schema())
    variables: dict[str, JsonValue] = Field(
        default_factory=dict, description="Run variables the plan's templates use"
    )
    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN, max_length=MAX_RUN_ID)] | None = Field(
        default=None, description="default: `<planId>:<contact id>`"
    )
    sender: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)] | None = Field(
        default=None, description="`From` of the run's emails; default: DEE_FROM_ADDRESS"
    )

    @field_validator("variables")
    @classmethod
    def _contact_is_reserved(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if "contact" in value:
            raise ValueError("`contact` is reserved: give contact fields in `contact`")
        return value


class RunStarted(ApiAnswer):
    run_id: str


_EVENT_TYPES: list[JsonValue] = [name for name in sorted(EVENT_TYPES)]


class EventRequest(ApiRequest):
    type: str = Field(json_schema_extra={"enum": _EVENT_TYPES})
    step_id: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    event_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="For de-duplication; default: a new UUID"
    )
    details: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"expected one of {', '.join(sorted(EVENT_TYPES))}")
        return value


class EventBody(ApiAnswer):
    event_id: str
    type: str
    step_id: str | None
    at: datetime.datetime
    details: dict[str, JsonValue]
    #: The run execution the event belongs to; ``null`` when it named none.
    execution: str | None = None


class StepVisitBody(ApiAnswer):
    step_id: str
    type: str
    visit: int
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    result: str | None


class FailureBody(ApiAnswer):
    step_id: str
    reason: str
    kind: str | None


class HoldBody(ApiAnswer):
    """A send held until its window opens (engine 3)."""

    step_id: str
    until: datetime.datetime
    reason: str


class EventCountBody(ApiAnswer):
    type: str
    step_id: str | None
    count: int


class CallOutcomeBody(ApiAnswer):
    """How the latest call of one sendVoice step ended (engine 3 runs)."""

    step_id: str
    visit: int
    call_sid: str
    outcome: str
    source: Literal["callback", "fetched"]


class RunStateBody(ApiAnswer):
    run_id: str
    plan_id: str
    plan_version: int
    contact_id: str
    status: Literal["running", "completed"]
    current_step: str | None
    history: list[StepVisitBody]
    events: list[EventBody]
    outcome: str | None
    failure: FailureBody | None
    #: The run execution (the same across continue-as-new; new when the id is reused).
    execution: str | None = None
    #: Distinct events received; ``events`` lists the latest few hundred.
    event_count: int = 0
    #: What the run's branches count: distinct events by type and step.
    counts: list[EventCountBody] = []
    #: Events past the run's limit, and events of another execution (kept, not counted).
    dropped: int = 0
    foreign: int = 0
    continued: int = 0
    #: The send the run holds until its window opens: ``until`` and the reason, which
    #: says when in the contact's zone.
    holding: HoldBody | None = None
    #: The latest call outcome of each sendVoice step (what ``events.callOutcome`` reads).
    calls: list[CallOutcomeBody] = []


class CancelRequested(ApiAnswer):
    run_id: str
    #: The run ends with outcome ``cancelled`` once a worker sees the request.
    cancel_requested: bool = True


class HitBody(ApiAnswer):
    """One fetch of a pixel, click on a link or unsubscribe, as it arrived (kept even when
    it was collapsed into an earlier hit's signal)."""

    id: int
    step_id: str | None
    visit: int | None
    kind: str
    url: str | None
    user_agent: str | None
    at: datetime.datetime


class InboundBody(ApiAnswer):
    """An inbound message that matched no run, kept so that it can be looked at."""

    id: int
    message_id: str | None
    source: str
    received_at: datetime.datetime
    from_domain: str | None
    subject: str | None
    size: int
    raw_kept: bool
    raw_truncated: bool


class RunSummaryBody(ApiAnswer):
    run_id: str
    status: RunStatus
    plan_id: str | None
    plan_version: int | None
    contact_id: str | None
    current_step: str | None
    outcome: str | None
    started_at: datetime.datetime
    closed_at: datetime.datetime | None


_RUN_NOT_FOUND: Responses = {404: error_response("No such run (`run-not-found`)")}
_RUN_CLOSED: Responses = {409: error_response("The run has ended (`run-closed`)")}
_TEMPORAL: Responses = {503: error_response("Temporal, or a worker for the run, does not answer")}


# Errors ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _temporal_errors() -> Iterator[None]:
    """Temporal's own failures as answers; DEE's run errors pass to the app's handlers."""
    try:
        yield
    except RunUnavailableError as exc:
        raise ApiError(503, "run-unavailable", str(exc)) from exc
    except TemporalSetupError as exc:
        raise ApiError(503, "temporal-not-ready", str(exc)) from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ApiError(400, "bad-request", f"Temporal refused: {exc.message}") from exc
        raise ApiError(503, "temporal-unavailable", f"Temporal: {exc.message}") from exc


def _event_body(event: RunEvent) -> EventBody:
    return EventBody.model_validate(event.model_dump())


# Routes ---------------------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=201,
    response_model=RunStarted,
    summary="Start a run",
    responses={
        **NOT_JSON,
        **PLAN_NOT_FOUND,
        409: error_response(
            "The plan and contact already have an active run (`run-already-started`), or "
            "the contact's address or phone, which the plan uses, is suppressed "
            "(`contact-suppressed`)"
        ),
        422: error_response(
            "The contact or variables lack what the plan uses (`missing-variables`), or the "
            "request does not have the expected shape"
        ),
        **_TEMPORAL,
    },
)
async def start(body: StartRunRequest, state: State) -> RunStarted:
    """Start the contact on the plan (its latest version unless `version` is given).

    Refused before anything starts when the contact and variables lack a name the plan's
    templates use, while a run with the same id is active, and when the contact's email
    address (for a plan that sends email) or phone number (for one that calls) is on the
    suppression list (`409 contact-suppressed`; lift it with `DELETE /v1/suppressions/{value}`).
    """
    contacts = await state.store(ContactIds)
    try:
        given = await asyncio.to_thread(contacts.complete, body.contact)
        contact = Contact.model_validate(given)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'contact'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ApiError(422, "invalid-contact", f"contact: {details}") from exc
    with registry_errors():
        stored = await asyncio.to_thread(state.registry.get, body.plan_id, version=body.version)
    suppressions = await state.store(Suppressions)
    try:
        with _temporal_errors():
            run_id = await start_run(
                state.client,
                stored,
                contact=contact,
                variables=body.variables,
                run_id=body.run_id,
                sender=body.sender,
                task_queue=state.settings.task_queue,
                suppressions=suppressions,
            )
    except MissingVariablesError as exc:
        raise ApiError(422, "missing-variables", str(exc)) from exc
    except RunInputTooLargeError as exc:
        raise ApiError(413, "run-input-too-large", str(exc)) from exc
    except RunInputError as exc:
        raise ApiError(422, "invalid-run-input", str(exc)) from exc
    except RunAlreadyStartedError as exc:
        raise ApiError(
            409,
            "run-already-started",
            f"run {exc.run_id!r} is already active: cancel it first "
            f"(POST /v1/runs/{{runId}}/cancel) or give another runId",
        ) from exc
    except ContactSuppressedError as exc:
        raise ApiError(
            409,
            "contact-suppressed",
            f"the contact's {exc.channel} {exc.value} is suppressed (reason {exc.reason}, "
            f"from {exc.source}): no run was started; if the contact agreed to hear from you "
            f"again, lift it with DELETE /v1/suppressions/{exc.value}",
        ) from exc
    return RunStarted(run_id=run_id)


@router.get("/runs", response_model=list[RunSummaryBody], summary="List runs", responses=_TEMPORAL)
async def runs(
    state: State,
    plan_id: Annotated[str | None, Query(alias="planId", max_length=100)] = None,
    contact: Annotated[
        str | None,
        Query(
            max_length=320,
            description="Only this contact's runs: its email address, phone number or id",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunSummaryBody]:
    """Runs, newest first, from Temporal's visibility store (which can lag a second)."""
    contact_ids: tuple[str, ...] = ()
    if contact is not None:
        contacts = await state.store(ContactIds)
        contact_ids = await asyncio.to_thread(contacts.lookup, contact)
    with _temporal_errors():
        summaries = await list_runs(
            state.client, plan_id=plan_id, contact_ids=contact_ids, limit=limit
        )
    return [RunSummaryBody.model_validate(summary.model_dump()) for summary in summaries]


@router.get(
    "/runs/{run_id}",
    response_model=RunStateBody,
    summary="Show a run",
    responses={**_RUN_NOT_FOUND, **_TEMPORAL},
)
async def show_run(run_id: RunId, state: State) -> RunStateBody:
    """The run's current step, the steps it took, its events, and its outcome once ended."""
    with _temporal_errors():
        found: RunState = await run_state(state.client, run_id)
    return RunStateBody.model_validate({"run_id": run_id, **found.model_dump()})


@router.post(
    "/runs/{run_id}/events",
    status_code=202,
    response_model=EventBody,
    summary="Deliver an event to a run",
    responses={**NOT_JSON, **_RUN_NOT_FOUND, **_RUN_CLOSED, **_TEMPORAL},
)
async def post_event(
    run_id: RunId,
    body: EventRequest,
    state: State,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="The event's id when the body has no `eventId`: a retried request "
            "with the same key is one event",
        ),
    ] = None,
) -> EventBody:
    """Deliver a reply, open, click, ... to the run; a second event with the same
    `eventId` (or `Idempotency-Key` header) is ignored by the run. Without either, each
    request is a new event, retries included.

    An `unsubscribe` also puts the run's contact (its email address and phone number) on
    the suppression list (source `api`) and ends every running run of the contact."""
    if body.event_id and idempotency_key and body.event_id != idempotency_key:
        raise ApiError(
            422,
            "conflicting-event-id",
            "the body's eventId and the Idempotency-Key header differ: send one, or the same",
        )
    with _temporal_errors():
        event = await send_event(
            state.client,
            run_id,
            type=body.type,
            step_id=body.step_id,
            event_id=body.event_id or idempotency_key,
            details=body.details,
        )
        if body.type == "unsubscribe":
            suppressions = await state.store(Suppressions)
            contacts = await state.store(ContactIds)
            await unsubscribe_run(
                state.client, suppressions, run_id, source="api", contacts=contacts
            )
    return _event_body(event)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=CancelRequested,
    summary="Cancel a run",
    responses={**_RUN_NOT_FOUND, **_RUN_CLOSED, **_TEMPORAL},
)
async def cancel(run_id: RunId, state: State) -> CancelRequested:
    """Ask the run to stop; it ends with outcome `cancelled` once a worker sees it."""
    with _temporal_errors():
        await cancel_run(state.client, run_id)
    return CancelRequested(run_id=run_id)


@router.get(
    "/runs/{run_id}/hits",
    response_model=list[HitBody],
    summary="A run's raw tracking hits",
)
async def run_hits(
    run_id: RunId,
    state: State,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
) -> list[HitBody]:
    """Every pixel fetch, link click and unsubscribe of the run's emails, oldest first,
    with the user agent and time of each: also those collapsed into an earlier signal."""
    store = await state.store(HitStore)
    hits = await asyncio.to_thread(store.hits, run_id, limit=limit)
    return [HitBody.model_validate(hit, from_attributes=True) for hit in hits]


@router.get(
    "/inbound/unmatched",
    response_model=list[InboundBody],
    summary="Inbound messages that matched no run",
)
async def unmatched_inbound(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> list[InboundBody]:
    """Replies and other inbound messages DEE could not tie to a run, newest first."""
    store = await state.store(InboundStore)
    records = await asyncio.to_thread(store.unmatched, limit=limit)
    return [InboundBody.model_validate(record, from_attributes=True) for record in records]
