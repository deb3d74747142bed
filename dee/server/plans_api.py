"""The REST API's plans, under ``/v1/plans``, behind bearer API keys (:mod:`dee.server._api`).

::

    POST /v1/plans                              create a version (201; 200 when unchanged)
    GET  /v1/plans                              one summary per plan
    GET  /v1/plans/{plan_id}                    the latest version
    GET  /v1/plans/{plan_id}/versions           every version, oldest first
    GET  /v1/plans/{plan_id}/versions/{version} one version

Bodies and answers use the camelCase names of plan documents; errors are
:class:`~dee.server._http.ErrorBody` JSON with a stable code, and a plan with problems is
refused with every problem at once (:class:`PlanErrorBody`).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
from typing import Annotated, Any

from fastapi import Path, Response
from pydantic import Field

from dee.errors import PlanInvalidError
from dee.plans.content import PlanContent
from dee.plans.loader import plan_from_document
from dee.plans.model import ExecutionPlan
from dee.plans.versions import PlanVersion
from dee.server._api import (
    MAX_VERSION,
    NOT_JSON,
    PLAN_NOT_FOUND,
    ApiAnswer,
    ApiRequest,
    Caller,
    ProblemBody,
    State,
    invalid_plan,
    registry_errors,
    v1_router,
)
from dee.server._http import ErrorBody

__all__ = ["router"]

router = v1_router()

PlanId = Annotated[str, Path(description="The plan's id", min_length=1, max_length=100)]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="A version number")]


# Models ---------------------------------------------------------------------------------


class PlanErrorBody(ErrorBody):
    """An error; ``invalid-plan`` lists every problem of the plan at once."""

    problems: list[ProblemBody] | None = None  # type: ignore[assignment]


class CreatePlanRequest(ApiRequest):
    plan: dict[str, Any] = Field(
        description="A plan document in its camelCase form, as `dee plans show --json` prints"
    )
    content: PlanContent = Field(
        default_factory=PlanContent,
        description="Templates (`{id: {html, text}}`) and scripts (`{id: text}`) it uses",
    )


class PlanCreated(ApiAnswer):
    id: str
    version: int
    digest: str
    #: False when the plan and content equal the latest version, which is answered.
    created: bool


class PlanSummaryBody(ApiAnswer):
    id: str
    name: str
    latest_version: int
    versions: int
    updated_at: datetime.datetime


class VersionSummaryBody(ApiAnswer):
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


def _version_body(stored: PlanVersion) -> PlanVersionBody:
    plan = stored.plan
    return PlanVersionBody(
        id=plan.id,
        version=stored.version,
        name=plan.name,
        digest=stored.digest,
        created_at=stored.created_at,
        created_by=plan.metadata.created_by or "",
        plan=plan,
        content_digests=stored.content.digests(),
    )


# Routes ---------------------------------------------------------------------------------


@router.post(
    "/plans",
    status_code=201,
    response_model=PlanCreated,
    summary="Create a plan version",
    responses={
        **NOT_JSON,
        200: {"model": PlanCreated, "description": "Unchanged: the latest version is answered"},
        422: {"model": PlanErrorBody, "description": "The plan has problems (`invalid-plan`)"},
    },
)
async def create_plan(
    body: CreatePlanRequest, response: Response, state: State, caller: Caller
) -> PlanCreated:
    """Validate the plan against its content and store it as the plan's next version.

    Creating what equals the latest version stores nothing and answers that version with
    200 and `created: false`. A plan with problems is refused with 422 and every problem.
    """
    try:
        plan = plan_from_document(body.plan)
    except PlanInvalidError as exc:
        raise invalid_plan(exc) from exc
    with registry_errors():
        stored = await asyncio.to_thread(
            functools.partial(state.registry.create, created_by=caller), plan, body.content
        )
    if not stored.created:
        response.status_code = 200
    return PlanCreated(
        id=plan.id, version=stored.version, digest=stored.digest, created=stored.created
    )


@router.get("/plans", response_model=list[PlanSummaryBody], summary="List plans")
async def list_plans(state: State) -> list[PlanSummaryBody]:
    """Every plan with its latest version, sorted by id."""
    with registry_errors():
        summaries = await asyncio.to_thread(state.registry.list_plans)
    return [PlanSummaryBody.model_validate(summary.model_dump()) for summary in summaries]


@router.get(
    "/plans/{plan_id}",
    response_model=PlanVersionBody,
    response_model_exclude_none=True,
    summary="Show a plan's latest version",
    responses=PLAN_NOT_FOUND,
)
async def show_plan(plan_id: PlanId, state: State) -> PlanVersionBody:
    with registry_errors():
        stored = await asyncio.to_thread(state.registry.get, plan_id)
    return _version_body(stored)


@router.get(
    "/plans/{plan_id}/versions",
    response_model=list[VersionSummaryBody],
    summary="List a plan's versions",
    responses=PLAN_NOT_FOUND,
)
async def list_versions(plan_id: PlanId, state: State) -> list[VersionSummaryBody]:
    """Every version of the plan, oldest first."""
    with registry_errors():
        versions = await asyncio.to_thread(state.registry.versions, plan_id)
    return [
        VersionSummaryBody(
            version=stored.version,
            name=stored.plan.name,
            digest=stored.digest,
            created_at=stored.created_at,
            created_by=stored.plan.metadata.created_by or "",
        )
        for stored in versions
    ]


@router.get(
    "/plans/{plan_id}/versions/{version}",
    response_model=PlanVersionBody,
    response_model_exclude_none=True,
    summary="Show one version of a plan",
    responses=PLAN_NOT_FOUND,
)
async def show_version(plan_id: PlanId, version: VersionNumber, state: State) -> PlanVersionBody:
    with registry_errors():
        stored = await asyncio.to_thread(state.registry.get, plan_id, version=version)
    return _version_body(stored)
