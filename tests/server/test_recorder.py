"""The hit recorder: hits kept in shared commits before their requests go on, and the keys
they take signalled at once, on real SQLite and PostgreSQL and the Temporal dev server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dee.server.hits import HitStore, HitStoreError, NewHit, SignalClaim
from dee.server.recorder import BATCH_SIZE, HitRecorder
from tests.server.test_sweeper import signalled, status, unreachable_temporal, waiting_run


class CountingStore(HitStore):
    """A real store that counts its commits of hits, and can fail the next ones."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.commits: list[int] = []
        self.failing = 0

    def record_hits(self, hits: Sequence[NewHit]) -> list[SignalClaim | None]:
        if self.failing:
            self.failing -= 1
            raise HitStoreError("the tracking database failed: disk I/O error")
        self.commits.append(len(hits))
        return super().record_hits(hits)


@pytest.fixture
def store(database_url: str) -> Iterator[CountingStore]:
    with CountingStore(database_url) as opened:
        yield opened


def recorder_of(client: Client, store: HitStore) -> HitRecorder:
    async def opened() -> HitStore:
        return store

    return HitRecorder(client, opened)


def opens(run_id: str, count: int, *, step_id: str = "pause") -> list[NewHit]:
    return [NewHit(run_id, "open", step_id=step_id, visit=1) for _ in range(count)]


async def test_hits_arriving_together_share_one_commit_that_their_requests_wait_for(
    store: CountingStore,
) -> None:
    recorder = recorder_of(await unreachable_temporal(), store)
    # Unsubscribes take no key, so nothing is signalled.
    hits = [
        NewHit(f"run-{index}:ana@example.com", "unsubscribe") for index in range(BATCH_SIZE + 100)
    ]

    async def request(hit: NewHit) -> int:
        await recorder.record(hit)
        # What the contact gets only comes now: the hit is on disk already.
        return len(await asyncio.to_thread(store.hits, hit.run_id))

    async with recorder.running():
        kept = await asyncio.gather(*(request(hit) for hit in hits))
    assert kept == [1] * len(hits)
    # Every request was waiting when the writer started: two full commits, not 600.
    assert store.commits == [BATCH_SIZE, 100]


async def test_a_failed_commit_fails_its_requests_and_the_next_commit_goes_on(
    store: CountingStore,
) -> None:
    recorder = recorder_of(await unreachable_temporal(), store)
    store.failing = 1
    async with recorder.running():
        results = await asyncio.gather(
            *(recorder.record(NewHit("a:ana@example.com", "unsubscribe")) for _ in range(3)),
            return_exceptions=True,
        )
        assert [type(result) for result in results] == [HitStoreError] * 3
        await recorder.record(NewHit("b:ana@example.com", "unsubscribe"))
    assert store.hits("a:ana@example.com") == []
    assert len(store.hits("b:ana@example.com")) == 1
    assert store.commits == [1]


async def test_a_request_that_goes_away_still_has_its_hit_kept(store: CountingStore) -> None:
    recorder = recorder_of(await unreachable_temporal(), store)
    async with recorder.running():
        request = asyncio.create_task(recorder.record(NewHit("a:ana@example.com", "unsubscribe")))
        await asyncio.sleep(0)
        # The contact hangs up while the commit is under way.
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert len(store.hits("a:ana@example.com")) == 1


async def test_a_burst_signals_its_key_at_once_and_once(
    database_url: str, store: CountingStore, dev_env: WorkflowEnvironment
) -> None:
    client = dev_env.client
    run_id = await waiting_run(client, database_url)
    other = await waiting_run(client, database_url)
    recorder = recorder_of(client, store)
    started = time.monotonic()
    async with recorder.running():
        await asyncio.gather(
            *(recorder.record(hit) for hit in [*opens(run_id, 40), *opens(other, 2)])
        )
        # No grace period: the signal leaves once the commit has taken the key.
        while len(await signalled(client, other)) < 1:
            assert time.monotonic() - started < 10, "the signal did not go out"
            await asyncio.sleep(0.05)
    assert [event.event_id for event in await signalled(client, run_id)] == [
        f"open:{run_id}:pause:1"
    ]
    assert len(await signalled(client, other)) == 1
    assert len(store.hits(run_id)) == 40
    assert store.commits == [42]
    # Recorded as signalled by the stage itself: no sweeper sends them again.
    for run in (run_id, other):
        settled = status(store, SignalClaim(run, "pause", 1, "open", ""))
        assert (settled.outcome, settled.attempts) == ("signalled", 0)


async def test_a_failed_signal_leaves_its_key_pending_for_the_sweeper(
    store: CountingStore,
) -> None:
    recorder = recorder_of(await unreachable_temporal(), store)
    async with recorder.running():
        await recorder.record(opens("gone:ana@example.com", 1)[0])
    pending = status(store, SignalClaim("gone:ana@example.com", "pause", 1, "open", ""))
    # Not postponed and no try counted: the sweeper takes it once its hit is old enough.
    assert (pending.outcome, pending.attempts, pending.retry_at) == (None, 0, None)
