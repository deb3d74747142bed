"""Workers frozen or killed at exact points of a send: the contact gets exactly one email.

A worker frozen mid-send while another takes the retry sends nothing once it thaws.

Two real workers share one task queue: worker A, a ``worker.py`` process, and worker B, in
the test's process. The test's SMTP server freezes A with SIGSTOP at a chosen point of the
send (the point is the server's own: no timing guess). Past the 10-second heartbeat
timeout Temporal retries the send on B, which takes the send over in the ledger and sends
it. Then A is thawed: it either notices it was cancelled or reaches the commit before the
final dot, finds the send taken over, and ends DATA without the dot. Either way the
contact gets exactly one email. The same with SIGKILL at each point: after the claim and
after RCPT nothing reached the server and B sends; after the final dot the server has the
message, the ledger recorded it before the dot, and B finds it sent.

Between the commit and the dot (a point only the worker sees: :mod:`tests.helpers.hooked_worker`
places the signal there): frozen, the email is held back until A thaws and writes its dot,
B having found it recorded; killed, it is lost, the one window the README names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.ledger import SendLedger
from dee.runs.model import RunResult
from dee.settings import Settings
from tests.helpers.smtp import RecordingHandler, smtp_server
from tests.helpers.temporal import running_worker
from tests.helpers.twilio_api import twilio_api
from tests.workflows.test_faults import settings_for, worker_process


class FreezingHandler(RecordingHandler):
    """Sends process ``pid`` ``signum`` (SIGSTOP: freeze) the first time a client reaches
    ``point``: after its claim (EHLO), after RCPT, or after the final dot (before the
    server answers it)."""

    def __init__(self, point: str, signum: int = signal.SIGSTOP) -> None:
        super().__init__()
        self.point = point
        self.signum = signum
        self.pid: int | None = None
        self.frozen = threading.Event()

    def _freeze(self, point: str) -> None:
        if point == self.point and self.pid is not None and not self.frozen.is_set():
            os.kill(self.pid, self.signum)
            self.frozen.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._freeze("after-dot")
        return await super().handle_DATA(server, session, envelope)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # The first thing a send does after its ledger claim is to connect and say EHLO.
        session.host_name = hostname
        self._freeze("after-claim")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        self._freeze("after-rcpt")
        return reply


@pytest.mark.parametrize("point", ["after-claim", "after-rcpt"])
async def test_a_thawed_worker_does_not_send_a_second_copy(
    point: str,
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="temporalio.activity")
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = _one_email(database)
    handler = FreezingHandler(point)
    log = tmp_path / "worker-a.log"
    with twilio_api() as twilio:
        async with smtp_server(handler) as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            worker_a = worker_process(settings, address, log=log)
            handler.pid = worker_a.pid
            try:
                run_id = await _start(dev_env, version, task_queue)
                assert await asyncio.to_thread(handler.frozen.wait, 60), "A never got there"
                with SendLedger(database) as ledger:
                    async with running_worker(
                        dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
                    ):
                        handle = dev_env.client.get_workflow_handle(run_id, result_type=RunResult)
                        async with asyncio.timeout(90):
                            result = await handle.result()
                        # Positive control: B took the send over from A, and sent it.
                        assert result.outcome == "finished"
                        assert len(handler.messages) == 1
                        assert "this attempt takes it over" in caplog.text
                        os.kill(worker_a.pid, signal.SIGCONT)
                        # A wakes up and finishes its attempt one way or the other.
                        async with asyncio.timeout(30):
                            while not _attempt_ended(log.read_text(errors="replace")):
                                await asyncio.sleep(0.1)
                        await asyncio.sleep(1)
            finally:
                os.kill(worker_a.pid, signal.SIGCONT)
                worker_a.terminate()
                worker_a.wait(timeout=30)
    assert [received.rcpt_tos for received in handler.messages] == [("ana@example.com",)]


@pytest.mark.parametrize("point", ["after-claim", "after-rcpt", "after-dot"])
async def test_a_worker_killed_mid_send_leaves_exactly_one_email(
    point: str, dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = _one_email(database)
    handler = FreezingHandler(point, signal.SIGKILL)
    with twilio_api() as twilio:
        async with smtp_server(handler) as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            worker_a = worker_process(settings, address, log=tmp_path / "worker-a.log")
            handler.pid = worker_a.pid
            try:
                run_id = await _start(dev_env, version, task_queue)
                assert await asyncio.to_thread(handler.frozen.wait, 60), "A never got there"
                # Positive control: the kill landed.
                assert await asyncio.to_thread(worker_a.wait, 10) == -signal.SIGKILL
                result = await _finish_on_b(dev_env, run_id, settings)
            finally:
                if worker_a.poll() is None:
                    worker_a.kill()
                    worker_a.wait(timeout=30)
    assert result.outcome == "finished"
    assert [received.rcpt_tos for received in handler.messages] == [("ana@example.com",)]


async def test_a_worker_frozen_between_commit_and_dot_delivers_the_email_when_it_thaws(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = _one_email(database)
    mark = tmp_path / "fault"
    with twilio_api() as twilio:
        async with smtp_server() as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            fault = ("after-commit:STOP", mark)
            worker_a = worker_process(settings, address, log=tmp_path / "a.log", fault=fault)
            try:
                run_id = await _start(dev_env, version, task_queue)
                await _signalled(worker_a.pid, mark, state="T")
                # A recorded the send and froze with the body at the server, no dot.
                assert _status(database, mark.read_text()) == "sent"
                result = await _finish_on_b(dev_env, run_id, settings)
                # B's retry found the send recorded and sent nothing: while A is frozen the
                # contact has no email yet, and the run has moved on.
                assert result.outcome == "finished"
                assert smtp.handler.messages == []
                os.kill(worker_a.pid, signal.SIGCONT)
                # A's next write is the dot: the server takes the message it already had.
                async with asyncio.timeout(30):
                    while not smtp.handler.messages:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1)
            finally:
                os.kill(worker_a.pid, signal.SIGCONT)
                worker_a.terminate()
                worker_a.wait(timeout=30)
    assert [received.rcpt_tos for received in smtp.handler.messages] == [("ana@example.com",)]


async def test_a_worker_killed_between_commit_and_dot_loses_the_email(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    # The known loss window, asserted so that it stays what the README says it is: the
    # ledger says sent, the server discarded the body without its dot, and no retry sends.
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = _one_email(database)
    mark = tmp_path / "fault"
    with twilio_api() as twilio:
        async with smtp_server() as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            fault = ("after-commit:KILL", mark)
            worker_a = worker_process(settings, address, log=tmp_path / "a.log", fault=fault)
            try:
                run_id = await _start(dev_env, version, task_queue)
                assert await asyncio.to_thread(worker_a.wait, 60) == -signal.SIGKILL
                # Positive control: the kill came from the hook, after the commit.
                assert mark.exists()
                result = await _finish_on_b(dev_env, run_id, settings)
                await asyncio.sleep(1)
            finally:
                if worker_a.poll() is None:
                    worker_a.kill()
                    worker_a.wait(timeout=30)
    assert result.outcome == "finished"
    assert _status(database, mark.read_text()) == "sent"
    assert smtp.handler.messages == []


async def _finish_on_b(dev_env: WorkflowEnvironment, run_id: str, settings: Settings) -> RunResult:
    """Worker B, in the test's process, on A's task queue until the run ends."""
    with SendLedger(settings.database_url) as ledger:
        async with running_worker(
            dev_env.client, task_queue=settings.task_queue, settings=settings, ledger=ledger
        ):
            handle = dev_env.client.get_workflow_handle(run_id, result_type=RunResult)
            async with asyncio.timeout(90):
                result: RunResult = await handle.result()
    return result


def _status(database: str, message_id: str) -> str | None:
    with SendLedger(database) as ledger:
        record = ledger.get(message_id)
    return None if record is None else record.status


async def _signalled(pid: int, mark: Path, *, state: str) -> None:
    """Wait until the hook marked its point and process ``pid`` is in ``state`` (``T``:
    stopped), as ``/proc`` reports it."""
    stat = Path(f"/proc/{pid}/stat")
    async with asyncio.timeout(60):
        while not (mark.exists() and stat.read_text().rpartition(")")[2].split()[0] == state):
            await asyncio.sleep(0.05)


def _one_email(database: str) -> PlanVersion:
    plan = dee.execution_plan(
        id="one-email",
        name="One email",
        created_by="tests",
        steps=[
            dee.steps.send_email(id="hello", template_id="t", subject="Hello {{ product }}"),
            dee.steps.end(id="done", outcome="finished"),
        ],
    )
    content = PlanContent(templates={"t": EmailTemplate(html="<p>Hi {{ contact.firstName }}</p>")})
    with PlanRegistry(database) as registry:
        return registry.create(plan, content)


async def _start(dev_env: WorkflowEnvironment, version: PlanVersion, task_queue: str) -> str:
    return await dee.start_run(
        dev_env.client,
        version,
        contact={"email": "ana@example.com", "firstName": "Ana"},
        variables={"product": "DEE"},
        task_queue=task_queue,
    )


def _attempt_ended(log: str) -> bool:
    """Whether worker A's log shows its stale attempt ended: fenced off by the ledger, or
    cancelled by the SDK when its heartbeat heard the attempt had timed out."""
    return "took this send over" in log or "cancel" in log.lower()
