"""What one signal costs a run: signal N events into a run waiting in a long wait, then
replay its history (what a worker does when it picks the run up after a restart or a cache
eviction) with the worker's own sandbox, timing it, and optionally profiling the replay.

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/signal_replay.py --events 3000
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/signal_replay.py --profile

The run continues as new after ``CONTINUE_AFTER_SIGNALS`` signals, so ``--events`` past it
measure the first execution's history only up to there.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.worker import Replayer  # noqa: E402

from dee.plans.content import PlanContent  # noqa: E402
from dee.plans.registry import PlanRegistry  # noqa: E402
from dee.runs.client import send_event, start_run  # noqa: E402
from dee.runs.ledger import SendLedger  # noqa: E402
from dee.runs.temporal import data_converter  # noqa: E402
from dee.settings import Settings  # noqa: E402
from tests.helpers.plans import simple_plan  # noqa: E402
from tests.helpers.temporal import running_worker, start_dev_env  # noqa: E402
from worker import WORKFLOW_RUNNER  # noqa: E402
from workflows.execution_plan import ExecutionPlanWorkflow  # noqa: E402

CONCURRENCY = 16


async def main(events: int, profile: bool) -> None:
    env = await start_dev_env()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            database = f"sqlite:///{Path(scratch) / 'dee.db'}"
            settings = Settings(database_url=database, task_queue="signals")
            with PlanRegistry(database) as registry, SendLedger(database) as ledger:
                version = registry.create(simple_plan("signals", hours=24), PlanContent())
                async with running_worker(
                    env.client, task_queue="signals", settings=settings, ledger=ledger
                ):
                    run_id = await start_run(
                        env.client, version, contact={"id": "c"}, task_queue="signals"
                    )
                    first = (await env.client.get_workflow_handle(run_id).describe()).run_id
                    gate = asyncio.Semaphore(CONCURRENCY)

                    async def one(number: int) -> None:
                        async with gate:
                            await send_event(env.client, run_id, type="open", event_id=f"e{number}")

                    started = time.perf_counter()
                    await asyncio.gather(*(one(number) for number in range(events)))
                    took = time.perf_counter() - started
                    print(f"signalled {events} events in {took:.1f} s ({events / took:.0f}/s)")
                    handle = env.client.get_workflow_handle(run_id, run_id=first)
                    history = await handle.fetch_history()
        signals = sum(
            1
            for event in history.events
            if event.HasField("workflow_execution_signaled_event_attributes")
        )
        replayer = Replayer(
            workflows=[ExecutionPlanWorkflow],
            data_converter=data_converter,
            workflow_runner=WORKFLOW_RUNNER,
        )
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await replayer.replay_workflow(history)
        if profiler is not None:
            profiler.disable()
        took = time.perf_counter() - started
        print(
            f"replayed {len(history.events)} events ({signals} signals) in {took:.2f} s: "
            f"{took / max(signals, 1) * 1000:.2f} ms per signal"
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_900)
    parser.add_argument("--profile", action="store_true")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.profile))
