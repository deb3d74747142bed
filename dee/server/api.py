"""The REST API under ``/v1``: plans, runs, events, behind bearer API keys.

::

    POST /v1/plans                              create a version (201; 200 when unchanged)
    GET  /v1/plans                              one summary per plan
    GET  /v1/plans/{plan_id}                    the latest version
    GET  /v1/plans/{plan_id}/versions           every version, oldest first
    GET  /v1/plans/{plan_id}/versions/{version} one version
    POST /v1/runs                               start a run (201)
    GET  /v1/runs?planId=&limit=                runs, newest first
    GET  /v1/runs/{run_id}                      a run's state
    POST /v1/runs/{run_id}/events               deliver an event (202)
    POST /v1/runs/{run_id}/cancel               cancel (202)

Every request needs ``Authorization: Bearer <key>`` with a key from ``DEE_API_KEYS``;
without keys configured the API refuses everything. Bodies and answers use the camelCase
names of plan documents; errors are :class:`~dee.server._http.ErrorBody` JSON with a stable code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import MissingVariablesError, PlanInvalidError, PlanNotFoundError, RegistryError
from dee.plans.conditions import EVENT_TYPES
from dee.plans.content import PlanContent
from dee.plans.loader import plan_from_document
from dee.plans.model import EMAIL_PATTERN, ID_PATTERN, ExecutionPlan
from dee.plans.versions import PlanVersion
from dee.runs.client import (
    RunAlreadyStartedError,
    RunStatus,
    RunUnavailableError,
    cancel_run,
    list_runs,
    run_state,
    send_event,
    start_run,
)
from dee.runs.model import Contact, RunEvent, RunState
from dee.runs.temporal import TemporalSetupError
from dee.server._http import ApiError, ErrorBody
from dee.server.hits import HitStore
from dee.server.inbound import InboundStore
from dee.server.state import ServerState, server_state

__all__ = ["router"]

#: Version numbers are stored as 32-bit integers (PostgreSQL ``integer``).
MAX_VERSION: Final = 2**31 - 1
#: Temporal's default limit on workflow ids is 1,000 bytes; DEE's own ids are far shorter.
MAX_RUN_ID: Final = 255

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `DEE_API_KEYS`, as `Authorization: Bearer <key>`.",
)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    state: Annotated[ServerState, Depends(server_state)],
) -> None:
    """Let the request through only with one of ``settings.api_keys`` as its bearer token."""
    keys = state.settings.api_keys
    if not keys:
        raise _unauthorized(
            "the API has no keys configured: set DEE_API_KEYS (comma-separated) on the server"
        )
    if credentials is None:
        raise _unauthorized("send an API key as `Authorization: Bearer <key>`")
    given = credentials.credentials.encode()
    # Every key is compared, in constant time, so timing tells nothing about which is near.
    matches = [hmac.compare_digest(given, key.encode()) for key in keys]
    if not any(matches):
        raise _unauthorized("the API key is not one of DEE_API_KEYS")


Responses = dict[int | str, dict[str, Any]]

_ERRORS: Responses = {
    401: {"model": ErrorBody, "description": "No API key, or not a known one"},
    422: {"model": ErrorBody, "description": "The request does not have the expected shape"},
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)

State = Annotated[ServerState, Depends(server_state)]
PlanId = Annotated[str, Path(description="The plan's id", min_length=1, max_length=100)]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="A version number")]
RunId = Annotated[str, Path(min_length=1, max_length=MAX_RUN_ID, description="The run's id")]


# Models ---------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, frozen=True
    )


class ProblemBody(_Answer):
    """One thing wrong with a plan; ``stepId`` is null for plan-wide problems."""

    step_id: str | None
    code: str
    message: str
    location: str | None


class PlanErrorBody(ErrorBody):
    """An error; ``invalid-plan`` lists every problem of the plan at once."""

    problems: list[ProblemBody] | None = None  # type: ignore[assignment]


class CreatePlanRequest(_Request):
    plan: dict[str, Any] = Field(
        description="A plan document in its camelCase form, as `dee plans show --json` prints"
    )
    content: PlanContent = Field(
        default_factory=PlanContent,
        description="Templates (`{id: {html, text}}`) and scripts (`{id: text}`) it uses",
    )


class PlanCreated(_Answer):
    id: str
    version: int
    digest: str
    #: False when the plan and content equal the latest version, which is answered.
    created: bool


class PlanSummaryBody(_Answer):
    id: str
    name: str
    latest_version: int
    versions: int
    updated_at: datetime.datetime


class VersionSummaryBody(_Answer):
    version: int
    name: str
    digest: str
    created_at: datetime.datetime
    created_by: str


class PlanVersionBody(VersionSummaryBody):
    id: str
    plan: ExecutionPlan = Field(description="The plan document, with version and createdAt")
    content_digests: dict[str, str] = Field(
        description="SHA-256 of each template and script, keyed like `templates/intro.html`"
    )


def _contact_schema() -> dict[str, Any]:
    schema = Contact.model_json_schema()
    schema.pop("required", None)
    schema["description"] = (
        "The contact: `id` (default: `email`), `email`, `phone`, `timezone`, and any other "
        "attributes the plan's templates and conditions use (`firstName`, ...)."
    )
    return schema


class StartRunRequest(_Request):
    plan_id: Annotated[str, Field(pattern=ID_PATTERN)]
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = Field(
        default=None, description="default: the latest"
    )
    contact: dict[str, Any] = Field(json_schema_extra=_contact_schema())
    variables: dict[str, JsonValue] = Field(
        default_factory=dict, description="Run variables the plan's templates use"
    )
    run_id: Annotated[str, Field(min_length=1, max_length=MAX_RUN_ID)] | None = Field(
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


class RunStarted(_Answer):
    run_id: str


_EVENT_TYPES: list[JsonValue] = [name for name in sorted(EVENT_TYPES)]


class EventRequest(_Request):
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


class EventBody(_Answer):
    event_id: str
    type: str
    step_id: str | None
    at: datetime.datetime
    details: dict[str, JsonValue]


class StepVisitBody(_Answer):
    step_id: str
    type: str
    visit: int
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    result: str | None


class FailureBody(_Answer):
    step_id: str
    reason: str
    kind: str | None


class RunStateBody(_Answer):
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


class CancelRequested(_Answer):
    run_id: str
    #: The run ends with outcome ``cancelled`` once a worker sees the request.
    cancel_requested: bool = True


class HitBody(_Answer):
    """One fetch of a pixel, click on a link or unsubscribe, as it arrived (kept even when
    it was collapsed into an earlier hit's signal)."""

    id: int
    step_id: str | None
    visit: int | None
    kind: str
    url: str | None
    user_agent: str | None
    at: datetime.datetime


class InboundBody(_Answer):
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


class RunSummaryBody(_Answer):
    run_id: str
    status: RunStatus
    plan_id: str | None
    plan_version: int | None
    contact_id: str | None
    current_step: str | None
    outcome: str | None
    started_at: datetime.datetime
    closed_at: datetime.datetime | None


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_PLAN_NOT_FOUND: Responses = {404: _error("No such plan or version (`plan-not-found`)")}
_RUN_NOT_FOUND: Responses = {404: _error("No such run (`run-not-found`)")}
_RUN_CLOSED: Responses = {409: _error("The run has ended (`run-closed`)")}
_BODY: Responses = {400: _error("The body is not JSON text (UTF-8)")}
_TEMPORAL: Responses = {503: _error("Temporal, or a worker for the run, does not answer")}


# Errors ---------------------------------------------------------------------------------


def _invalid_plan(error: PlanInvalidError) -> ApiError:
    problems = [
        ProblemBody(
            step_id=problem.step_id,
            code=problem.code,
            message=problem.message,
            location=problem.location,
        ).model_dump()
        for problem in error.problems
    ]
    count = len(problems)
    return ApiError(
        422,
        "invalid-plan",
        f"the plan has {count} problem{'s' if count != 1 else ''}",
        problems=problems,
    )


@contextlib.contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except PlanNotFoundError as exc:
        raise ApiError(404, "plan-not-found", str(exc)) from exc
    except PlanInvalidError as exc:
        raise _invalid_plan(exc) from exc
    except RegistryError as exc:
        raise ApiError(500, "registry-error", str(exc)) from exc


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


def _version_body(stored: PlanVersion) -> PlanVersionBody:
    plan = stored.plan
    return PlanVersionBody(
        id=plan.id,
        version=stored.version,
        name=plan.name,
        digest=stored.digest,
        created_at=stored.created_at,
        created_by=plan.metadata.created_by,
        plan=plan,
        content_digests=stored.content.digests(),
    )


def _event_body(event: RunEvent) -> EventBody:
    return EventBody.model_validate(event.model_dump())


# Plans ----------------------------------------------------------------------------------


@router.post(
    "/plans",
    status_code=201,
    response_model=PlanCreated,
    summary="Create a plan version",
    responses={
        **_BODY,
        200: {"model": PlanCreated, "description": "Unchanged: the latest version is answered"},
        422: {"model": PlanErrorBody, "description": "The plan has problems (`invalid-plan`)"},
    },
)
async def create_plan(body: CreatePlanRequest, response: Response, state: State) -> PlanCreated:
    """Validate the plan against its content and store it as the plan's next version.

    Creating what equals the latest version stores nothing and answers that version with
    200 and `created: false`. A plan with problems is refused with 422 and every problem.
    """
    try:
        plan = plan_from_document(body.plan)
    except PlanInvalidError as exc:
        raise _invalid_plan(exc) from exc
    with _registry_errors():
        stored = await asyncio.to_thread(state.registry.create, plan, body.content)
    if not stored.created:
        response.status_code = 200
    return PlanCreated(
        id=plan.id, version=stored.version, digest=stored.digest, created=stored.created
    )


@router.get("/plans", response_model=list[PlanSummaryBody], summary="List plans")
async def list_plans(state: State) -> list[PlanSummaryBody]:
    """Every plan with its latest version, sorted by id."""
    with _registry_errors():
        summaries = await asyncio.to_thread(state.registry.list_plans)
    return [PlanSummaryBody.model_validate(summary.model_dump()) for summary in summaries]


@router.get(
    "/plans/{plan_id}",
    response_model=PlanVersionBody,
    response_model_exclude_none=True,
    summary="Show a plan's latest version",
    responses=_PLAN_NOT_FOUND,
)
async def show_plan(plan_id: PlanId, state: State) -> PlanVersionBody:
    with _registry_errors():
        stored = await asyncio.to_thread(state.registry.get, plan_id)
    return _version_body(stored)


@router.get(
    "/plans/{plan_id}/versions",
    response_model=list[VersionSummaryBody],
    summary="List a plan's versions",
    responses=_PLAN_NOT_FOUND,
)
async def list_versions(plan_id: PlanId, state: State) -> list[VersionSummaryBody]:
    """Every version of the plan, oldest first."""
    with _registry_errors():
        versions = await asyncio.to_thread(state.registry.versions, plan_id)
    return [
        VersionSummaryBody(
            version=stored.version,
            name=stored.plan.name,
            digest=stored.digest,
            created_at=stored.created_at,
            created_by=stored.plan.metadata.created_by,
        )
        for stored in versions
    ]


@router.get(
    "/plans/{plan_id}/versions/{version}",
    response_model=PlanVersionBody,
    response_model_exclude_none=True,
    summary="Show one version of a plan",
    responses=_PLAN_NOT_FOUND,
)
async def show_version(plan_id: PlanId, version: VersionNumber, state: State) -> PlanVersionBody:
    with _registry_errors():
        stored = await asyncio.to_thread(state.registry.get, plan_id, version=version)
    return _version_body(stored)


# Runs -----------------------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=201,
    response_model=RunStarted,
    summary="Start a run",
    responses={
        **_BODY,
        **_PLAN_NOT_FOUND,
        409: _error("The plan and contact already have an active run (`run-already-started`)"),
        422: _error(
            "The contact or variables lack what the plan uses (`missing-variables`), or the "
            "request does not have the expected shape"
        ),
        **_TEMPORAL,
    },
)
async def start(body: StartRunRequest, state: State) -> RunStarted:
    """Start the contact on the plan (its latest version unless `version` is given).

    Refused before anything starts when the contact and variables lack a name the plan's
    templates use, and while a run with the same id is active.
    """
    try:
        contact = Contact.model_validate(body.contact)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'contact'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ApiError(422, "invalid-contact", f"contact: {details}") from exc
    with _registry_errors():
        stored = await asyncio.to_thread(state.registry.get, body.plan_id, version=body.version)
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
            )
    except MissingVariablesError as exc:
        raise ApiError(422, "missing-variables", str(exc)) from exc
    except RunAlreadyStartedError as exc:
        raise ApiError(
            409,
            "run-already-started",
            f"run {exc.run_id!r} is already active: cancel it first "
            f"(POST /v1/runs/{{runId}}/cancel) or give another runId",
        ) from exc
    return RunStarted(run_id=run_id)


@router.get("/runs", response_model=list[RunSummaryBody], summary="List runs", responses=_TEMPORAL)
async def runs(
    state: State,
    plan_id: Annotated[str | None, Query(alias="planId", max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunSummaryBody]:
    """Runs, newest first, from Temporal's visibility store (which can lag a second)."""
    with _temporal_errors():
        summaries = await list_runs(state.client, plan_id=plan_id, limit=limit)
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
    responses={**_BODY, **_RUN_NOT_FOUND, **_RUN_CLOSED, **_TEMPORAL},
)
async def post_event(run_id: RunId, body: EventRequest, state: State) -> EventBody:
    """Deliver a reply, open, click, ... to the run; a second event with the same
    `eventId` is ignored by the run."""
    with _temporal_errors():
        event = await send_event(
            state.client,
            run_id,
            type=body.type,
            step_id=body.step_id,
            event_id=body.event_id,
            details=body.details,
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
