"""The plan registry against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing.pool
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Row, func, select, text

from dee.errors import PlanNotFoundError, PlanValidationError, RegistryError
from dee.plans.content import load_content
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion, plan_digest
from dee.storage.database import alembic_config, make_engine, plan_versions, resolve_url
from tests.helpers import db
from tests.helpers.plans import email_content, email_plan, simple_plan


def stored_rows(url: str) -> list[Row[Any]]:
    """The rows as the database holds them, bypassing the registry."""
    engine = make_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    select(plan_versions).order_by(plan_versions.c.plan_id, plan_versions.c.version)
                )
            )
    finally:
        engine.dispose()


def schema_revision(url: str) -> list[str]:
    engine = make_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


# -- creating versions --------------------------------------------------------------------


def test_first_create_makes_version_1(registry: PlanRegistry) -> None:
    plan = simple_plan("p1")
    before = datetime.datetime.now(datetime.UTC)
    version = registry.create(plan)

    assert version.created is True
    assert version.version == 1
    assert version.plan.version == 1
    assert before <= version.created_at <= datetime.datetime.now(datetime.UTC)
    assert version.plan.model_copy(update={"version": None, "metadata": plan.metadata}) == plan
    assert version.digest == plan_digest(plan, version.content)
    # The flag describes one call, not the version: it is not part of the stored form.
    assert "created" not in version.model_dump()


def test_changed_plan_makes_next_version(registry: PlanRegistry) -> None:
    registry.create(simple_plan("p1", hours=1))
    second = registry.create(simple_plan("p1", hours=2))

    assert (second.version, second.created) == (2, True)


def test_unchanged_plan_returns_existing_version(registry: PlanRegistry) -> None:
    first = registry.create(simple_plan("p1"))
    again = registry.create(simple_plan("p1"))

    assert (again.version, again.created) == (1, False)
    assert again.created_at == first.created_at
    assert [v.version for v in registry.versions("p1")] == [1]


def test_changed_content_alone_makes_new_version(registry: PlanRegistry) -> None:
    plan = email_plan("p1")
    registry.create(plan, email_content("<p>Hi</p>"))
    second = registry.create(plan, email_content("<p>Hello</p>"))

    assert (second.version, second.created) == (2, True)
    assert second.content.templates["intro"].html == "<p>Hello</p>"


def test_changed_created_by_alone_is_not_a_new_version(registry: PlanRegistry) -> None:
    registry.create(simple_plan("p1", created_by="alice"))
    again = registry.create(simple_plan("p1", created_by="bob"))

    assert (again.version, again.created) == (1, False)
    assert again.plan.metadata.created_by == "alice"


def test_recreating_an_older_version_makes_a_new_latest(registry: PlanRegistry) -> None:
    first = registry.create(simple_plan("p1", hours=1))
    registry.create(simple_plan("p1", hours=2))
    third = registry.create(simple_plan("p1", hours=1))

    assert (third.version, third.created) == (3, True)
    assert third.digest == first.digest
    assert registry.get("p1").version == 3


@pytest.mark.parametrize(
    ("plan", "content", "max_steps", "codes"),
    [
        # The template the email step needs is not in the content.
        (email_plan("bad"), None, 1000, ["missing-template"]),
        # A zero wait is a structural problem, found without any content.
        (simple_plan("bad", hours=0), None, 1000, ["invalid-duration"]),
        # max_steps reaches validation.
        (simple_plan("bad"), None, 1, ["too-many-steps"]),
    ],
)
def test_invalid_plan_raises_and_stores_nothing(
    registry: PlanRegistry,
    database_url: str,
    plan: ExecutionPlan,
    content: None,
    max_steps: int,
    codes: list[str],
) -> None:
    with pytest.raises(PlanValidationError) as caught:
        registry.create(plan, content, max_steps=max_steps)

    assert caught.value.plan_id == "bad"
    assert caught.value.codes == codes
    assert stored_rows(database_url) == []
    assert registry.list_plans() == []


# -- reading versions ---------------------------------------------------------------------


def test_get_latest_and_specific_version(registry: PlanRegistry) -> None:
    first = registry.create(simple_plan("p1", hours=1))
    second = registry.create(simple_plan("p1", hours=2))

    for got, expected in (
        (registry.get("p1"), second),
        (registry.get("p1", version=1), first),
        (registry.get("p1", version=2), second),
    ):
        assert (got.plan, got.content, got.digest) == (
            expected.plan,
            expected.content,
            expected.digest,
        )
        assert got.created is False


@pytest.mark.parametrize(
    ("plan_id", "version"),
    [
        # No plan of that id.
        ("nope", None),
        # The plan exists, that version does not.
        ("p1", 2),
        # Neither exists.
        ("nope", 1),
    ],
)
def test_get_unknown_raises_plan_not_found(
    registry: PlanRegistry, plan_id: str, version: int | None
) -> None:
    registry.create(simple_plan("p1"))

    with pytest.raises(PlanNotFoundError) as caught:
        registry.get(plan_id, version=version)

    assert (caught.value.plan_id, caught.value.version) == (plan_id, version)


def test_versions_lists_oldest_first(registry: PlanRegistry) -> None:
    for hours in (1, 2, 3):
        registry.create(simple_plan("p1", hours=hours))
    registry.create(simple_plan("other"))

    versions = registry.versions("p1")

    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.plan.steps[0] for v in versions] == [
        simple_plan("p1", hours=h).steps[0] for h in (1, 2, 3)
    ]
    with pytest.raises(PlanNotFoundError) as caught:
        registry.versions("nope")
    assert (caught.value.plan_id, caught.value.version) == ("nope", None)


def test_list_plans_summarises_each_plan_by_id(registry: PlanRegistry) -> None:
    assert registry.list_plans() == []
    registry.create(simple_plan("b", hours=1))
    latest_b = registry.create(simple_plan("b", hours=2))
    only_a = registry.create(email_plan("a"), email_content())

    summaries = registry.list_plans()

    assert [(s.id, s.name, s.latest_version, s.versions) for s in summaries] == [
        ("a", "Email", 1, 1),
        ("b", "Simple", 2, 2),
    ]
    assert [s.updated_at for s in summaries] == [only_a.created_at, latest_b.created_at]


def test_content_is_stored_and_returned_as_validated(
    registry: PlanRegistry, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "content"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "intro.html").write_text("<p>Hi {{ contact.firstName }} ✓</p>")
    (folder / "templates" / "intro.txt").write_text("Hi {{ contact.firstName }}\n")
    plan = email_plan("p1")
    original = load_content(folder, plan)
    first = registry.create(plan, original)

    # Files change after the version was created: the version must not.
    (folder / "templates" / "intro.html").write_text("<p>Changed</p>")
    (folder / "templates" / "intro.txt").unlink()
    changed = load_content(folder, plan)
    second = registry.create(plan, changed)

    got = registry.get("p1", version=1)
    assert got.content == original == first.content
    assert got.content.templates["intro"].text == "Hi {{ contact.firstName }}\n"
    assert got.content.digests() == original.digests()
    assert (second.version, registry.get("p1").content) == (2, changed)
    rows = stored_rows(database_url)
    assert [json.loads(row.content_digests) for row in rows] == [
        original.digests(),
        changed.digests(),
    ]
    assert list(original.digests()) == ["templates/intro.html", "templates/intro.txt"]


def test_content_round_trips_exactly(registry: PlanRegistry) -> None:
    # Line endings, non-ASCII, tabs, trailing blanks and control characters all survive.
    html = "<p>Hi\r\n\t{{ contact.firstName }} ✓ 日本 \u0000\x1b </p>  \n\n"
    created = registry.create(email_plan("p1"), email_content(html))

    got = registry.get("p1")
    assert got.content.templates["intro"].html == html
    assert got.content.digests() == created.content.digests()


def test_tampered_row_is_refused(registry: PlanRegistry, database_url: str) -> None:
    registry.create(email_plan("p1"), email_content("<p>Hi</p>"))
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.begin() as connection:
            # The text the version is read from.
            connection.execute(
                plan_versions.update().values(
                    canonical=func.replace(plan_versions.c.canonical, "<p>Hi</p>", "<p>Other</p>")
                )
            )
    finally:
        engine.dispose()

    with pytest.raises(RegistryError, match="does not match its stored digests"):
        registry.get("p1")


# -- concurrency ----------------------------------------------------------------------------


def _in_threads(registry: PlanRegistry, plans: list[ExecutionPlan]) -> list[PlanVersion]:
    barrier = threading.Barrier(len(plans))

    def create(plan: ExecutionPlan) -> PlanVersion:
        barrier.wait()
        return registry.create(plan)

    with ThreadPoolExecutor(len(plans)) as executor:
        return list(executor.map(create, plans))


def test_threads_creating_different_content_get_distinct_versions(
    registry: PlanRegistry,
) -> None:
    results = _in_threads(registry, [simple_plan("p1", hours=h) for h in range(1, 9)])

    assert sorted(r.version for r in results) == list(range(1, 9))
    assert all(r.created for r in results)
    stored = {v.version: v.plan.steps[0] for v in registry.versions("p1")}
    assert stored == {r.version: r.plan.steps[0] for r in results}


def test_threads_creating_identical_content_get_one_version(registry: PlanRegistry) -> None:
    results = _in_threads(registry, [simple_plan("p1") for _ in range(8)])

    assert [r.version for r in results] == [1] * 8
    assert sum(r.created for r in results) == 1
    assert [v.version for v in registry.versions("p1")] == [1]


def test_processes_creating_different_content_get_distinct_versions(
    registry: PlanRegistry, database_url: str, spawn_pool: multiprocessing.pool.Pool
) -> None:
    start_at = time.time() + 0.3
    results = spawn_pool.starmap(
        db.create_in_process, [(database_url, "p1", h, start_at) for h in range(1, 5)]
    )

    assert sorted(results) == [(1, True), (2, True), (3, True), (4, True)]
    assert [v.version for v in registry.versions("p1")] == [1, 2, 3, 4]


def test_processes_creating_identical_content_get_one_version(
    registry: PlanRegistry, database_url: str, spawn_pool: multiprocessing.pool.Pool
) -> None:
    start_at = time.time() + 0.3
    results = spawn_pool.starmap(
        db.create_in_process, [(database_url, "p1", 1, start_at) for _ in range(4)]
    )

    assert sorted(results) == [(1, False), (1, False), (1, False), (1, True)]
    assert [v.version for v in registry.versions("p1")] == [1]


# -- the database ------------------------------------------------------------------------------


def test_opening_twice_is_idempotent_and_keeps_data(database_url: str) -> None:
    with PlanRegistry(database_url) as first:
        first.create(simple_plan("p1"))
    with PlanRegistry(database_url) as second:
        assert second.get("p1").version == 1

    assert schema_revision(database_url) == [head_revision()]


def test_processes_migrating_a_new_database_at_once_both_succeed(
    database_url: str, spawn_pool: multiprocessing.pool.Pool
) -> None:
    start_at = time.time() + 0.3
    results = spawn_pool.starmap(db.upgrade_in_process, [(database_url, start_at)] * 2)

    assert results == [None, None]
    assert schema_revision(database_url) == [head_revision()]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # The psycopg 3 driver is chosen for both spellings of PostgreSQL.
        ("postgresql://u@h:5432/d", "postgresql+psycopg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        # SQLite file URLs are taken as they are.
        ("sqlite:////tmp/x/dee.db", "sqlite:////tmp/x/dee.db"),
    ],
)
def test_resolve_url(url: str, expected: str) -> None:
    assert resolve_url(url).render_as_string(hide_password=False) == expected


def test_default_database_is_a_file_under_dot_dee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEE_DATABASE_URL", raising=False)
    with PlanRegistry() as registry:
        registry.create(simple_plan("p1"))

    assert (tmp_path / ".dee" / "dee.db").is_file()


def test_database_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEE_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    with PlanRegistry():
        pass

    assert (tmp_path / "env.db").is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # A backend DEE does not support.
        ("mysql://u@h/d", "unsupported database 'mysql://u@h/d'"),
        # Not a URL at all.
        ("not a url", "cannot parse database URL"),
        # A SQLite file in a folder that does not exist.
        ("sqlite:////proc/dee-test/dee.db", "cannot open the plan database"),
    ],
)
def test_bad_database_url_raises_registry_error(url: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        PlanRegistry(url)


def test_a_database_failing_mid_call_is_a_registry_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dee.db'}"
    with PlanRegistry(url) as registry:
        registry.create(simple_plan("p"))
        engine = make_engine(resolve_url(url))
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE plan_versions"))
        engine.dispose()
        for call in (lambda: registry.get("p"), registry.list_plans):
            with pytest.raises(
                RegistryError, match=r"dee\.db failed: no such table: plan_versions"
            ):
                call()


def test_content_keeps_the_files_line_endings(registry: PlanRegistry, tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "intro.html").write_bytes(b"<p>Hi</p>\r\n<p>there</p>\r\n")
    plan = email_plan("crlf")
    stored = registry.create(plan, load_content(tmp_path, plan))
    assert registry.get("crlf").content.templates["intro"].html == "<p>Hi</p>\r\n<p>there</p>\r\n"
    assert stored.content.digests()["templates/intro.html"] == (
        hashlib.sha256(b"<p>Hi</p>\r\n<p>there</p>\r\n").hexdigest()
    )
