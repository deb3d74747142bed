"""``dee serve``'s ``/metrics``: off without keys, behind them otherwise, and counting the
hits, signals and suppressions the server handles; its logs as JSON with no contact in them.

The end-to-end test runs ``dee serve`` as a process of its own with ``DEE_LOG_FORMAT=json``
and a worker in the test's process: a real email with a pixel, a tracked link and an
unsubscribe header, fetched and clicked over HTTP, then the metrics scraped over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.registry import PlanRegistry
from dee.runs.ledger import SendLedger
from dee.settings import Settings
from tests.helpers.server import running_server
from tests.helpers.smtp import free_port, smtp_server
from tests.helpers.temporal import run_result, running_worker
from tests.server.test_e2e_server import emails_to, link
from tests.test_metrics import LABELS, samples

ROOT = Path(__file__).resolve().parents[2]
KEY = "metrics-key-for-tests"
HTML = '<p>Hi {{ contact.firstName }}: <a href="https://example.com/book">book</a></p>'


@pytest.mark.parametrize(
    ("keys", "sent", "status", "code"),
    [
        # No keys configured: the route is off, whatever is sent.
        ((), KEY, 404, "not-found"),
        ((), None, 404, "not-found"),
        # Keys configured: none sent, a wrong one, an API key's place taken by a guess.
        ((KEY,), None, 401, "unauthorized"),
        ((KEY,), "not-the-key", 401, "unauthorized"),
        # The right one, or any of several while they are rotated.
        ((KEY,), KEY, 200, None),
        (("old-key", KEY), KEY, 200, None),
    ],
)
async def test_metrics_need_keys_of_their_own(
    dev_env: WorkflowEnvironment,
    keys: tuple[str, ...],
    sent: str | None,
    status: int,
    code: str | None,
    tmp_path: Path,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'dee.db'}", metrics_keys=keys, api_keys=("api",)
    )
    headers = {"Authorization": f"Bearer {sent}"} if sent else {}
    async with running_server(settings, client=dev_env.client) as server:
        answer = await server.http.get("/metrics", headers=headers)
        # An API key is not a metrics key.
        as_api = await server.http.get("/metrics", headers={"Authorization": "Bearer api"})
    assert answer.status_code == status
    assert as_api.status_code in {401, 404}
    if code is None:
        assert answer.headers["content-type"].startswith("text/plain")
        assert "process_cpu_seconds_total" in answer.text
    else:
        assert answer.json()["code"] == code


async def test_dee_serve_counts_hits_signals_and_suppressions(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    plan = dee.execution_plan(
        id="tracked",
        name="Tracked",
        created_by="tests",
        steps=[
            dee.steps.send_email(
                id="hello",
                template_id="t",
                subject="Hello",
                tracking={"opens": True, "clicks": True},
            ),
            dee.steps.wait(id="pause", duration={"seconds": 60}),
            dee.steps.end(id="done", outcome="finished"),
        ],
    )
    with PlanRegistry(database) as registry:
        version = registry.create(plan, PlanContent(templates={"t": EmailTemplate(html=HTML)}))
    async with smtp_server() as smtp:
        settings = Settings(
            database_url=database,
            smtp_url=smtp.url,
            from_address="sales@example.com",
            public_url=url,
            secret_key="serve-secret",
            task_queue=task_queue,
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DEE_")},
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "DEE_DATABASE_URL": database,
            "DEE_SECRET_KEY": "serve-secret",
            "DEE_PUBLIC_URL": url,
            "DEE_TASK_QUEUE": task_queue,
            "DEE_METRICS_KEYS": KEY,
            "DEE_LOG_FORMAT": "json",
        }
        with log.open("wb") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "dee.cli.main", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                scrape = await _first_scrape(http, server)
                before = samples(scrape)
                with SendLedger(database) as ledger:
                    async with running_worker(
                        dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
                    ):
                        run_id = await dee.start_run(
                            dev_env.client,
                            version,
                            contact={"email": "ana@example.com", "firstName": "Ana"},
                            task_queue=task_queue,
                        )
                        [email] = await emails_to(smtp, "ana@example.com", 1)
                        pixel = link(email, r'<img src="(http://127\.0\.0\.1:\d+/t/o/[^"]+)"')
                        click = link(email, r'href="(http://[^"]+/t/c/[^"]+)"')
                        assert (await http.get(pixel)).status_code == 200
                        assert (await http.get(click)).status_code in {302, 303, 307}
                        unsubscribe = re.search(
                            r"<(http[^>]+/u/[^>]+)>", str(email["List-Unsubscribe"])
                        )
                        assert unsubscribe
                        one_click = await http.post(
                            unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"}
                        )
                        assert one_click.status_code == 200
                        after_text = await _scrape_until_signalled(http)
                        # The unsubscribe ended the run.
                        outcome = (await run_result(dev_env, run_id)).outcome
        finally:
            server.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(server.wait, 60)
    assert status == 0
    assert outcome == "unsubscribed"
    after = samples(after_text)
    for kind in ("open", "click"):
        key = ("dee_tracking_hits_total", (("kind", kind),))
        assert (before.get(key, 0), after[key]) == (0, 1), kind
    # The first hit of a kind takes its key and is signalled to the run at once; the
    # unsubscribe is told to the contact's runs as it is recorded.
    for kind in ("open", "unsubscribe"):
        signalled = ("dee_signals_total", (("outcome", "signalled"), ("type", kind)))
        assert (before.get(signalled, 0), after[signalled]) == (0, 1), kind
    assert after[("dee_suppressions_total", (("channel", "email"), ("reason", "unsubscribe")))] == 1
    for name, labels in after:
        if name.startswith("dee_"):
            assert {key for key, _value in labels} <= LABELS, name
    assert "ana" not in after_text and "example.com" not in after_text

    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    # uvicorn's own lines come through DEE's formatter, and DEE's access log names routes.
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert any(e["message"].startswith("GET /t/o/{token} 200") for e in entries)
    tokens = [pixel.rsplit("/", 1)[1], click.rsplit("/", 1)[1].split("?")[0]]
    secrets = ["ana@example.com", "serve-secret", KEY, *tokens]
    assert [line for line in lines if any(secret in line for secret in secrets)] == []


async def _first_scrape(http: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> str:
    """The first answer of ``/metrics`` once ``dee serve`` is up (bounded: 60 s)."""
    async with asyncio.timeout(60):
        while True:
            assert server.poll() is None, "dee serve exited"
            with contextlib.suppress(httpx.TransportError):
                answer = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
                assert answer.status_code == 200, answer.text
                return answer.text
            await asyncio.sleep(0.1)


async def _scrape_until_signalled(http: httpx.AsyncClient) -> str:
    """A scrape once the open's signal has gone out (it follows the hit's commit), or the
    last one after 60 s."""
    text = ""
    for _ in range(600):
        answer = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        text = answer.text
        if 'dee_signals_total{outcome="signalled",type="open"}' in text:
            break
        await asyncio.sleep(0.1)
    return text
