"""The DEE worker: connect, make sure the search attributes exist, register, run.

    python worker.py        # or: dee worker

Configured from the environment: Temporal through ``temporalio.envconfig``
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ...), DEE through :mod:`dee.settings`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import timedelta
from typing import Any, Final

from temporalio import activity, workflow
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.client import Client
from temporalio.converter import SerializationContext, StorageDriverStoreContext
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.email import EmailActivities
from activities.voice import VoiceActivities
from dee import metrics
from dee.logs import configure_logging
from dee.runs.channels import EmailChannel, VoiceChannel
from dee.runs.ledger import SendLedger
from dee.runs.temporal import connect, ensure_search_attributes
from dee.settings import Settings
from workflows.execution_plan import ExecutionPlanWorkflow

__all__ = [
    "PASSED_THROUGH",
    "WORKFLOW_RUNNER",
    "DeeWorkflowRunner",
    "DirectContextInstance",
    "build_worker",
    "main",
    "run_worker",
]

#: DEE's own models and the libraries they import (pydantic, Jinja2 for conditions), passed
#: through the sandbox: imported once per worker, not once per run. The workflow imports no
#: channel, so no SMTP or Twilio client needs to pass.
PASSED_THROUGH: Final = ("dee", "pydantic", "jinja2", "markupsafe", "yaml")


class DirectContextInstance(WorkflowInstance):
    """A sandboxed workflow instance that answers the SDK's payload-context questions
    without re-entering the sandbox.

    temporalio asks a workflow instance, for every payload sequence it encodes or decodes
    (an activity's input, a summary, a signal, a result: several times each), which
    serialization and external-storage context applies. The sandboxed runner answers by
    ``exec``-ing two lines inside the sandbox's import hooks, about 0.3 ms each, which was
    most of a signal's replay cost and most of what activity and timer summaries cost
    (see BENCHMARKS.md). The answer comes from the same in-sandbox object either way (a
    method that builds a small dataclass from the run's info and pending commands and
    imports nothing), so this asks it directly. Should a temporalio release no longer keep
    that object where this looks, it falls back to the sandbox's own way
    (:attr:`direct` is then ``False``; a test checks it is ``True``).
    """

    def __init__(self, inner: WorkflowInstance) -> None:
        self._inner = inner
        namespace = getattr(inner, "globals_and_locals", None)
        found = namespace.get("__temporal_in_sandbox") if isinstance(namespace, dict) else None
        answers = all(
            callable(getattr(found, name, None))
            for name in ("get_serialization_context", "get_external_store_context")
        )
        self._in_sandbox: Any = found if answers else None

    @property
    def direct(self) -> bool:
        """Whether contexts are read directly (else through the sandbox, as temporalio does)."""
        return self._in_sandbox is not None

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return self._inner.activate(act)

    def get_info(self) -> workflow.Info:
        return self._inner.get_info()

    def get_thread_id(self) -> int | None:
        return self._inner.get_thread_id()

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        if self._in_sandbox is None:
            return self._inner.get_serialization_context(command_info)
        context: SerializationContext | None = self._in_sandbox.get_serialization_context(
            command_info
        )
        return context

    def get_external_store_context(self, command_info: Any) -> StorageDriverStoreContext:
        if self._in_sandbox is None:
            return self._inner.get_external_store_context(command_info)
        context: StorageDriverStoreContext = self._in_sandbox.get_external_store_context(
            command_info
        )
        return context


class DeeWorkflowRunner(SandboxedWorkflowRunner):
    """temporalio's sandbox, every instance a :class:`DirectContextInstance`."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return DirectContextInstance(super().create_instance(det))


#: The sandbox, with DEE's own models and the libraries they import passed through.
WORKFLOW_RUNNER = DeeWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
)

logger = logging.getLogger("dee.worker")


def build_worker(
    client: Client,
    *,
    settings: Settings,
    ledger: SendLedger,
    task_queue: str | None = None,
    **options: Any,
) -> Worker:
    """A worker for DEE's workflow and activities on ``task_queue`` (default: settings)."""
    # Run ids hold contact ids, which default to email addresses: keep them out of the text
    # of log lines (they stay in each record's `extra` for structured logging).
    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False
    email: EmailChannel = EmailActivities(settings, ledger)
    voice: VoiceChannel = VoiceActivities(settings, ledger)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[ExecutionPlanWorkflow],
        activities=[email.send_email, voice.place_call, voice.call_outcome],
        workflow_runner=options.pop("workflow_runner", WORKFLOW_RUNNER),
        max_cached_workflows=options.pop("max_cached_workflows", settings.workflow_cache),
        # Without it the SDK cancels every send in flight the moment the worker is asked to
        # stop; with it they finish (and are recorded) first.
        graceful_shutdown_timeout=options.pop(
            "graceful_shutdown_timeout", timedelta(seconds=settings.shutdown_timeout)
        ),
        **options,
    )


async def run_worker(settings: Settings | None = None, *, client: Client | None = None) -> None:
    """Run until SIGINT or SIGTERM, then let the activities in flight finish (for up to
    ``DEE_SHUTDOWN_TIMEOUT`` seconds, then they are cancelled) and stop.

    Refuses to start (``ValueError``) when the settings would send links that lead nowhere
    (:meth:`Settings.public_url_problem`).
    """
    settings = settings or Settings.from_env()
    problem = settings.public_url_problem()
    if problem:
        raise ValueError(problem)
    sdk_metrics = None
    if client is None:
        runtime = None
        if settings.worker_metrics_address:
            runtime, sdk_metrics = metrics.sdk_runtime()
        # Its payload keys too: a worker encrypts and decrypts with the keys it is given.
        client = await connect(settings=settings, runtime=runtime)
    added = await ensure_search_attributes(client)
    if added:
        logger.info("registered search attributes: %s", ", ".join(added))
    served = None
    if settings.worker_metrics_address:
        served = metrics.serve(settings.worker_metrics_address, forward=sdk_metrics)
        logger.info("metrics served at http://%s:%d/metrics", served.host, served.port)
    ledger = SendLedger(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with build_worker(client, settings=settings, ledger=ledger):
            logger.info(
                "worker running on task queue %r in namespace %r",
                settings.task_queue,
                client.namespace,
            )
            await stop.wait()
            logger.info(
                "stopping: activities in flight have %.0f s to finish (DEE_SHUTDOWN_TIMEOUT)",
                settings.shutdown_timeout,
            )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        ledger.close()
        if served is not None:
            served.close()


def main() -> None:
    try:
        settings = Settings.from_env()
        problem = settings.public_url_problem()
        if problem:
            raise ValueError(problem)
    except ValueError as exc:
        # As `dee worker` does: a setting to fix, said once, without a traceback.
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
