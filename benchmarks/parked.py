"""Runs that wait cost nothing: many runs parked on a wait, then their timers firing at once.

For each variant (DEE's interpreter, the hand-written workflow) in one run, on one Temporal
dev server, each with a worker process of its own calling activities that return at once
(so only workflow work remains): ``--runs`` runs of the spec's plan start together (every
one delayed to the same moment with ``start_delay``), send their first email and park on
the plan's wait. While parked it reports the worker's resident memory and CPU; when the
timers fire, together, the seconds until every run has finished (the branch, the second
email, the call and the end after its wait).

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/parked.py \\
        [--runs 10000] [--wait 90] [--cache 1000]

``--cache`` is the worker's workflow cache (``max_cached_workflows``; ``DEE_WORKFLOW_CACHE``
for ``dee worker``): runs past it are evicted while parked and replayed from their history
when their timer fires.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402

from benchmarks._worker import NOOP_CALL_SID  # noqa: E402
from benchmarks.engine import WORKFLOW_TYPES, plan_version, spawn_worker, start  # noqa: E402
from dee.plans.versions import PlanVersion  # noqa: E402
from tests.helpers.temporal import start_dev_env  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_open(client: Client, task_queue: str) -> int:
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    return (await client.count_workflows(query)).count


async def measure(
    client: Client,
    variant: str,
    version: PlanVersion,
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    task_queue = f"parked-{variant}-{uuid.uuid4().hex[:8]}"
    options = ["--activities", "noop", "--max-cached", str(args.cache)]
    worker = spawn_worker(client, variant, task_queue, options, env)
    assert worker.stdout is not None and worker.stdin is not None
    try:
        idle_rss = rss_mib(worker.pid)
        # Every run starts at the same moment: `start_delay` to a common time.
        begin = time.time() + args.lead
        semaphore = asyncio.Semaphore(64)

        async def one(index: int) -> Any:
            async with semaphore:
                delay = datetime.timedelta(seconds=max(0.0, begin - time.time()))
                return await start(
                    client, variant, version, index, task_queue, delay=delay, call_sid=NOOP_CALL_SID
                )

        handles = await asyncio.gather(*(one(index) for index in range(args.runs)))
        late = time.time() - begin
        assert late < 0, f"starting took {late + args.lead:.0f}s, past --lead {args.lead}s"
        fire_at = begin + args.wait
        # Parked: measured once every run has sent its first email and is waiting.
        await asyncio.sleep(max(0.0, begin + args.settle - time.time()))
        assert time.time() < fire_at - 10, "runs still starting when their timers fire"
        cpu_before, at_before = cpu_seconds(worker.pid), time.time()
        await asyncio.sleep(5)
        parked_cpu = (cpu_seconds(worker.pid) - cpu_before) / (time.time() - at_before)
        parked_rss = rss_mib(worker.pid)
        await asyncio.sleep(max(0.0, fire_at - time.time()))
        while await count_open(client, task_queue):
            await asyncio.sleep(0.5)
        done = time.time() - fire_at
        worker.stdin.close()
        report: dict[str, Any] = json.loads(worker.stdout.readline())
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    results = await asyncio.gather(*(handle.result() for handle in handles[:50]))
    assert all(results), "a run did not finish"
    return {
        "variant": variant,
        "idle_rss": idle_rss,
        "parked_rss": parked_rss,
        "parked_cpu": parked_cpu,
        "seconds_after_fire": done,
        "peak_rss": float(report.get("peak_rss_mib", 0.0)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--wait", type=int, default=90, help="the plan's wait, in seconds")
    parser.add_argument("--lead", type=float, default=40, help="seconds to start every run")
    parser.add_argument("--settle", type=float, default=30, help="seconds to park them all")
    parser.add_argument("--cache", type=int, default=1000, help="max_cached_workflows")
    args = parser.parse_args()
    env = await start_dev_env()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            database = f"sqlite:///{Path(scratch) / 'dee.db'}"
            version = plan_version(database, args.wait)
            worker_env = {
                **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                "DEE_DATABASE_URL": database,
            }
            rows = []
            for variant in ("baseline", "dee"):
                row = await measure(env.client, variant, version, args, worker_env)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        await env.shutdown()
    print()
    print(
        f"{args.runs:,} runs parked, worker cache {args.cache:,} "
        f"({', '.join(WORKFLOW_TYPES.values())})"
    )
    header = "| workflow | RSS idle MiB | RSS parked MiB | peak RSS MiB | CPU parked |"
    print(header + " s to finish after the timers |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        name = "hand-written" if row["variant"] == "baseline" else "DEE interpreter"
        print(
            f"| {name} | {row['idle_rss']:.0f} | {row['parked_rss']:.0f} | "
            f"{row['peak_rss']:.0f} | {row['parked_cpu']:.1%} | {row['seconds_after_fire']:.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
