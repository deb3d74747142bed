"""Recorded histories replay against today's interpreter, in the worker's own sandbox: a
change that would break runs already in flight fails here. Record new ones with
scripts/record_histories.py; keep the old ones (they are the runs in flight)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from dee.runs.temporal import data_converter
from worker import WORKFLOW_RUNNER
from workflows.execution_plan import ExecutionPlanWorkflow

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))


#: What the corpus must cover: each path through the interpreter a run in flight may be on.
COVERED = {
    "spec-reply",
    "spec-open",
    "spec-neither",
    "spec-unsubscribe",  # an unsubscribe in the middle of a wait
    "spec-rejected-recipient",  # a send that fails for good
    "loop-visit-limit",
    "cancelled-mid-send",
    "continued-mid-wait",  # the execution after a continue-as-new, resuming its wait
    "call-voicemail",
}
#: Runs of engine 2 (fewer search attribute upserts, no patch markers) and of engine 3
#: (dee.runs.model.ENGINE: windows, exitOn, calls that last as long as the call) take the
#: same paths.
COVERED |= {f"engine{engine}-{name}" for name in COVERED for engine in (2, 3)}
#: Paths only engine 3 takes: a send held for its window, then sent; an unsubscribe that
#: ends such a hold; a reply that ends a run mid-wait (exitOn); a wait whose until held.
COVERED |= {
    "engine3-send-window-hold",
    "engine3-send-window-hold-unsubscribed",
    "engine3-exit-on-reply",
    "engine3-until-held",
}


def test_there_are_histories_to_replay() -> None:
    assert {path.stem for path in HISTORIES} >= COVERED


@pytest.mark.parametrize("path", HISTORIES, ids=[path.stem for path in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(
        workflows=[ExecutionPlanWorkflow],
        data_converter=data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
