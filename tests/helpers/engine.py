"""A DEE engine for tests: the real worker, activities, SMTP server and loopback Twilio API
around a Temporal environment, with a plan registry and send ledger in a SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import PlanContent
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.ledger import SendLedger
from dee.runs.model import RunResult
from dee.settings import Settings
from tests.helpers.smtp import SmtpServer
from tests.helpers.spec import SPEC_CONTENT, SPEC_YAML
from tests.helpers.temporal import running_worker
from tests.helpers.twilio_api import TwilioApi
from tests.helpers.windows import at_any_hour
from workflows.execution_plan import ExecutionPlanWorkflow

__all__ = ["CONTACT", "VARIABLES", "Engine", "engine", "wait_for_messages"]

CONTACT = {"email": "ana@example.com", "firstName": "Ana", "phone": "+15557654321"}
VARIABLES = {"product": "DEE"}


class _RunHandle(WorkflowHandle[ExecutionPlanWorkflow, RunResult]):
    """A handle on a run :func:`dee.start_run` started; on the time-skipping server its
    ``result`` skips time as a handle from ``start_workflow`` would."""

    def __init__(self, env: WorkflowEnvironment, workflow_id: str, execution: str) -> None:
        # Pinned to the first execution, as start_workflow's handle is: its history is
        # that execution's, and its result follows the run across continue-as-new.
        super().__init__(
            env.client,
            workflow_id,
            run_id=execution,
            result_run_id=execution,
            first_execution_run_id=execution,
            result_type=RunResult,
        )
        self._env = env

    async def result(self, *args: Any, **kwargs: Any) -> RunResult:
        unlocked: Callable[[], AbstractAsyncContextManager[None]] | None = getattr(
            self._env, "time_skipping_unlocked", None
        )
        async with unlocked() if unlocked is not None else nullcontext():
            return await super().result(*args, **kwargs)


@dataclass
class Engine:
    env: WorkflowEnvironment
    client: Client
    task_queue: str
    registry: PlanRegistry
    smtp: SmtpServer
    twilio: TwilioApi

    def version(self, plan: dee.ExecutionPlan, content: PlanContent) -> PlanVersion:
        return self.registry.create(plan, content)

    def spec_version(self) -> PlanVersion:
        # Its call comes 3.5 (skipped) days in, at whatever hour that is.
        plan = at_any_hour(dee.load_plan(SPEC_YAML))
        return self.registry.create(plan, dee.load_content(SPEC_CONTENT, plan))

    async def start(
        self,
        version: PlanVersion,
        *,
        max_visits_per_step: int = 100,
        contact_id: str = "",
        contact: dict[str, Any] | None = None,
    ) -> WorkflowHandle[ExecutionPlanWorkflow, RunResult]:
        """Start a run through :func:`dee.start_run`, with its checks, for contact
        ``contact_id`` (default: a new contact); ``contact`` replaces fields of
        :data:`CONTACT`."""
        contact = {**CONTACT, **(contact or {}), "id": contact_id or f"c-{uuid.uuid4().hex[:8]}"}
        run_id = await dee.start_run(
            self.client,
            version,
            contact=contact,
            variables=VARIABLES,
            task_queue=self.task_queue,
            max_visits_per_step=max_visits_per_step,
        )
        described = await self.client.get_workflow_handle(run_id).describe()
        return _RunHandle(self.env, run_id, described.run_id)

    @property
    def subjects(self) -> list[str]:
        return [str(received.message["Subject"]) for received in self.smtp.handler.messages]


@asynccontextmanager
async def engine(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
    worker_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Engine]:
    """The engine; ``overrides`` replace settings, ``worker_options`` go to the worker."""
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        smtp_url=smtp.url,
        from_address="sales@example.com",
        public_url="https://dee.example.com",
        secret_key="test-secret-key",
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_api_url=twilio.url,
        task_queue=task_queue,
    )
    settings = dataclasses.replace(settings, **overrides)
    with PlanRegistry(database) as registry, SendLedger(database) as ledger:
        async with running_worker(
            env.client,
            task_queue=task_queue,
            settings=settings,
            ledger=ledger,
            **(worker_options or {}),
        ):
            yield Engine(env, env.client, task_queue, registry, smtp, twilio)


async def wait_for_messages(engine: Engine, count: int) -> None:
    """Poll (bounded) until the SMTP server has ``count`` messages; time is not skipped."""
    for _ in range(200):
        if len(engine.smtp.handler.messages) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} messages, got {engine.subjects}")
