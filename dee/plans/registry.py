"""The plan registry: immutable, numbered versions of plans, each with its own content.

Creating a plan whose id is new makes version 1; creating it again with a changed plan or
changed content makes version 2, 3, ...; creating it again unchanged returns the version
that already exists. A version stores the exact templates and scripts it references, with
their SHA-256s, so a run renders what was validated whatever happens to the files later.

A version is stored as the canonical text of what it means
(:func:`dee.plans.versions.canonical_meaning`) with that text's SHA-256, and is read back
by checking the text against the digest and then parsing it with today's models: a field
added by a later release, with a default, reads as its default; a field this release does
not know (a version written by a newer one) is refused with a message saying so.

Storage is SQLite by default (``.dee/dee.db`` in the working folder) or PostgreSQL when
``DEE_DATABASE_URL`` is a ``postgresql://`` URL. Opening a registry upgrades the schema.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import random
import time
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row, func, insert, select
from sqlalchemy.exc import IntegrityError

from dee.errors import PlanNotFoundError, PlanValidationError, RegistryError
from dee.plans.content import PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.validation import DEFAULT_MAX_STEPS, validate_plan
from dee.plans.versions import (
    PlanSummary,
    PlanVersion,
    canonical_digest,
    canonical_meaning,
    plan_digest,
)
from dee.storage.database import (
    as_utc,
    make_engine,
    migrate,
    plan_versions,
    resolve_url,
    write_transaction,
)
from dee.storage.store import Store, database_errors

__all__ = ["PlanRegistry", "upgrade_database"]

logger = logging.getLogger(__name__)

#: How many times create() retries after losing a race for the next version number.
MAX_CREATE_ATTEMPTS = 50


#: The longest ``createdBy`` (the database column's size).
MAX_CREATED_BY = 200


def upgrade_database(url: str | None = None) -> None:
    """Bring the database at ``url`` (default as for :class:`PlanRegistry`) to the newest
    schema. Opening a registry does this too; this is for ``dee db upgrade``."""
    engine = make_engine(resolve_url(url))
    try:
        migrate(engine)
    finally:
        engine.dispose()


class PlanRegistry(Store):
    """Versioned plans in a database; safe to share between threads and processes.

    ``url`` is ``sqlite:///path/to/file.db`` or ``postgresql://user@host/db``; ``None``
    means ``$DEE_DATABASE_URL``, else ``sqlite:///.dee/dee.db`` under the working folder.
    """

    label = "plan database"
    error = RegistryError

    @database_errors
    def create(
        self,
        plan: ExecutionPlan,
        content: PlanContent | None = None,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        created_by: str | None = None,
    ) -> PlanVersion:
        """Store ``plan`` with ``content`` as its next version, or return the latest version
        when that one has the same digest (then ``created`` is ``False``).

        The version's ``createdBy`` is the plan's own when it names one, else
        ``created_by`` (the caller: the API key's name, ``--created-by``), else the OS user.

        Only the latest version is compared: creating an older version's plan and content
        again makes a new version, so the latest is always what was created last.

        The plan is validated against ``content`` (no content means no templates or
        scripts): :class:`PlanValidationError` lists every problem and nothing is stored.
        Concurrent creators, in threads or processes, never get the same version number,
        and concurrent creators of identical content get one version between them.
        """
        content = content if content is not None else PlanContent()
        problems = validate_plan(plan, content, max_steps=max_steps)
        if problems:
            raise PlanValidationError(problems, plan_id=plan.id)
        creator = plan.metadata.created_by or created_by or os_user()
        if len(creator) > MAX_CREATED_BY:
            raise RegistryError(
                plan_id=plan.id,
                message=f"createdBy is {len(creator):,} characters; the limit is "
                f"{MAX_CREATED_BY}: name the creator more briefly",
            )
        canonical = canonical_meaning(plan, content)
        digest = canonical_digest(canonical)
        stored_content = content.model_dump_json()
        content_digests = json.dumps(content.digests(), sort_keys=True)
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            try:
                with write_transaction(self._engine) as connection:
                    latest = connection.execute(
                        select(plan_versions)
                        .where(plan_versions.c.plan_id == plan.id)
                        .order_by(plan_versions.c.version.desc())
                        .limit(1)
                    ).first()
                    if latest is not None and self._means(latest, digest):
                        logger.debug(
                            "plan %r is unchanged since version %d", plan.id, latest.version
                        )
                        return self._from_row(latest)
                    number = 1 if latest is None else latest.version + 1
                    created_at = datetime.datetime.now(datetime.UTC)
                    stored = plan.model_copy(
                        update={
                            "version": number,
                            "metadata": plan.metadata.model_copy(
                                update={"created_at": created_at, "created_by": creator}
                            ),
                        }
                    )
                    connection.execute(
                        insert(plan_versions).values(
                            plan_id=plan.id,
                            version=number,
                            name=plan.name,
                            digest=digest,
                            document=json.dumps(stored.to_document(), ensure_ascii=False),
                            content=stored_content,
                            content_digests=content_digests,
                            created_by=creator,
                            created_at=created_at,
                            canonical=canonical,
                        )
                    )
            except IntegrityError:
                # Another creator took this number between our read and our insert (only
                # PostgreSQL gets here; SQLite's write lock queues creators). Read again:
                # the winner may even have stored this very content.
                logger.debug("plan %r: lost the race for a version, retrying", plan.id)
                time.sleep(random.uniform(0, 0.002 * attempt))
                continue
            logger.info("created plan %r version %d (digest %s)", plan.id, number, digest[:12])
            return PlanVersion(plan=stored, content=content, digest=digest, created=True)
        raise RegistryError(
            plan_id=plan.id,
            message=f"plan {plan.id!r}: {MAX_CREATE_ATTEMPTS} attempts to create a version all "
            "collided with concurrent creators; try again",
        )

    @database_errors
    def get(self, plan_id: str, *, version: int | None = None) -> PlanVersion:
        """Version ``version`` of plan ``plan_id``, the latest when ``version`` is ``None``.

        :class:`PlanNotFoundError` when there is no such plan or version.
        """
        query = select(plan_versions).where(plan_versions.c.plan_id == plan_id)
        if version is None:
            query = query.order_by(plan_versions.c.version.desc()).limit(1)
        else:
            query = query.where(plan_versions.c.version == version)
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise PlanNotFoundError(plan_id, version=version)
        return self._from_row(row)

    @database_errors
    def versions(self, plan_id: str) -> list[PlanVersion]:
        """Every version of ``plan_id``, oldest first; :class:`PlanNotFoundError` if none."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(plan_versions)
                .where(plan_versions.c.plan_id == plan_id)
                .order_by(plan_versions.c.version)
            ).all()
        if not rows:
            raise PlanNotFoundError(plan_id)
        return [self._from_row(row) for row in rows]

    @database_errors
    def list_plans(self) -> list[PlanSummary]:
        """One summary per plan, sorted by id."""
        counts = (
            select(
                plan_versions.c.plan_id,
                func.max(plan_versions.c.version).label("latest"),
                func.count().label("versions"),
            )
            .group_by(plan_versions.c.plan_id)
            .subquery()
        )
        query = select(
            plan_versions.c.plan_id,
            plan_versions.c.name,
            plan_versions.c.version,
            plan_versions.c.created_at,
            counts.c.versions,
        ).join(
            counts,
            (plan_versions.c.plan_id == counts.c.plan_id)
            & (plan_versions.c.version == counts.c.latest),
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        summaries = [
            PlanSummary(
                id=row.plan_id,
                name=row.name,
                latest_version=row.version,
                versions=row.versions,
                updated_at=as_utc(row.created_at),
            )
            for row in rows
        ]
        # Sorted here, not in SQL, so the order does not depend on the database's collation.
        return sorted(summaries, key=lambda summary: summary.id)

    def _means(self, row: Row[Any], digest: str) -> bool:
        """Whether stored version ``row`` means what ``digest`` is of: the same digest, or
        the same once read with today's models (a field added since, at its default)."""
        if row.digest == digest:
            return True
        if row.canonical is None:
            return False
        try:
            stored = self._from_row(row)
        except RegistryError:
            return False
        return plan_digest(stored.plan, stored.content) == digest

    def _from_row(self, row: Row[Any]) -> PlanVersion:
        if row.canonical is None:
            return self._from_legacy_row(row)
        # A version is only worth its promise if what comes back is what was validated.
        if canonical_digest(row.canonical) != row.digest:
            raise _changed(row)
        meaning = json.loads(row.canonical)
        metadata = {"createdBy": row.created_by, "createdAt": as_utc(row.created_at)}
        if meaning["description"] is not None:
            metadata["description"] = meaning["description"]
        try:
            plan = ExecutionPlan.model_validate(
                {
                    "id": row.plan_id,
                    "version": row.version,
                    "name": meaning["name"],
                    "steps": meaning["steps"],
                    "transitions": meaning["transitions"],
                    "metadata": metadata,
                }
            )
            content = PlanContent.model_validate(meaning["content"])
        except ValidationError as exc:
            raise _unreadable(row, exc) from exc
        if json.loads(row.content_digests) != content.digests():
            raise _changed(row)
        return PlanVersion(plan=plan, content=content, digest=row.digest)

    def _from_legacy_row(self, row: Row[Any]) -> PlanVersion:
        # A row whose canonical text the upgrade to 0008 could not reproduce: checked, as
        # before 0008, by recomputing its digest with today's models.
        plan = ExecutionPlan.model_validate(json.loads(row.document))
        content = PlanContent.model_validate_json(row.content)
        if (
            json.loads(row.content_digests) != content.digests()
            or plan_digest(plan, content) != row.digest
        ):
            raise _changed(row)
        return PlanVersion(plan=plan, content=content, digest=row.digest)


def os_user() -> str:
    """The OS user's name (a plan's ``createdBy`` when nobody else is named), or
    ``unknown`` where the OS has none to give (a container without a passwd entry)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
    return name[:200] or "unknown"


def _changed(row: Row[Any]) -> RegistryError:
    return RegistryError(
        plan_id=row.plan_id,
        version=row.version,
        message=f"plan {row.plan_id!r} v{row.version} does not match its stored digests: "
        "the database was changed outside DEE; create the plan again",
    )


def _unreadable(row: Row[Any], exc: ValidationError) -> RegistryError:
    unknown = [
        ".".join(str(part) for part in error["loc"])
        for error in exc.errors()
        if error["type"] == "extra_forbidden"
    ]
    where = f"plan {row.plan_id!r} v{row.version}"
    if unknown:
        return RegistryError(
            plan_id=row.plan_id,
            version=row.version,
            message=f"{where} has fields this release of DEE does not know "
            f"({', '.join(unknown)}): a newer release created it; upgrade DEE to read it",
        )
    return RegistryError(
        plan_id=row.plan_id,
        version=row.version,
        message=f"{where} cannot be read by this release of DEE: {exc.error_count()} "
        f"problems, the first: {exc.errors()[0]['msg']}",
    )
