"""What the registry hands out: a stored version of a plan with its content, and a plan's
summary. Plain models, so the client, the CLI and the workflow's callers can use them
without the database."""

from __future__ import annotations

import datetime
import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from dee.plans.content import PlanContent
from dee.plans.model import ExecutionPlan

__all__ = ["PlanSummary", "PlanVersion", "plan_digest"]


class PlanVersion(BaseModel):
    """One stored version of a plan, with the content it renders."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The plan with ``version`` and ``metadata.created_at`` filled in.
    plan: ExecutionPlan
    content: PlanContent
    #: SHA-256 of what the version means: see :func:`plan_digest`.
    digest: str
    #: True only on what :meth:`PlanRegistry.create` returns when it stored a new version.
    created: bool = Field(default=False, exclude=True)

    @property
    def version(self) -> int:
        assert self.plan.version is not None, "stored plans always have a version"
        return self.plan.version

    @property
    def created_at(self) -> datetime.datetime:
        assert self.plan.metadata.created_at is not None, "stored plans have a created_at"
        return self.plan.metadata.created_at


class PlanSummary(BaseModel):
    """One plan in :meth:`PlanRegistry.list_plans`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    #: The name of the latest version.
    name: str
    latest_version: int
    #: How many versions the plan has.
    versions: int
    #: When the latest version was created.
    updated_at: datetime.datetime


def plan_digest(plan: ExecutionPlan, content: PlanContent) -> str:
    """SHA-256 hex of what a version means: name, steps, transitions, description, content.

    Id, version and the ``createdBy``/``createdAt`` bookkeeping are left out, so creating
    the same plan again, by someone else, does not make a new version.
    """
    document = plan.to_document()
    meaning = {
        "name": document["name"],
        "steps": document["steps"],
        "transitions": document["transitions"],
        "description": document["metadata"].get("description"),
        "content": content.model_dump(mode="json"),
    }
    canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
