"""``dee db upgrade`` and ``dee db status`` on SQLite and PostgreSQL, and processes that, with
``DEE_MIGRATE_ON_START=false``, refuse a database at another schema revision instead of
migrating it."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from dee.cli.main import dee
from dee.plans.registry import PlanRegistry
from dee.runs.ledger import SendLedger
from dee.storage.database import alembic_config, make_engine, resolve_url, safe_url
from dee.storage.schema import SchemaVersionError, head_revision
from tests.cli.test_runs import cli_env
from tests.helpers.temporal import executable

#: The revision before this release's newest one: a database an older release left.
OLD = "0009"


def _dee(database_url: str, *args: str, migrate: str | None = None) -> Result:
    env = {"DEE_DATABASE_URL": database_url, "DEE_MIGRATE_ON_START": migrate}
    return CliRunner().invoke(dee, list(args), env=env, catch_exceptions=False)


def _shown(database_url: str) -> str:
    return safe_url(resolve_url(database_url))


def _migrate_to(database_url: str, revision: str) -> None:
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def _stamp(database_url: str, revision: str) -> None:
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_the_release_needs_its_newest_migration() -> None:
    versions = Path(__file__).resolve().parents[2] / "dee/storage/migrations/versions"
    newest = max(path.name for path in versions.glob("0*.py"))
    assert head_revision() == newest.partition("_")[0]
    assert head_revision() > OLD


def test_upgrade_migrates_an_empty_database_once(database_url: str) -> None:
    where, head = _shown(database_url), head_revision()
    before = _dee(database_url, "db", "status")
    assert before.exit_code == 1
    assert before.stdout == f"{where}: no DEE schema, this release needs revision {head}\n"

    first = _dee(database_url, "db", "upgrade")
    assert (first.exit_code, first.stdout) == (
        0,
        f"{where}: upgraded from no DEE schema to revision {head}\n",
    )
    # Idempotent: the second run finds the database there and changes nothing.
    second = _dee(database_url, "db", "upgrade")
    assert (second.exit_code, second.stdout) == (
        0,
        f"{where}: already at revision {head}, nothing to do\n",
    )
    after = _dee(database_url, "db", "status")
    assert (after.exit_code, after.stdout) == (0, f"{where}: at revision {head}, up to date\n")
    # Processes that may not migrate open it, and use it.
    listed = _dee(database_url, "plans", "list", migrate="false")
    assert listed.exit_code == 0, listed.output
    assert "no plans yet" in listed.stderr


def test_a_process_refuses_an_old_schema_until_it_is_upgraded(database_url: str) -> None:
    _migrate_to(database_url, OLD)
    where, head = _shown(database_url), head_revision()
    message = (
        f"the database {where} is at schema revision '{OLD}', this release needs '{head}': "
        "run `dee db upgrade` (with the same DEE_DATABASE_URL), or set "
        "DEE_MIGRATE_ON_START=true to let this process migrate it"
    )
    for store in (PlanRegistry, SendLedger):
        with pytest.raises(SchemaVersionError) as refused:
            store(database_url, migrate=False)
        assert str(refused.value) == message
        assert (refused.value.current, refused.value.required) == (OLD, head)

    listed = _dee(database_url, "plans", "list", migrate="false")
    assert (listed.exit_code, listed.stderr) == (1, f"error: {message}\n")
    status = _dee(database_url, "db", "status")
    assert status.exit_code == 1
    assert status.stdout == f"{where}: revision {OLD}, this release needs revision {head}\n"

    upgraded = _dee(database_url, "db", "upgrade")
    assert upgraded.stdout == f"{where}: upgraded from revision {OLD} to revision {head}\n"
    with PlanRegistry(database_url, migrate=False) as registry:
        assert registry.list_plans() == []


def test_without_the_setting_a_process_migrates_as_before(database_url: str) -> None:
    _migrate_to(database_url, OLD)
    listed = _dee(database_url, "plans", "list")
    assert listed.exit_code == 0, listed.output
    assert _dee(database_url, "db", "status").exit_code == 0


def test_a_database_a_newer_release_migrated_is_refused_and_left_alone(database_url: str) -> None:
    _migrate_to(database_url, "head")
    _stamp(database_url, "9999")
    where = _shown(database_url)
    expected = (
        f"error: the database {where} is at schema revision '9999', which this release does "
        f"not know (it needs '{head_revision()}'): a newer DEE migrated it; run that release "
        "(or newer) here, or restore the database it was upgraded from\n"
    )
    upgraded = _dee(database_url, "db", "upgrade")
    assert (upgraded.exit_code, upgraded.stderr) == (1, expected)
    listed = _dee(database_url, "plans", "list", migrate="false")
    assert (listed.exit_code, listed.stderr) == (1, expected)
    status = _dee(database_url, "db", "status")
    assert status.exit_code == 1


@pytest.mark.parametrize(
    ("value", "migrates"),
    [
        # Unset or empty: migrate, as every release before did.
        (None, True),
        ("", True),
        ("true", True),
        ("1", True),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_migrate_on_start_values(tmp_path: Path, value: str | None, migrates: bool) -> None:
    url = f"sqlite:///{tmp_path / 'dee.db'}"
    result = _dee(url, "plans", "list", migrate=value)
    assert result.exit_code == (0 if migrates else 1), result.output


def test_a_wrong_migrate_on_start_value_is_named(tmp_path: Path) -> None:
    result = _dee(f"sqlite:///{tmp_path / 'dee.db'}", "plans", "list", migrate="sometimes")
    assert (result.exit_code, result.stderr) == (
        1,
        "error: DEE_MIGRATE_ON_START must be true or false, not 'sometimes'\n",
    )


def test_an_unreachable_database_is_named_with_what_to_check() -> None:
    # A port nothing listens on (the discard port), on loopback: refused at once.
    url = "postgresql://dee:secret@127.0.0.1:9/dee"
    result = _dee(url, "db", "upgrade")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: cannot reach the database postgresql+psycopg://dee:***@127.0.0.1:9/dee: "
    )
    assert result.stderr.endswith(
        "check DEE_DATABASE_URL (or --database) and that the server accepts connections\n"
    )
    assert "secret" not in result.output


async def test_the_worker_process_refuses_an_old_schema(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """`dee worker` as a real process, reaching Temporal, stops on an old database with the
    command to run, rather than migrating it from every replica."""
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    _migrate_to(database, OLD)
    env = cli_env(dev_env, tmp_path, database)
    env.update(DEE_SECRET_KEY="test-secret", DEE_MIGRATE_ON_START="false")
    process = await asyncio.create_subprocess_exec(
        executable("dee"),
        "worker",
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, err.decode()
    assert err.decode().endswith(
        f"error: the database {database} is at schema revision '{OLD}', this release needs "
        f"'{head_revision()}': run `dee db upgrade` (with the same DEE_DATABASE_URL), or set "
        "DEE_MIGRATE_ON_START=true to let this process migrate it\n"
    )
    # Nothing was migrated behind the operator's back.
    assert _dee(database, "db", "status").exit_code == 1


def _readme_session() -> list[tuple[str, str]]:
    """The README's ``dee db`` session: each ``$ command`` with the output it shows."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [
        block
        for block in re.findall(r"```text\n(.*?)```", readme, flags=re.DOTALL)
        if "$ dee --database sqlite:///demo.db db upgrade" in block
    ]
    session: list[tuple[str, str]] = []
    for line in block.splitlines(keepends=True):
        if line.startswith("$ "):
            session.append((line[2:].strip(), ""))
        else:
            typed, output = session[-1]
            session[-1] = (typed, output + line)
    return session


def test_the_readme_session_prints_what_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    session = _readme_session()
    assert len(session) == 5
    for line, shown in session:
        words = shlex.split(line)
        env: dict[str, str | None] = {"DEE_DATABASE_URL": None, "DEE_MIGRATE_ON_START": None}
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words[0] == "dee", line
        result = CliRunner().invoke(dee, words[1:], env=env, catch_exceptions=False)
        # The revision is this release's newest, whichever the README was written with.
        assert re.sub(r"\b0\d{3}\b", "REV", result.output) == re.sub(r"\b0\d{3}\b", "REV", shown)
