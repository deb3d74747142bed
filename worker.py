"""The DEE worker: connect, make sure the search attributes exist, register, run.

    python worker.py        # or: dee worker

Configured from the environment: Temporal through ``temporalio.envconfig``
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ...), DEE through :mod:`dee.settings`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.email import EmailActivities
from activities.voice import VoiceActivities
from dee.runs.channels import EmailChannel, VoiceChannel
from dee.runs.ledger import SendLedger
from dee.runs.temporal import connect, ensure_search_attributes
from dee.settings import Settings
from workflows.execution_plan import ExecutionPlanWorkflow

__all__ = ["WORKFLOW_RUNNER", "build_worker", "main", "run_worker"]

#: The sandbox, with DEE's own models and the libraries they import (pydantic, Jinja2 for
#: conditions) passed through: imported once per worker, not once per run. The workflow
#: imports no channel, so no SMTP or Twilio client needs to pass.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "dee", "pydantic", "jinja2", "markupsafe", "yaml"
    )
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
        activities=[email.send_email, voice.place_call],
        workflow_runner=options.pop("workflow_runner", WORKFLOW_RUNNER),
        **options,
    )


async def run_worker(settings: Settings | None = None, *, client: Client | None = None) -> None:
    """Run until SIGINT or SIGTERM, then finish in-flight tasks and stop."""
    settings = settings or Settings.from_env()
    # Its payload keys too: a worker encrypts and decrypts with the keys it is given.
    client = client or await connect(settings=settings)
    added = await ensure_search_attributes(client)
    if added:
        logger.info("registered search attributes: %s", ", ".join(added))
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
            logger.info("stopping: finishing in-flight tasks")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        ledger.close()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
