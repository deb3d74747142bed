"""What the registry hands out: a stored version of a plan with its content, and a plan's
summary. Plain models, so the client, the CLI and the workflow's callers can use them
without the database."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from dee.plans.content import PlanContent
from dee.plans.model import ExecutionPlan

__all__ = [
    "BOOKKEEPING",
    "PlanSummary",
    "PlanVersion",
    "canonical_digest",
    "canonical_meaning",
    "plan_digest",
]


#: The fields of a plan document that are not part of what a version means.
BOOKKEEPING: Final = frozenset({"id", "version", "metadata"})


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


def canonical_meaning(plan: ExecutionPlan, content: PlanContent) -> str:
    """What a version means, as canonical JSON (sorted keys, no spaces, UTF-8 as is): name,
    steps, transitions, description, content, and every other field of the plan that its
    document has (``exitOn``, ``pauseOnAutoReply``, ``schedule``: each left out of the
    document while unset or at its default, so versions stored before a field existed keep
    their digests).

    Id, version and the ``createdBy``/``createdAt`` bookkeeping are left out, so creating
    the same plan again, by someone else, does not make a new version. The registry stores
    this text with each version and its digest is :func:`plan_digest`: a later release
    reads the version back from these exact bytes, whatever its models add since.
    """
    document = plan.to_document()
    meaning = {key: value for key, value in document.items() if key not in BOOKKEEPING}
    meaning["description"] = document["metadata"].get("description")
    meaning["content"] = content.model_dump(mode="json")
    return json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_digest(canonical: str) -> str:
    """SHA-256 hex of a version's stored canonical text (its UTF-8 bytes)."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def plan_digest(plan: ExecutionPlan, content: PlanContent) -> str:
    """SHA-256 hex of what a version means: of :func:`canonical_meaning`."""
    return canonical_digest(canonical_meaning(plan, content))
