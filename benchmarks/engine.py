"""DEE's interpreter against a hand-written Temporal workflow of the same plan.

Both run the spec's example plan (with its 3.5-day wait shortened to a few seconds) on the
same Temporal dev server in one run, with the same activities sending to the same SMTP
server and loopback Twilio API, each in a worker process of its own. For each it reports
runs per second, the worker's CPU seconds per run, and history events per run; then the
ratios the targets are about (worker CPU at most 1.25x, history events at most one more
per executed step).

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/engine.py \
        [--runs 100] [--rounds 2] [--activities real|noop] [--runner dee|sandbox] [--profile DIR]

With ``--activities noop`` both variants call activities that return at once, so what is
left is the workflows' own cost (and the SDK's): the interpreter's tax. Both wait for the
call to end, as DEE's engine 3 does: the benchmark plays Twilio and DEE's server, sending
each run its call's ``call-outcome`` event (with the run's start for noop calls, whose SID
is known; once the loopback API has the call for real ones). The workers run
with bytecode written and read (``PYTHONDONTWRITEBYTECODE`` unset), as in production; with
it set, the sandbox compiles the workflow module from source for every new run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import Client, WorkflowHandle  # noqa: E402
from temporalio.common import SearchAttributePair, TypedSearchAttributes  # noqa: E402

import dee  # noqa: E402
from benchmarks._worker import NOOP_CALL_SID  # noqa: E402
from dee.plans.registry import PlanRegistry  # noqa: E402
from dee.plans.versions import PlanVersion  # noqa: E402
from dee.runs.model import (  # noqa: E402
    CONTACT_ID_ATTRIBUTE,
    CURRENT_STEP_ATTRIBUTE,
    ENGINE,
    EVENT_SIGNAL,
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    Contact,
    RunEvent,
    RunInput,
)
from dee.runs.tracking import CALL_STATUS, execution_of, verify_token  # noqa: E402
from tests.helpers.smtp import smtp_server  # noqa: E402
from tests.helpers.spec import SPEC_CONTENT, SPEC_YAML  # noqa: E402
from tests.helpers.temporal import start_dev_env  # noqa: E402
from tests.helpers.twilio_api import TwilioApi, twilio_api  # noqa: E402

#: Steps a run of the "neither" path executes: email, wait, branch, email, call, end.
EXECUTED_STEPS = 6
#: Whether DEE's runs start with the search attributes start_run sets (--no-start-attributes:
#: without, to see what their visibility writes cost the server).
START_ATTRIBUTES = True
SECRET_KEY = "benchmark-secret"
WORKFLOW_TYPES = {"dee": "ExecutionPlanWorkflow", "baseline": "HandWrittenSpecPlan"}


@dataclass
class Measurement:
    variant: str
    runs: int
    seconds: float
    cpu_seconds: float
    events: list[int]

    @property
    def runs_per_second(self) -> float:
        return self.runs / self.seconds

    @property
    def cpu_per_run(self) -> float:
        return self.cpu_seconds / self.runs


def plan_version(database: str, wait_seconds: int) -> PlanVersion:
    document = dee.load_plan(SPEC_YAML).to_document()
    for step in document["steps"]:
        if step["type"] == "wait":
            step["duration"] = {"seconds": wait_seconds}
    plan = dee.plan_from_document(document)
    with PlanRegistry(database) as registry:
        return registry.create(plan, dee.load_content(SPEC_CONTENT, plan))


def contact(variant: str, index: int) -> Contact:
    return Contact(
        id=f"{variant}-{index}",
        email=f"contact{index}@example.com",
        phone="+15557654321",
        firstName="Ana",
    )


async def start(
    client: Client,
    variant: str,
    version: PlanVersion,
    index: int,
    task_queue: str,
    *,
    delay: datetime.timedelta | None = None,
    call_sid: str | None = None,
) -> WorkflowHandle[Any, Any]:
    """One run, both variants through ``start_workflow`` with the same input; DEE's with
    what ``dee.start_run`` adds for the worker (its engine, the search attributes it sets
    at start), not its client-side checks, which are no part of the interpreter's cost.
    With ``call_sid`` the run starts with the ``call-outcome`` of that call (a noop call)."""
    run_input = RunInput(
        plan=version.plan,
        content=version.content,
        digest=version.digest,
        contact=contact(variant, index),
        variables={"product": "DEE"},
        engine=ENGINE if variant == "dee" else 1,
    )
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(PLAN_ID_ATTRIBUTE, version.plan.id),
            SearchAttributePair(PLAN_VERSION_ATTRIBUTE, version.version),
            SearchAttributePair(CONTACT_ID_ATTRIBUTE, run_input.contact.id),
            SearchAttributePair(CURRENT_STEP_ATTRIBUTE, version.plan.steps[0].id),
        ]
    )
    return await client.start_workflow(
        WORKFLOW_TYPES[variant],
        run_input,
        id=f"{task_queue}-{index}",
        task_queue=task_queue,
        search_attributes=attributes if variant == "dee" and START_ATTRIBUTES else None,
        start_delay=delay,
        start_signal=EVENT_SIGNAL if call_sid else None,
        start_signal_args=[call_ended(call_sid)] if call_sid else [],
    )


def call_ended(sid: str, *, execution: str | None = None) -> RunEvent:
    """The event DEE's server signals when Twilio reports call ``sid`` completed."""
    return RunEvent(
        event_id=f"twilio:{sid}:call-outcome",
        type="call-outcome",
        step_id="follow-up-call",
        at=datetime.datetime.now(datetime.UTC),
        details={"CallSid": sid, "CallStatus": "completed", "outcome": "answered"},
        execution=execution,
    )


async def end_calls(client: Client, twilio: TwilioApi) -> None:
    """Play Twilio and DEE's status callback for every call the loopback API takes: each
    run gets its call's outcome (until cancelled)."""
    ended = 0
    while True:
        creates, calls = twilio.creates, twilio.calls
        for request, call in zip(creates[ended:], calls[ended:], strict=False):
            token = request["StatusCallback"].partition("?token=")[2]
            payload = verify_token(token, secret=SECRET_KEY, kind=CALL_STATUS)
            event = call_ended(str(call["sid"]), execution=execution_of(payload))
            await client.get_workflow_handle(str(payload["r"])).signal(EVENT_SIGNAL, event)
            ended += 1
        await asyncio.sleep(0.05)


def spawn_worker(
    client: Client, variant: str, task_queue: str, options: list[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    """A ``benchmarks/_worker.py`` process for ``variant`` on ``task_queue``, once it says it
    is ready; closing its stdin stops it, and it then prints its report."""
    worker = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "_worker.py"),
            "--variant",
            variant,
            "--address",
            client.service_client.config.target_host,
            "--task-queue",
            task_queue,
            *options,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        worker.kill()
        worker.wait()
        raise RuntimeError("the benchmark worker did not start")
    return worker


async def measure(
    client: Client,
    variant: str,
    version: PlanVersion,
    runs: int,
    env: dict[str, str],
    options: list[str],
    twilio: TwilioApi | None,
) -> Measurement:
    """``twilio``: the loopback API real calls go to (``None``: noop activities)."""
    task_queue = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    worker = spawn_worker(client, variant, task_queue, options, env)
    assert worker.stdout is not None and worker.stdin is not None
    sid = None if twilio else NOOP_CALL_SID
    try:
        started = time.perf_counter()
        handles = await asyncio.gather(
            *(
                start(client, variant, version, index, task_queue, call_sid=sid)
                for index in range(runs)
            )
        )
        await asyncio.gather(*(handle.result() for handle in handles))
        seconds = time.perf_counter() - started
        worker.stdin.close()
        report: dict[str, Any] = json.loads(worker.stdout.readline())
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    events = [len((await handle.fetch_history()).events) for handle in handles]
    return Measurement(variant, runs, seconds, float(report["cpu_seconds"]), events)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant")
    parser.add_argument("--wait", type=int, default=3, help="the plan's wait, in seconds")
    parser.add_argument("--activities", choices=["real", "noop"], default="real")
    parser.add_argument("--runner", choices=["dee", "sandbox", "shared"], default="dee")
    parser.add_argument("--profile", type=Path, help="write each worker's cProfile here")
    parser.add_argument("--no-start-attributes", action="store_true")
    args = parser.parse_args()
    global START_ATTRIBUTES
    START_ATTRIBUTES = not args.no_start_attributes
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    env = await start_dev_env()
    calls_ending: asyncio.Task[None] | None = None
    try:
        with tempfile.TemporaryDirectory() as scratch, twilio_api() as twilio:
            calls_ending = asyncio.create_task(end_calls(env.client, twilio))
            async with smtp_server() as smtp:
                database = f"sqlite:///{Path(scratch) / 'dee.db'}"
                version = plan_version(database, args.wait)
                worker_env = {
                    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                    "DEE_DATABASE_URL": database,
                    "DEE_SMTP_URL": smtp.url,
                    "DEE_SECRET_KEY": SECRET_KEY,
                    "DEE_PUBLIC_URL": "https://dee.example.com",
                    "TWILIO_ACCOUNT_SID": twilio.account_sid,
                    "TWILIO_AUTH_TOKEN": twilio.auth_token,
                    "DEE_TWILIO_API_URL": twilio.url,
                }
                results: dict[str, list[Measurement]] = {"baseline": [], "dee": []}
                for round_number in range(args.rounds):
                    # Alternate the order so neither variant always runs on a warmer server.
                    order = ["baseline", "dee"] if round_number % 2 == 0 else ["dee", "baseline"]
                    for variant in order:
                        options = ["--activities", args.activities, "--runner", args.runner]
                        if args.profile:
                            stats = args.profile / f"{variant}-{round_number + 1}.pstats"
                            options += ["--profile", str(stats)]
                        result = await measure(
                            env.client,
                            variant,
                            version,
                            args.runs,
                            worker_env,
                            options,
                            twilio if args.activities == "real" else None,
                        )
                        results[variant].append(result)
                        print(
                            f"round {round_number + 1} {variant:8} {result.runs_per_second:7.1f} "
                            f"runs/s  {result.cpu_per_run * 1000:7.2f} ms CPU/run  "
                            f"{statistics.mean(result.events):5.1f} events/run",
                            flush=True,
                        )
                sent = len(smtp.handler.messages)
                calls = len(twilio.creates)
    finally:
        if calls_ending is not None:
            calls_ending.cancel()
        await env.shutdown()
    total_runs = args.runs * args.rounds * 2
    if args.activities == "real":
        assert sent == 2 * total_runs, f"expected {2 * total_runs} emails, the server got {sent}"
        assert calls == total_runs, f"expected {total_runs} calls, the API got {calls}"
    summary = {
        variant: {
            "runs_per_second": statistics.median(m.runs_per_second for m in ms),
            "cpu_ms_per_run": statistics.median(m.cpu_per_run for m in ms) * 1000,
            "events_per_run": statistics.mean(e for m in ms for e in m.events),
        }
        for variant, ms in results.items()
    }
    dee_, base = summary["dee"], summary["baseline"]
    print()
    print("| workflow | runs/s | worker CPU ms/run | history events/run |")
    print("| --- | ---: | ---: | ---: |")
    for variant, name in (("baseline", "hand-written"), ("dee", "DEE interpreter")):
        row = summary[variant]
        print(
            f"| {name} | {row['runs_per_second']:.1f} | {row['cpu_ms_per_run']:.2f} | "
            f"{row['events_per_run']:.1f} |"
        )
    cpu_ratio = dee_["cpu_ms_per_run"] / base["cpu_ms_per_run"]
    extra = (dee_["events_per_run"] - base["events_per_run"]) / EXECUTED_STEPS
    print()
    rate_ratio = dee_["runs_per_second"] / base["runs_per_second"]
    print(f"worker CPU per run: {cpu_ratio:.2f}x the hand-written workflow (target <= 1.10x)")
    print(f"runs per second: {rate_ratio:.2f}x the hand-written workflow (target >= 0.95x)")
    print(f"extra history events per executed step: {extra:.2f} (target <= 0.5)")
    print(f"emails delivered: {sent}, calls placed: {calls}, runs: {total_runs}")


if __name__ == "__main__":
    asyncio.run(main())
