"""A server killed between a tracking hit's claim and its signal loses no hit.

The real ``dee serve`` in a process of its own, on the Temporal dev server, with DEE's real
worker sending a tracked email to a real SMTP server, on SQLite and on PostgreSQL. The
server kills itself with SIGKILL at a point no client can see
(:mod:`tests.helpers.hooked_server`): right after the shared commit that kept the pixel's
hit and took its key, the moment the GIF has gone to the contact, or just before the signal
leaves. The key is taken and its signal not recorded, so every later fetch of the pixel is
collapsed into it. A new server's sweeper signals it, and the run counts the open exactly
once. Killed the moment it answered, the server had kept the hit: the answer waits for the
commit (:mod:`dee.server.recorder`), so no answered hit is only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dee.plans.registry import PlanRegistry
from dee.runs.client import start_run
from dee.runs.ledger import SendLedger
from dee.server.hits import HitStore, SignalStatus
from dee.settings import Settings
from tests.helpers.plans import email_content
from tests.helpers.smtp import SmtpServer, free_port
from tests.helpers.spec import ROOT
from tests.helpers.temporal import executable, running_worker
from tests.server.test_tracking_routes import (
    HTML,
    SECRET,
    events,
    eventually,
    new_contact,
    signal_count,
    the_email,
    tracked_plan,
)
from tests.workflows.test_faults import settings_env


@contextlib.asynccontextmanager
async def dee_serve(
    env: dict[str, str], port: int, *, log: Path, fault: tuple[str, Path] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``dee serve`` on ``port`` until the block ends, once it answers; with ``fault``, the
    point and signal and the mark file of :mod:`tests.helpers.hooked_server`."""
    command = [str(executable("dee"))]
    if fault is not None:
        command = [sys.executable, "-m", "tests.helpers.hooked_server"]
        env = {**env, "DEE_TEST_FAULT": fault[0], "DEE_TEST_FAULT_MARK": str(fault[1])}
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command,
            "serve",
            "--port",
            str(port),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/docs")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, log.read_text()
                assert time.monotonic() < deadline, "dee serve did not answer"
                await asyncio.sleep(0.1)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("point", ["after-claim", "after-answer", "before-signal"])
async def test_a_hit_whose_server_died_before_signalling_reaches_the_run_once(
    point: str,
    database_url: str,
    dev_env: WorkflowEnvironment,
    task_queue: str,
    smtp: SmtpServer,
    tmp_path: Path,
) -> None:
    client = dev_env.client
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=database_url,
        smtp_url=smtp.url,
        from_address="sales@example.com",
        public_url=public_url,
        secret_key=SECRET,
        task_queue=task_queue,
    )
    env = settings_env(settings, client.service_client.config.target_host)
    mark = tmp_path / "mark"
    with (
        PlanRegistry(database_url) as registry,
        SendLedger(database_url) as ledger,
        HitStore(database_url) as hits,
    ):
        version = registry.create(
            tracked_plan(f"faults-{uuid.uuid4().hex[:8]}"), email_content(HTML)
        )
        async with running_worker(client, task_queue=task_queue, settings=settings, ledger=ledger):
            run_id = await start_run(client, version, contact=new_contact(), task_queue=task_queue)
            pixel, link, _unsubscribe = await the_email(smtp)
            execution = (await client.get_workflow_handle(run_id).describe()).run_id

            def status() -> SignalStatus | None:
                return hits.signal_status(
                    run_id, step_id="intro", visit=1, kind="open", execution=execution
                )

            fault = (f"{point}:KILL", mark)
            async with dee_serve(env, port, log=tmp_path / "first.log", fault=fault) as first:
                async with httpx.AsyncClient(base_url=public_url) as http:
                    try:
                        answer: httpx.Response | None = await http.get(pixel)
                    except httpx.TransportError:
                        answer = None
                assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
            # Positive control: the server died in the window, at this hit...
            if point == "after-answer":
                assert mark.read_text() == "GET /t/o/{token} 200"
            else:
                assert mark.read_text() == f"open:{run_id}:intro:1:{execution}"
            if point == "after-claim":
                assert answer is None
            else:
                # ...after the contact got the pixel...
                assert answer is not None and answer.status_code == 200
                assert answer.content.startswith(b"GIF89a")
            # ...with the hit kept, the key taken and the signal not recorded.
            assert hits_of(database_url, run_id) == ["open"]
            taken = status()
            assert taken is not None and taken.outcome is None
            if point != "after-answer":
                # Neither sent: the fault came first. Killed after the answer, the signal
                # may have left already (Temporal's client sends from a thread of its own).
                assert await signal_count(client, run_id) == 0
                assert await events(client, run_id) == []

            env = {**env, "DEE_TRACKING_SWEEP_AFTER": "1"}
            async with dee_serve(env, port, log=tmp_path / "second.log") as second:
                swept = await eventually(
                    lambda: asyncio.to_thread(status),
                    lambda found: found is not None and found.outcome is not None,
                    timeout=30,
                )
                assert swept is not None and swept.outcome == "signalled"
                async with httpx.AsyncClient(base_url=public_url) as http:
                    # Collapsed into the swept key: no second open.
                    assert (await http.get(pixel)).status_code == 200
                    # The control: a new kind of hit reaches the run after the open.
                    assert (await http.get(link)).status_code == 302
                seen = await eventually(
                    lambda: events(client, run_id),
                    lambda found: any(event.type == "click" for event in found),
                )
                second.send_signal(signal.SIGTERM)
                # The sweeper stops with the server, which ends as it should.
                assert await asyncio.wait_for(second.wait(), 30) == 0
    assert [(event.type, event.step_id, event.execution) for event in seen] == [
        ("open", "intro", execution),
        ("click", "intro", execution),
    ]
    # One signal per key, the open's twice at most (from the dead server and the sweeper),
    # which the run counts once.
    assert await signal_count(client, run_id) in ((2, 3) if point == "after-answer" else (2,))
    assert len([hit for hit in hits_of(database_url, run_id) if hit == "open"]) == 2


def hits_of(database_url: str, run_id: str) -> list[str]:
    with HitStore(database_url) as store:
        return [hit.kind for hit in store.hits(run_id)]
