"""``dee tracking sweep`` as a real process, against the Temporal dev server."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from dee.server.hits import HitStore
from tests.cli.test_runs import Cli, cli_env
from tests.server.test_sweeper import signalled, waiting_run


async def test_sweep_signals_the_hits_whose_signal_never_went_out(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    env = cli_env(dev_env, tmp_path, database)
    cli = Cli(env=env, cwd=tmp_path)
    run_id = await waiting_run(dev_env.client, database)
    with HitStore(database) as store:
        claim = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
        gone = f"gone-{uuid.uuid4().hex[:8]}:ana@example.com"
        assert claim and store.record_hit(gone, kind="click", step_id="pause", visit=1, url="x")

    # By default only hits older than the server's grace period (30 s) are swept.
    nothing = "0 signalled, 0 for ended runs, 0 to try again\n"
    assert (await cli("tracking", "sweep")).stdout == nothing
    swept = await cli("tracking", "sweep", "--older-than", "0")
    assert swept.stdout == "1 signalled, 1 for ended runs, 0 to try again\n"
    assert (await cli("tracking", "sweep", "--older-than", "0")).stdout == nothing
    assert [event.event_id for event in await signalled(dev_env.client, run_id)] == [claim.event_id]

    misconfigured = Cli(env={**env, "DEE_TRACKING_SWEEP_AFTER": "soon"}, cwd=tmp_path)
    refused = await misconfigured("tracking", "sweep", status=2)
    assert refused.stderr == (
        "error: DEE_TRACKING_SWEEP_AFTER must be a number of seconds above 0, not 'soon'\n"
    )
