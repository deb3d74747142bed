"""DEE's workflow runner: temporalio's sandbox, with payload contexts read directly.

Every run of the spec's plan through the real worker gets a :class:`DirectContextInstance`
that reads contexts directly (so an SDK upgrade that moves the object it reads fails here,
not silently slower), and its answers equal the sandbox's own for every kind of command the
run made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker._command_aware_visitor import CommandInfo

from dee.runs.client import send_event
from dee.runs.ledger import SendLedger
from dee.settings import Settings
from tests.helpers.engine import engine, wait_for_messages
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api
from worker import WORKFLOW_RUNNER, DeeWorkflowRunner, DirectContextInstance, build_worker


class RecordingRunner(DeeWorkflowRunner):
    """DEE's runner, keeping each instance it made and the commands they were asked about."""

    def __init__(self) -> None:
        super().__init__(restrictions=WORKFLOW_RUNNER.restrictions)
        self.instances: list[DirectContextInstance] = []
        self.asked: list[Any] = []

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = super().create_instance(det)
        assert isinstance(instance, DirectContextInstance)
        asked = self.asked

        class Recorded(DirectContextInstance):
            def get_serialization_context(self, command_info: CommandInfo | None) -> Any:
                asked.append(command_info)
                return super().get_serialization_context(command_info)

        recorded = Recorded.__new__(Recorded)
        recorded.__dict__.update(instance.__dict__)
        self.instances.append(recorded)
        return recorded


async def test_contexts_are_read_directly_and_match_the_sandboxs(
    time_skipping_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    runner = RecordingRunner()
    with twilio_api() as twilio:
        async with engine(
            time_skipping_env,
            task_queue,
            tmp_path,
            smtp,
            twilio,
            worker_options={"workflow_runner": runner},
        ) as e:
            handle = await e.start(e.spec_version())
            await wait_for_messages(e, 1)
            await send_event(e.client, handle.id, type="reply", step_id="intro-email")
            result = await handle.result()
    assert result.outcome == "replied"
    assert e.subjects == ["Introducing DEE"]
    assert runner.instances and all(instance.direct for instance in runner.instances)
    # The activity's command, timers, signals: each asked about, each answered alike.
    kinds = {getattr(info, "command_type", None) for info in runner.asked}
    assert len(kinds) >= 2, kinds
    instance = runner.instances[0]
    inner: WorkflowInstance = instance._inner
    for info in {id(info): info for info in runner.asked}.values():
        assert instance.get_serialization_context(info) == inner.get_serialization_context(info)
        assert instance.get_external_store_context(info) == inner.get_external_store_context(info)


async def test_the_worker_caches_as_many_runs_as_configured(
    time_skipping_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(database_url=database, workflow_cache=7, task_queue=task_queue)
    with SendLedger(settings.database_url) as ledger:
        built = build_worker(time_skipping_env.client, settings=settings, ledger=ledger)
        assert built.config()["max_cached_workflows"] == 7
        assert built.config()["workflow_runner"] is WORKFLOW_RUNNER
        # A caller's own choice wins.
        mine = build_worker(
            time_skipping_env.client,
            settings=settings,
            ledger=ledger,
            task_queue=f"{task_queue}-other",
            max_cached_workflows=3,
        )
        assert mine.config()["max_cached_workflows"] == 3
