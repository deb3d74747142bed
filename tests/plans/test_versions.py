"""Stored versions across releases: read from the canonical text their digest is of.

A later release that adds a field with a default must read every stored version, digest
intact; a version written by a newer release with a field this one does not know is
refused, saying so; rows from before the canonical text was stored are upgraded.

"An older release" is simulated honestly by writing the row it would have written: the
canonical text without ``tracking``, the ``sendEmail`` field DEE has with a default, and
that text's own SHA-256 as the digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select

from dee.errors import RegistryError
from dee.plans.registry import PlanRegistry
from dee.plans.versions import canonical_digest, canonical_meaning, plan_digest
from dee.storage.database import alembic_config, make_engine, plan_versions, resolve_url
from tests.helpers.plans import email_content, email_plan


def rewrite_steps(url: str, change: Any) -> str:
    """Rewrite the only stored version's steps with ``change(step)``, digest and all, as a
    release whose models produce those steps would have written it; the new digest."""
    engine = make_engine(resolve_url(url))
    try:
        with engine.begin() as connection:
            row = connection.execute(select(plan_versions)).one()
            meaning = json.loads(row.canonical)
            meaning["steps"] = [change(step) for step in meaning["steps"]]
            document = json.loads(row.document)
            document["steps"] = meaning["steps"]
            canonical = json.dumps(
                meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            digest = canonical_digest(canonical)
            connection.execute(
                plan_versions.update().values(
                    canonical=canonical, digest=digest, document=json.dumps(document)
                )
            )
    finally:
        engine.dispose()
    return digest


def without_tracking(step: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in step.items() if key != "tracking"}


def test_a_version_from_before_a_field_was_added_loads_with_its_default(
    registry: PlanRegistry, database_url: str
) -> None:
    created = registry.create(email_plan("p1"), email_content())
    assert "tracking" in json.loads(canonical_meaning(created.plan, created.content))["steps"][0]
    digest = rewrite_steps(database_url, without_tracking)

    loaded = registry.get("p1")
    # The digest holds: it is of the stored text, not of what today's models make of it.
    assert loaded.digest == digest
    assert loaded.plan == created.plan and loaded.content == created.content
    # Control: recomputed with today's models (the check before 0008) it would not hold.
    assert plan_digest(loaded.plan, loaded.content) != digest
    # The same plan created again is that version, not a new one.
    again = registry.create(email_plan("p1"), email_content())
    assert (again.version, again.created, again.digest) == (1, False, digest)
    assert [version.version for version in registry.versions("p1")] == [1]


def test_a_version_with_a_field_this_release_does_not_know_is_refused_clearly(
    registry: PlanRegistry, database_url: str
) -> None:
    registry.create(email_plan("p1"), email_content())
    rewrite_steps(database_url, lambda step: {**step, "priority": "high"})

    with pytest.raises(RegistryError, match=r"steps\.0\.sendEmail\.priority.*newer release"):
        registry.get("p1")


def test_a_changed_canonical_text_is_refused(registry: PlanRegistry, database_url: str) -> None:
    created = registry.create(email_plan("p1"), email_content())
    rewrite_steps(database_url, without_tracking)
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.begin() as connection:
            # Back to the old digest: the text no longer matches it.
            connection.execute(plan_versions.update().values(digest=created.digest))
    finally:
        engine.dispose()

    with pytest.raises(RegistryError, match="changed outside DEE"):
        registry.get("p1")


def test_rows_from_before_the_canonical_text_are_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dee.db'}"
    plan, content = email_plan("p1"), email_content()
    engine = make_engine(resolve_url(url))
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0005")
        with engine.begin() as connection:
            # As 0005's registry stored versions: no canonical column yet.
            for version, digest in [(1, plan_digest(plan, content)), (2, "0" * 64)]:
                stored = plan.model_copy(update={"version": version})
                connection.exec_driver_sql(
                    "INSERT INTO plan_versions (plan_id, version, name, digest, document, "
                    "content, content_digests, created_by, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2026-12-01 10:00:00')",
                    (
                        "p1",
                        version,
                        plan.name,
                        digest,
                        json.dumps(stored.to_document()),
                        content.model_dump_json(),
                        json.dumps(content.digests()),
                        "tests",
                    ),
                )
    finally:
        engine.dispose()

    with PlanRegistry(url) as registry:
        first = registry.get("p1", version=1)
        # Version 2's digest was never its content's: it stays as it was, and refused.
        with pytest.raises(RegistryError, match="changed outside DEE"):
            registry.get("p1", version=2)
        with registry._engine.connect() as connection:
            rows = connection.execute(select(plan_versions.c.version, plan_versions.c.canonical))
            canonical = {row.version: row.canonical for row in rows}
    assert first.digest == plan_digest(plan, content) and first.content == content
    assert canonical == {1: canonical_meaning(plan, content), 2: None}
