"""A benchmark worker process: runs one workflow (DEE's or the baseline) with DEE's
activities, or with activities that return at once, until stdin closes, then prints the
CPU seconds it used while serving.

    --activities real   DEE's email and voice activities (rendering, SMTP, ledger, Twilio)
    --activities noop   the same activity names, returning a result at once: what is left
                        is the workflow's own cost (and the SDK's), which is what differs
    --runner sandbox    temporalio's SandboxedWorkflowRunner with DEE's pass-through modules
    --runner dee        worker.WORKFLOW_RUNNER (what `dee worker` runs)
    --runner shared     DEE's runner with the workflow modules passed through too (an
                        experiment: no re-import of the workflow module per run)
    --profile FILE      cProfile the serving, every thread, written to FILE (pstats)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio import activity  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402
from temporalio.worker.workflow_sandbox import (  # noqa: E402
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from activities.email import EmailActivities  # noqa: E402
from activities.voice import VoiceActivities  # noqa: E402
from benchmarks.baseline_workflow import HandWrittenSpecPlan  # noqa: E402
from dee.runs.channels import (  # noqa: E402
    PlaceCallInput,
    PlaceCallResult,
    SendEmailInput,
    SendEmailResult,
)
from dee.runs.ledger import SendLedger  # noqa: E402
from dee.runs.temporal import data_converter  # noqa: E402
from dee.settings import Settings  # noqa: E402
from worker import PASSED_THROUGH, WORKFLOW_RUNNER, DeeWorkflowRunner  # noqa: E402
from workflows.execution_plan import ExecutionPlanWorkflow  # noqa: E402

#: The sandbox as temporalio ships it, with DEE's pass-through modules: the baseline runner.
PLAIN_SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
)


@activity.defn(name="send_email")
async def noop_send_email(input: SendEmailInput) -> SendEmailResult:
    return SendEmailResult(
        message_id=f"<{input.run_id}.{input.step.id}.{input.visit}@bench>",
        status="sent",
        recipient_domain="example.com",
    )


#: The call SID the noop ``place_call`` answers (the spec plan calls once a run).
NOOP_CALL_SID = f"CA{1:032d}"


@activity.defn(name="place_call")
async def noop_place_call(input: PlaceCallInput) -> PlaceCallResult:
    return PlaceCallResult(call_sid=f"CA{input.visit:032d}", status="placed")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["dee", "baseline"], required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--activities", choices=["real", "noop"], default="real")
    parser.add_argument("--runner", choices=["sandbox", "dee", "shared"], default="dee")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--max-cached", type=int, default=1000, help="max_cached_workflows")
    args = parser.parse_args()
    settings = Settings.from_env()
    client = await Client.connect(args.address, data_converter=data_converter)
    workflow = ExecutionPlanWorkflow if args.variant == "dee" else HandWrittenSpecPlan
    runner = {
        "dee": WORKFLOW_RUNNER,
        "sandbox": PLAIN_SANDBOX,
        "shared": DeeWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                *PASSED_THROUGH, "workflows", "benchmarks"
            )
        ),
    }[args.runner]
    profiler = cProfile.Profile() if args.profile else None
    thread_profilers: list[cProfile.Profile] = []

    def profile_thread(*_: Any) -> None:
        # Workflow activations run in a thread pool: give each new thread a profiler.
        threading.setprofile(None)
        thread_profiler = cProfile.Profile()
        thread_profilers.append(thread_profiler)
        thread_profiler.enable()

    if profiler is not None:
        threading.setprofile(profile_thread)  # before the worker makes its threads
    with SendLedger(settings.database_url) as ledger:
        activities: list[Any]
        if args.activities == "real":
            email = EmailActivities(settings, ledger)
            voice = VoiceActivities(settings, ledger)
            activities = [email.send_email, voice.place_call, voice.call_outcome]
        else:
            activities = [noop_send_email, noop_place_call]
        async with Worker(
            client,
            task_queue=args.task_queue,
            workflows=[workflow],
            activities=activities,
            workflow_runner=runner,
            max_cached_workflows=args.max_cached,
        ):
            start = time.process_time()
            if profiler is not None:
                profiler.enable()
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.read)
            used = time.process_time() - start
            if profiler is not None:
                profiler.disable()
                for thread_profiler in thread_profilers:
                    thread_profiler.disable()
                stats = pstats.Stats(profiler)
                for thread_profiler in thread_profilers:
                    thread_profiler.create_stats()
                    stats.add(thread_profiler)
                stats.dump_stats(str(args.profile))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cpu_seconds": used, "peak_rss_mib": peak}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
