"""The workflow side of a run alone: the same run replayed, DEE's against the hand-written.

The engine benchmark measures whole runs against a Temporal server, on a machine whose two
cores the server, the workers and the load share, so its CPU figures move by 10% from round
to round. This one records one run of each variant (the spec's longest path, activities
that return at once, DEE's run started as ``dee.start_run`` starts it) and then replays each
history ``--runs`` times in this process with the worker's own sandbox and data converter:
everything a worker does for a run's workflow tasks (a fresh sandboxed instance, decoding
and encoding every payload, the interpreter or the hand-written code) and nothing of the
server's. CPU time of this process per replayed run, alternating the variants, medians.

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/replay_cost.py [--runs 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowHistory  # noqa: E402
from temporalio.worker import Replayer, Worker  # noqa: E402

from benchmarks._worker import NOOP_CALL_SID, noop_place_call, noop_send_email  # noqa: E402
from benchmarks.baseline_workflow import HandWrittenSpecPlan  # noqa: E402
from benchmarks.engine import plan_version, start  # noqa: E402
from dee.runs.temporal import data_converter  # noqa: E402
from tests.helpers.temporal import start_dev_env  # noqa: E402
from worker import WORKFLOW_RUNNER  # noqa: E402
from workflows.execution_plan import ExecutionPlanWorkflow  # noqa: E402

WORKFLOWS = {"dee": ExecutionPlanWorkflow, "baseline": HandWrittenSpecPlan}


async def record() -> dict[str, WorkflowHistory]:
    """One history of each variant, from a dev server of its own."""
    env = await start_dev_env()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            version = plan_version(f"sqlite:///{Path(scratch) / 'dee.db'}", 1)
            async with Worker(
                env.client,
                task_queue="replay-cost",
                workflows=list(WORKFLOWS.values()),
                activities=[noop_send_email, noop_place_call],
                workflow_runner=WORKFLOW_RUNNER,
            ):
                histories = {}
                for variant in WORKFLOWS:
                    handle = await start(
                        env.client, variant, version, 0, "replay-cost", call_sid=NOOP_CALL_SID
                    )
                    await handle.result()
                    histories[variant] = await handle.fetch_history()
        return histories
    finally:
        await env.shutdown()


async def replay(history: WorkflowHistory, variant: str, runs: int) -> float:
    """CPU milliseconds per replay of ``history``, ``runs`` times as as many runs."""
    replayer = Replayer(
        workflows=[WORKFLOWS[variant]],
        data_converter=data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )

    async def copies() -> AsyncIterator[WorkflowHistory]:
        for index in range(runs):
            yield WorkflowHistory(f"{variant}-{index}", history.events)

    started = time.process_time()
    async with replayer.workflow_replay_iterator(copies()) as results:
        async for result in results:
            assert result.replay_failure is None, result.replay_failure
    return (time.process_time() - started) * 1000 / runs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="replays per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    histories = await record()
    for variant in WORKFLOWS:  # warm: the first replay imports what the sandbox needs
        await replay(histories[variant], variant, 5)
    costs: dict[str, list[float]] = {variant: [] for variant in WORKFLOWS}
    for round_number in range(args.rounds):
        order = ["baseline", "dee"] if round_number % 2 == 0 else ["dee", "baseline"]
        for variant in order:
            cost = await replay(histories[variant], variant, args.runs)
            costs[variant].append(cost)
            print(f"round {round_number + 1} {variant:8} {cost:6.2f} ms CPU/run", flush=True)
    events = {variant: len(history.events) for variant, history in histories.items()}
    base, dee_ = (statistics.median(costs[v]) for v in ("baseline", "dee"))
    print()
    print("| workflow | history events | replay CPU ms/run |")
    print("| --- | ---: | ---: |")
    print(f"| hand-written | {events['baseline']} | {base:.2f} |")
    print(f"| DEE interpreter | {events['dee']} | {dee_:.2f} |")
    print(f"\nworkflow-side CPU per run: {dee_ / base:.2f}x the hand-written workflow")


if __name__ == "__main__":
    asyncio.run(main())
