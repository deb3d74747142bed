"""The sweeper signals every tracking key whose signal never went out, once, on the Temporal
dev server and real SQLite and PostgreSQL databases.

Runs here wait an hour on a task queue no worker polls unless a test says so: Temporal
takes their signals and keeps them in the history, which is what the sweeper is judged by.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dee.plans.registry import PlanRegistry
from dee.runs.client import run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import RunEvent
from dee.runs.temporal import data_converter
from dee.server.hits import HitStore, SignalClaim, SignalStatus
from dee.server.sweeper import SweepReport, deliver, sweep, sweep_interval
from dee.settings import Settings
from tests.helpers.plans import simple_plan
from tests.helpers.server import running_server
from tests.helpers.smtp import free_port
from tests.helpers.temporal import new_task_queue, running_worker

LINK = "https://example.com/pricing"


@pytest.fixture
def store(database_url: str) -> Iterator[HitStore]:
    with HitStore(database_url) as opened:
        yield opened


async def waiting_run(client: Client, database_url: str, *, task_queue: str | None = None) -> str:
    """A run of a new plan that waits an hour, started for a new contact."""
    with PlanRegistry(database_url) as registry:
        version = registry.create(simple_plan(f"sweep-{uuid.uuid4().hex[:8]}"))
    contact = {"id": f"c-{uuid.uuid4().hex[:8]}", "email": "ana@example.com"}
    return await start_run(
        client, version, contact=contact, task_queue=task_queue or new_task_queue()
    )


async def signalled(client: Client, run_id: str) -> list[RunEvent]:
    """Every event signalled to ``run_id``, repeats included, as its history holds them."""
    found = []
    async for event in client.get_workflow_handle(run_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            payloads = event.workflow_execution_signaled_event_attributes.input.payloads
            [decoded] = await client.data_converter.decode(payloads, [RunEvent])
            found.append(decoded)
    return found


def status(store: HitStore, claim: SignalClaim) -> SignalStatus:
    found = store.signal_status(
        claim.run_id, step_id=claim.step_id, visit=claim.visit, kind=claim.kind
    )
    assert found is not None
    return found


async def unreachable_temporal() -> Client:
    return await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, data_converter=data_converter
    )


async def test_pending_claims_are_signalled_once_and_signalled_ones_never_again(
    database_url: str, store: HitStore, dev_env: WorkflowEnvironment
) -> None:
    client = dev_env.client
    run_id = await waiting_run(client, database_url)
    sent = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
    lost = store.record_hit(run_id, kind="click", step_id="pause", visit=1, url=LINK)
    assert sent is not None and lost is not None
    # What the request path does for the first: signal, then record that it went out. The
    # second's server died before signalling.
    assert await deliver(client, sent) == "signalled"
    assert store.settle([(sent, "signalled")]) == 1

    assert await sweep(client, store, older_than=0) == SweepReport(signalled=1)
    # Swept again: nothing left to send.
    assert await sweep(client, store, older_than=0) == SweepReport()

    events = await signalled(client, run_id)
    assert [event.event_id for event in events] == [sent.event_id, lost.event_id]
    # The swept signal is the one the server would have sent: the click's link, its time.
    swept = events[1]
    assert (swept.type, swept.step_id, swept.details, swept.at) == (
        "click",
        "pause",
        {"url": LINK},
        lost.at,
    )
    assert status(store, lost).outcome == "signalled" and status(store, lost).attempts == 1


@pytest.mark.parametrize("ending", ["run-closed", "run-not-found"])
async def test_a_claim_whose_run_has_ended_is_not_tried_again(
    ending: str,
    database_url: str,
    store: HitStore,
    dev_env: WorkflowEnvironment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dee.server.sweeper")
    client = dev_env.client
    if ending == "run-closed":
        run_id = await waiting_run(client, database_url)
        await client.get_workflow_handle(run_id).terminate(reason="test")
    else:
        run_id = f"gone-{uuid.uuid4().hex[:8]}:ana@example.com"
    claim = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
    assert claim is not None

    assert await sweep(client, store, older_than=0) == SweepReport(ended=1)
    settled = status(store, claim)
    assert (settled.outcome, settled.attempts) == (ending, 1)
    # Never taken again, whatever the time.
    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    assert store.take_due(older_than=0, lease=60, now=tomorrow) == []
    assert f"open of step 'pause' not signalled: {ending} (no more tries)" in caplog.text
    # Run ids hold contact ids, often addresses: logs name neither.
    assert "ana@example.com" not in caplog.text and run_id not in caplog.text


async def test_a_failed_signal_is_tried_again_until_it_goes_out(
    database_url: str,
    store: HitStore,
    dev_env: WorkflowEnvironment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dee.server.sweeper")
    client = dev_env.client
    run_id = await waiting_run(client, database_url)
    claim = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
    assert claim is not None

    unreachable = await unreachable_temporal()
    assert await sweep(unreachable, store, older_than=0) == SweepReport(failed=1)
    failed = status(store, claim)
    assert failed.outcome is None and failed.attempts == 1
    assert failed.retry_at is not None and failed.retry_at > datetime.datetime.now(datetime.UTC)
    assert "1 tracking signal(s) failed (" in caplog.text and run_id not in caplog.text
    # It waits its turn (a second at least) even once Temporal is back.
    assert await sweep(client, store, older_than=0) == SweepReport()
    while datetime.datetime.now(datetime.UTC) <= failed.retry_at:
        await asyncio.sleep(0.1)
    assert await sweep(client, store, older_than=0) == SweepReport(signalled=1)
    assert [event.event_id for event in await signalled(client, run_id)] == [claim.event_id]
    assert status(store, claim).attempts == 2


async def test_two_servers_sweeping_one_database_signal_each_claim_once(
    database_url: str, dev_env: WorkflowEnvironment
) -> None:
    client = dev_env.client
    run_id = await waiting_run(client, database_url)
    with HitStore(database_url) as one, HitStore(database_url) as other:
        claims = [one.record_hit(run_id, kind="open", step_id="pause", visit=v) for v in range(30)]
        reports = await asyncio.gather(
            sweep(client, one, older_than=0, batch_size=4),
            sweep(client, other, older_than=0, batch_size=4),
        )
    assert sum(report.signalled for report in reports) == 30
    assert sum(report.total for report in reports) == 30
    events = await signalled(client, run_id)
    assert sorted(event.event_id for event in events) == sorted(c.event_id for c in claims if c)


async def test_the_run_counts_a_signal_sent_twice_once(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    client = dev_env.client
    settings = Settings(database_url=database, task_queue=task_queue)
    with SendLedger(database) as ledger, HitStore(database) as store:
        async with running_worker(client, task_queue=task_queue, settings=settings, ledger=ledger):
            run_id = await waiting_run(client, database, task_queue=task_queue)
            claim = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
            assert claim is not None
            # The signal went out, but the server died before it recorded so: swept again.
            assert await deliver(client, claim) == "signalled"
            assert await sweep(client, store, older_than=0) == SweepReport(signalled=1)

            # Signals that come while the worker has a task of the run's in hand show in the
            # history once it completes it.
            async with asyncio.timeout(20):
                while len(events := await signalled(client, run_id)) < 2:
                    await asyncio.sleep(0.1)
            assert [event.event_id for event in events] == [claim.event_id] * 2
            state = await run_state(client, run_id)
    assert [event.event_id for event in state.events] == [claim.event_id]
    assert [(c.type, c.step_id, c.count) for c in state.counts] == [("open", "pause", 1)]
    assert state.event_count == 1


async def test_the_server_sweeps_while_it_runs_and_stops_at_once(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dee.server.sweeper")
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    client = dev_env.client
    run_id = await waiting_run(client, database)
    settings = Settings(database_url=database, tracking_sweep_after=0.5)
    with HitStore(database) as store:
        # Kept by a server that died before it signalled.
        claim = store.record_hit(run_id, kind="open", step_id="pause", visit=1)
        assert claim is not None
        async with running_server(settings, client=client):
            async with asyncio.timeout(20):
                while status(store, claim).outcome is None:
                    await asyncio.sleep(0.1)
            stopping = time.monotonic()
        # No sweep was under way for long: shutdown did not wait on the sweeper.
        assert time.monotonic() - stopping < 5
        assert status(store, claim).outcome == "signalled"
    assert [event.event_id for event in await signalled(client, run_id)] == [claim.event_id]
    assert "signal sweep: 1 signalled, 0 for ended runs, 0 to try again" in caplog.text


async def test_a_failing_sweep_is_logged_and_tried_again_while_the_server_answers(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dee.server.sweeper")
    # The tracking database is down; the plans are elsewhere.
    down = f"postgresql://dee@127.0.0.1:{free_port()}/dee"
    settings = Settings(database_url=down, tracking_sweep_after=0.5)

    def failures() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "the signal sweep failed" in r.getMessage()
        ]

    with PlanRegistry(f"sqlite:///{tmp_path / 'dee.db'}") as registry:
        async with running_server(settings, client=dev_env.client, registry=registry) as server:
            async with asyncio.timeout(30):
                while len(failures()) < 2:
                    await asyncio.sleep(0.1)
            assert (await server.http.get("/docs")).status_code == 200
    assert (
        f"next try in {sweep_interval(0.5):g} s: cannot open the tracking database"
        in (failures()[1])
    )


@pytest.mark.parametrize(
    ("older_than", "interval"),
    [
        # The default: a pending claim is signalled 30 to 40 seconds after its hit.
        (30.0, 10.0),
        # Long grace periods still sweep every 10 seconds, short ones every second.
        (3600.0, 10.0),
        (6.0, 2.0),
        (0.5, 1.0),
    ],
)
def test_sweep_interval(older_than: float, interval: float) -> None:
    assert sweep_interval(older_than) == interval
