"""No secret, token or contact address reaches the server's logs: uvicorn's access records
(which hold paths and query strings) are dropped, and DEE logs each request by its route
template instead. A real server on the dev server, requests carrying every kind of secret."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from dee.runs.tracking import open_pixel_url, unsubscribe_url
from dee.settings import Settings
from tests.helpers.db import drop_table
from tests.helpers.logs import TEST_SIDE
from tests.helpers.server import running_server

SECRET = "access-log-signing-secret"
INBOUND = "access-log-inbound-secret"
API_KEY = "access-log-api-key"
EMAIL = "ana.secret-person@example.com"
PHONE = "+15557654321"
RUN_ID = f"plan:{EMAIL}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_logs_hold_no_secret_token_or_address(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'dee.db'}",
        public_url="https://dee.example.com",
        secret_key=SECRET,
        inbound_secret=INBOUND,
        api_keys=(API_KEY,),
    )
    pixel = open_pixel_url(
        settings.public_url, secret=SECRET, run_id=RUN_ID, step_id="intro", visit=1
    ).removeprefix(settings.public_url)
    unsubscribe = unsubscribe_url(
        settings.public_url, secret=SECRET, run_id=RUN_ID, email=EMAIL
    ).removeprefix(settings.public_url)
    reply = EmailMessage()
    reply["From"] = EMAIL
    reply["To"] = "sales@example.com"
    reply["Subject"] = "Re: hello"
    reply.set_content(f"Call me on {PHONE}.")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    caplog.set_level(logging.DEBUG)
    async with running_server(settings, client=dev_env.client) as server:
        # As `dee serve` runs it: uvicorn's access log on (the test helper quiets it).
        uvicorn_access = logging.getLogger("uvicorn.access")
        uvicorn_access.setLevel(logging.INFO)
        # uvicorn's records do not propagate to the root logger: listen on it directly.
        written = _Records()
        uvicorn_access.addHandler(written)
        http = server.http
        assert (await http.get(pixel)).status_code == 200
        assert (await http.get(unsubscribe)).status_code == 200
        inbound = await http.post(
            f"/webhooks/inbound/raw?key={INBOUND}",
            content=bytes(reply),
            headers={"Content-Type": "message/rfc822"},
        )
        assert inbound.status_code == 200, inbound.text
        assert (await http.get(f"/v1/runs/{RUN_ID}", headers=auth)).status_code == 404
        assert (await http.get(f"/v1/suppressions/{PHONE}", headers=auth)).status_code == 404
        assert (await http.get("/t/o/forged.token?key=" + INBOUND)).status_code == 404
    # Every record but the test's own HTTP client's (httpx logs the URLs it fetches).
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    # Positive control: every request was logged, by its route (a pixel's record comes once
    # its background signal is done, so the order is not asserted).
    access = [r.getMessage() for r in caplog.records if r.name == "dee.server.access"]
    assert sorted(line.split()[:3] for line in access) == sorted(
        [
            ["GET", "/t/o/{token}", "200"],
            ["GET", "/u/{token}", "200"],
            ["POST", "/webhooks/inbound/raw", "200"],
            ["GET", "/v1/runs/{run_id}", "404"],
            ["GET", "/v1/suppressions/{value}", "404"],
            ["GET", "/t/o/{token}", "404"],
        ]
    )
    secrets = [SECRET, INBOUND, API_KEY, EMAIL, PHONE, pixel.split("/")[-1]]
    secrets.append(unsubscribe.split("/")[-1])
    leaks = [(secret, line) for line in lines for secret in secrets if secret in line]
    assert leaks == []
    uvicorn_access.removeHandler(written)
    # uvicorn's records, with their paths and query strings, were dropped before any handler.
    assert uvicorn_access.isEnabledFor(logging.INFO)
    assert written.records == []


async def test_a_failed_request_is_logged_by_its_route_not_its_path(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(database_url=database, api_keys=(API_KEY,))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    caplog.set_level(logging.INFO)
    async with running_server(settings, client=dev_env.client) as server:
        # Positive control: the suppression list answers while its table is there.
        assert (
            await server.http.get(f"/v1/suppressions/{EMAIL}", headers=headers)
        ).status_code == 404
        drop_table(database, "suppressions")
        failed = await server.http.get(f"/v1/suppressions/{EMAIL}", headers=headers)
    assert (failed.status_code, failed.json()["code"]) == (503, "storage-unavailable")
    # The server's lines (not the test's HTTP client's, which names the URL).
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith(TEST_SIDE)]
    assert any(line.startswith("request GET /v1/suppressions/{value} failed: ") for line in lines)
    assert [line for line in lines if EMAIL in line] == []
