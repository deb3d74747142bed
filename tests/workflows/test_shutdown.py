"""SIGTERM during a send: the worker lets it finish, once, then exits 0 (DEE_SHUTDOWN_TIMEOUT).

The worker is ``dee worker`` in a process of its own, as the image runs it. The test's SMTP
server holds the send at RCPT (the connection open, the message not yet sent, the ledger
claim made) until the test releases it; SIGTERM reaches the worker while it is held. With the
default timeout the send completes on its first attempt after the signal, the worker exits 0,
and a new worker takes the run on to its second email without sending the first again. With
``DEE_SHUTDOWN_TIMEOUT=0`` (the SDK's own default, what DEE had before) the same send is
cancelled: the worker exits while the server still holds it, and the retry on the new worker
sends it, so the first test can fail.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from dee.runs.ledger import SendLedger
from tests.helpers.smtp import RecordingHandler, smtp_server
from tests.helpers.temporal import running_worker
from tests.helpers.twilio_api import twilio_api
from tests.workflows.test_faults import (
    deliveries,
    settings_for,
    start_runs,
    two_emails,
    worker_process,
)
from workflows.execution_plan import ExecutionPlanWorkflow

#: Seconds the server holds the send after the worker said it is stopping: far longer than a
#: cancellation takes, well inside the default timeout of 25 s and SMTP's 20 s per command.
HELD_AFTER_STOP = 3.0


class HoldingHandler(RecordingHandler):
    """Holds the first RCPT until :attr:`release` is set (bounded: 120 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.reached.is_set():
            self.reached.set()
            await asyncio.to_thread(self.release.wait, 120)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def test_sigterm_during_a_send_lets_it_finish_once(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    held = await _sigterm_while_held(dev_env, task_queue, tmp_path, timeout=None)
    # The worker waited for the send: it was still running when the server let go, sent
    # the message, and exited 0 well within its 25 s.
    assert held.exited_while_held is False
    assert held.status == 0
    assert held.seconds_to_exit < 25
    assert held.sent_before_new_worker == 1
    # The new worker took the run on from there: the first email was not sent again, and
    # the send completed on the attempt that was in flight at SIGTERM.
    assert held.deliveries == {
        ("c0@example.com", "First DEE"): 1,
        ("c0@example.com", "Second DEE"): 1,
    }
    assert held.attempts == [1, 1]
    assert "activities in flight have 25 s to finish" in held.log


async def test_with_no_shutdown_timeout_sigterm_cancels_the_send(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    held = await _sigterm_while_held(dev_env, task_queue, tmp_path, timeout="0")
    # The negative control: the SDK cancelled the send at once, the worker was gone before
    # the server let go, and the message went out only on the new worker's retry.
    assert held.exited_while_held is True, held.log
    assert held.status == 0
    assert held.sent_before_new_worker == 0
    assert held.deliveries == {
        ("c0@example.com", "First DEE"): 1,
        ("c0@example.com", "Second DEE"): 1,
    }
    assert held.attempts[0] >= 2
    assert "activities in flight have 0 s to finish" in held.log


class _Held:
    exited_while_held: bool
    status: int | None
    seconds_to_exit: float
    sent_before_new_worker: int
    deliveries: dict[tuple[str, str], int]
    attempts: list[int]
    log: str


async def _sigterm_while_held(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, *, timeout: str | None
) -> _Held:
    """One run of two emails; SIGTERM to its worker while the first send is held at RCPT."""
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = two_emails(database, wait_seconds=1)
    handler = HoldingHandler()
    log = tmp_path / "worker.log"
    found = _Held()
    extra_env = {} if timeout is None else {"DEE_SHUTDOWN_TIMEOUT": timeout}
    with twilio_api() as twilio:
        async with smtp_server(handler) as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            worker = worker_process(settings, address, log=log, cli=True, extra_env=extra_env)
            try:
                [run_id] = await start_runs(dev_env.client, version, task_queue, 1)
                assert await asyncio.to_thread(handler.reached.wait, 60), "no send reached RCPT"
                signalled = time.monotonic()
                worker.send_signal(signal.SIGTERM)
                # Positive control: the worker heard the signal and is stopping.
                async with asyncio.timeout(30):
                    while "stopping:" not in log.read_text(errors="replace"):
                        await asyncio.sleep(0.05)
                found.exited_while_held = await _exits_within(worker, HELD_AFTER_STOP)
                handler.release.set()
                found.status = await asyncio.to_thread(worker.wait, 60)
                found.seconds_to_exit = time.monotonic() - signalled
                # Whatever the SMTP session still had to do is done once the worker is gone.
                await asyncio.sleep(0.5)
                found.sent_before_new_worker = len(handler.messages)
                with SendLedger(database) as ledger:
                    async with running_worker(
                        dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
                    ):
                        handle = dev_env.client.get_workflow_handle_for(
                            ExecutionPlanWorkflow.run, run_id
                        )
                        async with asyncio.timeout(120):
                            result = await handle.result()
                assert result.outcome == "finished"
                history = await handle.fetch_history()
            finally:
                handler.release.set()
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)
    found.deliveries = dict(deliveries(handler))
    found.attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    found.log = log.read_text(errors="replace")
    return found


async def _exits_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True
        await asyncio.sleep(0.05)
    return process.poll() is not None
