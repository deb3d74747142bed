"""Crashes and outages on the dev server: runs never lose their place or send twice.

- the worker process killed with SIGKILL in the middle of runs, and restarted;
- the SMTP server down for a while;
- the Temporal dev server restarted (from its database file) during a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.ledger import SendLedger
from dee.runs.model import SEARCH_ATTRIBUTES, Contact, RunInput, RunResult
from dee.runs.temporal import data_converter
from dee.settings import Settings
from tests.helpers.smtp import Received, RecordingHandler, SmtpServer, free_port, smtp_server
from tests.helpers.temporal import executable, running_worker
from tests.helpers.twilio_api import TwilioApi, twilio_api
from workflows.execution_plan import ExecutionPlanWorkflow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


def two_emails(version_db: str, *, wait_seconds: int) -> PlanVersion:
    plan = dee.execution_plan(
        id="two-emails",
        name="Two emails",
        created_by="tests",
        steps=[
            dee.steps.send_email(id="first", template_id="t", subject="First {{ product }}"),
            dee.steps.wait(id="pause", duration={"seconds": wait_seconds}),
            dee.steps.send_email(id="second", template_id="t", subject="Second {{ product }}"),
            dee.steps.end(id="done", outcome="finished"),
        ],
    )
    content = PlanContent(templates={"t": EmailTemplate(html="<p>Hi {{ contact.firstName }}</p>")})
    with PlanRegistry(version_db) as registry:
        return registry.create(plan, content)


async def start_runs(
    client: Client, version: PlanVersion, task_queue: str, count: int
) -> list[str]:
    ids = []
    for index in range(count):
        contact = Contact.model_validate({"email": f"c{index}@example.com", "firstName": "Ana"})
        handle = await client.start_workflow(
            ExecutionPlanWorkflow.run,
            RunInput(
                plan=version.plan,
                content=version.content,
                digest=version.digest,
                contact=contact,
                variables={"product": "DEE"},
            ),
            id=f"{task_queue}:{contact.id}",
            task_queue=task_queue,
        )
        ids.append(handle.id)
    return ids


async def results(client: Client, ids: list[str], *, timeout: float) -> list[RunResult]:
    async with asyncio.timeout(timeout):
        return list(
            await asyncio.gather(
                *(
                    client.get_workflow_handle_for(ExecutionPlanWorkflow.run, i).result()
                    for i in ids
                )
            )
        )


def deliveries(handler: RecordingHandler) -> Counter[tuple[str, str]]:
    """(recipient, subject) -> how many times the SMTP server accepted it."""
    return Counter(
        (received.rcpt_tos[0], str(received.message["Subject"])) for received in handler.messages
    )


def settings_env(settings: Settings, address: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "DEE_SMTP_URL": settings.smtp_url,
        "DEE_SECRET_KEY": settings.secret_key or "",
        "DEE_PUBLIC_URL": settings.public_url,
        "DEE_TASK_QUEUE": settings.task_queue,
        "DEE_FROM_ADDRESS": settings.from_address,
    }
    if settings.database_url:
        env["DEE_DATABASE_URL"] = settings.database_url
    return env


def settings_for(smtp_url: str, database: str, task_queue: str, twilio: TwilioApi) -> Settings:
    return Settings(
        database_url=database,
        smtp_url=smtp_url,
        from_address="sales@example.com",
        public_url="https://dee.example.com",
        secret_key="fault-secret",
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_api_url=twilio.url,
        task_queue=task_queue,
    )


def worker_process(
    settings: Settings,
    address: str,
    *,
    log: Path | None = None,
    fault: tuple[str, Path] | None = None,
    cli: bool = False,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``worker.py`` in a process of its own; its output goes to ``log`` when given.

    ``fault``: a point and signal, and a file to mark it, for :mod:`tests.helpers.hooked_worker`.
    ``cli``: ``dee worker`` instead (what the image runs). ``extra_env``: more variables.
    """
    command = [sys.executable, str(ROOT / "worker.py")]
    if cli:
        command = [sys.executable, "-m", "dee.cli.main", "worker"]
    env = {**settings_env(settings, address), **(extra_env or {})}
    if fault is not None:
        command = [sys.executable, "-m", "tests.helpers.hooked_worker"]
        env.update(DEE_TEST_FAULT=fault[0], DEE_TEST_FAULT_MARK=str(fault[1]))
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        )


async def test_worker_killed_mid_run_resumes_and_sends_each_email_once(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = two_emails(database, wait_seconds=2)
    settings = settings_for(smtp.url, database, task_queue, twilio)
    address = dev_env.client.service_client.config.target_host
    count = 12
    ids = await start_runs(dev_env.client, version, task_queue, count)
    worker = worker_process(settings, address)
    killed = threading.Event()

    def kill_at_the_third(_received: Received) -> None:
        # In the server, as it takes the third message: at that exact point, with other
        # sends of the same worker in flight (the worker's dot is in, its 250 not yet).
        if len(smtp.handler.messages) == 3 and not killed.is_set():
            worker.send_signal(signal.SIGKILL)
            killed.set()

    smtp.handler.after_accept = kill_at_the_third
    try:
        assert await asyncio.to_thread(killed.wait, 60), "the third email never came"
        assert await asyncio.to_thread(worker.wait, 10) == -signal.SIGKILL
        smtp.handler.after_accept = None
        killed_after = len(smtp.handler.messages)
        worker = worker_process(settings, address)
        finished = await results(dev_env.client, ids, timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert killed_after < 2 * count, "the kill came too late to test anything"
    assert [result.outcome for result in finished] == ["finished"] * count
    assert deliveries(smtp.handler) == Counter(
        {
            (f"c{i}@example.com", subject): 1
            for i in range(count)
            for subject in ("First DEE", "Second DEE")
        }
    )


async def test_smtp_down_for_a_while_then_everything_is_delivered_once(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, twilio: TwilioApi
) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = two_emails(database, wait_seconds=1)
    settings = settings_for(f"smtp://127.0.0.1:{port}", database, task_queue, twilio)
    with SendLedger(database) as ledger:
        async with running_worker(
            dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
        ):
            ids = await start_runs(dev_env.client, version, task_queue, 3)
            # Nothing listens: the sends fail and retry with backoff.
            await asyncio.sleep(4)
            handler = RecordingHandler()
            async with smtp_server(handler, port=port):
                finished = await results(dev_env.client, ids, timeout=90)
    assert [result.outcome for result in finished] == ["finished"] * 3
    assert set(deliveries(handler).values()) == {1} and len(handler.messages) == 6


@asynccontextmanager
async def dev_server(db_file: Path, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`temporal server start-dev` keeping its state in ``db_file``, as `dee dev` runs it."""
    command = [
        str(executable("temporal")),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(db_file),
        "--log-level",
        "error",
    ]
    for key in SEARCH_ATTRIBUTES:
        kind = {1: "Text", 2: "Keyword", 3: "Int"}[int(key.indexed_value_type)]
        command += ["--search-attribute", f"{key.name}={kind}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def connect(port: int) -> Client:
    async with asyncio.timeout(60):
        while True:
            try:
                return await Client.connect(f"127.0.0.1:{port}", data_converter=data_converter)
            except RuntimeError:
                await asyncio.sleep(0.2)


async def test_dev_server_restart_during_a_wait_resumes_the_runs(
    task_queue: str, tmp_path: Path, smtp: SmtpServer, twilio: TwilioApi
) -> None:
    port = free_port()
    db_file = tmp_path / "temporal.db"
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = two_emails(database, wait_seconds=6)
    settings = settings_for(smtp.url, database, task_queue, twilio)
    async with dev_server(db_file, port):
        client = await connect(port)
        ids = await start_runs(client, version, task_queue, 2)
        worker = worker_process(settings, f"127.0.0.1:{port}")
        async with asyncio.timeout(60):
            while len(smtp.handler.messages) < 2:
                await asyncio.sleep(0.05)
        # The server goes away while the runs wait...
    try:
        await asyncio.sleep(1)
        # ...and comes back from its database file.
        async with dev_server(db_file, port):
            client = await connect(port)
            finished = await results(client, ids, timeout=90)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert [result.outcome for result in finished] == ["finished"] * 2
    assert set(deliveries(smtp.handler).values()) == {1} and len(smtp.handler.messages) == 4
