"""DEE_DATABASE_POOL_SIZE and DEE_DATABASE_MAX_OVERFLOW bound the PostgreSQL connections of
each store, the numbers the README's sizing against ``max_connections`` is made of."""

from __future__ import annotations

import time

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dee.cli.main import dee
from dee.errors import RegistryError
from dee.plans.registry import PlanRegistry
from dee.runs.ledger import SendLedger
from dee.settings import Settings
from dee.storage.database import make_engine, resolve_url
from tests.helpers import db


def _connections(database_url: str) -> int:
    plain = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    name = make_url(database_url).database
    with psycopg.connect(plain, autocommit=True, connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_a_store_opens_no_more_than_pool_size_plus_overflow(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEE_DATABASE_POOL_SIZE", "1")
    monkeypatch.setenv("DEE_DATABASE_MAX_OVERFLOW", "1")
    engine = make_engine(resolve_url(postgres_database_url), timeout=1)
    try:
        with engine.connect() as first, engine.connect() as second:
            assert (
                first.execute(text("SELECT 1")).scalar()
                == second.execute(text("SELECT 1")).scalar()
            )
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                engine.connect()
            # It waited for a connection to come back, then gave up.
            assert time.monotonic() - started >= 0.9
        # The overflow connection is closed when it comes back; the pool keeps one.
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_open_stores_hold_one_connection_each_when_idle(postgres_server_url: str) -> None:
    # What the README's sizing starts from: the worker's ledger holds two (its own pool and
    # the bounded one of email commits), each store of the API one. A database of its own,
    # so that no other test's connections come and go while it counts.
    url = db.create_postgres_database(postgres_server_url)
    try:
        assert _connections(url) == 0
        with SendLedger(url):
            assert _connections(url) == 2
            with PlanRegistry(url):
                assert _connections(url) == 3
        assert _connections(url) == 0
    finally:
        db.drop_postgres_database(postgres_server_url, url)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (5, 10)),
        ({"DEE_DATABASE_POOL_SIZE": "2", "DEE_DATABASE_MAX_OVERFLOW": "0"}, (2, 0)),
    ],
)
def test_settings(env: dict[str, str], expected: tuple[int, int]) -> None:
    settings = Settings.from_env(env)
    assert (settings.database_pool_size, settings.database_max_overflow) == expected


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("name", "value", "least"),
    [
        ("DEE_DATABASE_POOL_SIZE", "0", 1),
        ("DEE_DATABASE_POOL_SIZE", "many", 1),
        ("DEE_DATABASE_MAX_OVERFLOW", "-1", 0),
    ],
)
def test_wrong_values_are_named(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch, name: str, value: str, least: int
) -> None:
    message = f"{name} must be a whole number of {least} or more, not {value!r}"
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: value})
    monkeypatch.setenv(name, value)
    with pytest.raises(RegistryError, match=message):
        PlanRegistry(postgres_database_url)
    result = CliRunner().invoke(dee, ["--database", postgres_database_url, "db", "upgrade"])
    assert (result.exit_code, result.stderr) == (1, f"error: {message}\n")
