"""A benchmark worker process: runs one workflow (DEE's or the baseline) with DEE's
activities until stdin closes, then prints the CPU seconds it used while serving."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.email import EmailActivities  # noqa: E402
from activities.voice import VoiceActivities  # noqa: E402
from benchmarks.baseline_workflow import HandWrittenSpecPlan  # noqa: E402
from dee.runs.ledger import SendLedger  # noqa: E402
from dee.runs.temporal import data_converter  # noqa: E402
from dee.settings import Settings  # noqa: E402
from worker import WORKFLOW_RUNNER  # noqa: E402
from workflows.execution_plan import ExecutionPlanWorkflow  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["dee", "baseline"], required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    client = await Client.connect(args.address, data_converter=data_converter)
    workflow = ExecutionPlanWorkflow if args.variant == "dee" else HandWrittenSpecPlan
    with SendLedger(settings.database_url) as ledger:
        email = EmailActivities(settings, ledger)
        voice = VoiceActivities(settings, ledger)
        async with Worker(
            client,
            task_queue=args.task_queue,
            workflows=[workflow],
            activities=[email.send_email, voice.place_call],
            workflow_runner=WORKFLOW_RUNNER,
        ):
            start = time.process_time()
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.read)
            used = time.process_time() - start
    print(json.dumps({"cpu_seconds": used}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
