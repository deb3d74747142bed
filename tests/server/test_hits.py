"""The tracking database (hits, signal keys, suppressions) on real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from dee.runs.ledger import SendLedger
from dee.runs.suppressions import Suppressions
from dee.server.hits import (
    MAX_USER_AGENT,
    HitStore,
    HitStoreError,
    NewHit,
    SignalClaim,
    SignalStatus,
    event_id,
)
from dee.storage.database import alembic_config, make_engine, resolve_url, write_transaction
from tests.helpers.db import drop_table

RUN = "intro:ana@example.com"
LINK = "https://example.com/pricing"


@pytest.fixture
def store(database_url: str) -> Iterator[HitStore]:
    with HitStore(database_url) as opened:
        yield opened


def test_the_first_hit_of_a_key_signals_and_every_hit_is_kept(store: HitStore) -> None:
    first = store.record_hit(RUN, kind="open", step_id="intro", visit=1, user_agent="Mail/1.0")
    assert first == SignalClaim(RUN, "intro", 1, "open", first.claim if first else "")
    assert first is not None and first.event_id == f"open:{RUN}:intro:1"
    for _ in range(4):
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None
    assert store.is_signalled(RUN, step_id="intro", visit=1, kind="open")

    hits = store.hits(RUN)
    assert [(hit.kind, hit.step_id, hit.visit) for hit in hits] == [("open", "intro", 1)] * 5
    assert hits[0].user_agent == "Mail/1.0" and hits[1].user_agent is None
    assert [hit.id for hit in hits] == sorted(hit.id for hit in hits)
    assert all(hit.at.tzinfo is not None for hit in hits)
    assert hits[0].at <= hits[-1].at
    assert store.hits(RUN, limit=2) == hits[:2]
    assert store.hits("other:run") == []


def test_each_execution_of_a_run_id_signals_once(store: HitStore) -> None:
    first = store.record_hit(RUN, kind="open", step_id="intro", visit=1, execution="exec-1")
    assert first is not None and first.execution == "exec-1"
    assert first.event_id == f"open:{RUN}:intro:1:exec-1"
    assert store.record_hit(RUN, kind="open", step_id="intro", visit=1, execution="exec-1") is None
    # The same email of a later run under the same id: its own key, its own signal.
    second = store.record_hit(RUN, kind="open", step_id="intro", visit=1, execution="exec-2")
    assert second is not None and second.event_id != first.event_id
    assert store.record_hit(RUN, kind="open", step_id="intro", visit=1, execution="exec-2") is None
    assert store.is_signalled(RUN, step_id="intro", visit=1, kind="open", execution="exec-2")
    assert not store.is_signalled(RUN, step_id="intro", visit=1, kind="open", execution="exec-3")
    assert [hit.execution for hit in store.hits(RUN)] == ["exec-1"] * 2 + ["exec-2"] * 2


@pytest.mark.parametrize(
    ("kind", "step_id", "visit"),
    [
        # Another kind of hit on the same email.
        ("click", "intro", 1),
        # The same email sent again on a later visit of its step.
        ("open", "intro", 2),
        # Another email of the run.
        ("open", "follow-up", 1),
    ],
)
def test_each_kind_step_and_visit_is_its_own_key(
    store: HitStore, kind: str, step_id: str, visit: int
) -> None:
    assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is not None
    assert store.record_hit(RUN, kind=kind, step_id=step_id, visit=visit) is not None  # type: ignore[arg-type]
    assert store.record_hit("intro:bob@example.com", kind="open", step_id="intro", visit=1)


def test_clicks_keep_their_url(store: HitStore) -> None:
    store.record_hit(RUN, kind="click", step_id="intro", visit=1, url="https://a.example/x")
    store.record_hit(RUN, kind="click", step_id="intro", visit=1, url="https://b.example/y")
    assert [hit.url for hit in store.hits(RUN)] == ["https://a.example/x", "https://b.example/y"]


def test_a_released_key_is_taken_by_the_next_hit(store: HitStore) -> None:
    first = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert first is not None
    store.release(first)
    assert not store.is_signalled(RUN, step_id="intro", visit=1, kind="open")
    second = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert second is not None and second.claim != first.claim
    # A stale release (the first hit's, after the second took the key) changes nothing.
    store.release(first)
    assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None


def test_a_later_run_with_the_same_id_signals_again(database_url: str) -> None:
    with HitStore(database_url) as store, SendLedger(database_url) as ledger:
        ledger.claim("m-first", run_id=RUN, step_id="intro", channel="email")
        first = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
        assert first is not None
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None
        store.settle([(first, "signalled")])
        # The run ended; a new one under the same id sends the step's email again.
        ledger.claim("m-second", run_id=RUN, step_id="intro", channel="email")
        again = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
        assert again is not None
        # Taken again, the key waits for the later run's signal afresh.
        assert _status(store, again).outcome is None
        assert store.take_due(older_than=0, lease=60) == [again]
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None
        # Another step's sends do not count.
        ledger.claim("m-other", run_id=RUN, step_id="follow-up", channel="email")
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None


def test_concurrent_hits_signal_once(store: HitStore) -> None:
    start = threading.Barrier(8)

    def hit(_index: int) -> SignalClaim | None:
        start.wait()
        return store.record_hit(RUN, kind="click", step_id="intro", visit=1)

    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(hit, range(8)))
    assert len([claim for claim in claims if claim is not None]) == 1
    assert len(store.hits(RUN)) == 8


def test_a_batch_keeps_every_hit_in_order_and_each_key_signals_once(store: HitStore) -> None:
    held = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert held is not None
    batch = [
        # The first of a new key takes it; the second of the batch collapses into it.
        NewHit(RUN, "click", step_id="intro", visit=1, url=LINK, user_agent="A"),
        NewHit(RUN, "click", step_id="intro", visit=1, url=LINK, user_agent="B"),
        # A key that an earlier commit took.
        NewHit(RUN, "open", step_id="intro", visit=1),
        # Kept, never a key.
        NewHit(RUN, "unsubscribe"),
        # Another visit, another execution: keys of their own.
        NewHit(RUN, "open", step_id="intro", visit=2),
        NewHit(RUN, "open", step_id="intro", visit=1, execution="exec-2"),
    ]
    claims = store.record_hits(batch)
    assert [claim is not None for claim in claims] == [True, False, False, False, True, True]
    click, _, _, _, second_visit, execution = claims
    assert click is not None and (click.kind, click.url, click.at) == ("click", LINK, batch[0].at)
    assert second_visit is not None and second_visit.visit == 2
    assert execution is not None and execution.execution == "exec-2"
    hits = store.hits(RUN)
    assert [(hit.kind, hit.visit, hit.user_agent) for hit in hits] == [
        ("open", 1, None),
        ("click", 1, "A"),
        ("click", 1, "B"),
        ("open", 1, None),
        ("unsubscribe", None, None),
        ("open", 2, None),
        ("open", 1, None),
    ]
    # Each key is held by the hit that took it, for the sweeper to read the click's link.
    assert store.take_due(older_than=0, lease=60) == [held, click, second_visit, execution]
    assert store.record_hits([]) == []


def test_concurrent_batches_signal_each_key_once(store: HitStore) -> None:
    start = threading.Barrier(4)

    def batch(index: int) -> list[SignalClaim | None]:
        start.wait()
        # Each batch holds the same keys in another order.
        visits = [*range(1, 6)][index:] + [*range(1, 6)][:index]
        return store.record_hits([NewHit(RUN, "open", step_id="intro", visit=v) for v in visits])

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(batch, range(4)))
    taken = sorted(claim.visit for claims in batches for claim in claims if claim is not None)
    assert taken == [1, 2, 3, 4, 5]
    assert len(store.hits(RUN)) == 20


def test_unsubscribes_are_kept_and_never_claim(store: HitStore) -> None:
    assert store.record_hit(RUN, kind="unsubscribe", user_agent="x") is None
    [hit] = store.hits(RUN)
    assert (hit.kind, hit.step_id, hit.visit, hit.url) == ("unsubscribe", None, None, None)


def test_long_user_agents_are_cut(store: HitStore) -> None:
    store.record_hit(RUN, kind="open", step_id="intro", visit=1, user_agent="x" * 5000)
    [hit] = store.hits(RUN)
    assert hit.user_agent == "x" * MAX_USER_AGENT


def test_refuses_hits_it_cannot_key(store: HitStore) -> None:
    with pytest.raises(ValueError, match="needs its step_id and visit"):
        store.record_hit(RUN, kind="open", step_id="intro")
    with pytest.raises(ValueError, match="kind 'view' is unknown"):
        store.record_hit(RUN, kind="view", step_id="intro", visit=1)  # type: ignore[arg-type]


def test_event_ids() -> None:
    assert event_id("open", "p:c", "intro", 2) == "open:p:c:intro:2"
    assert event_id("unsubscribe", "p:c") == "unsubscribe:p:c"
    # Each execution of a run id has its own ids: the same hit of a later run is new.
    assert event_id("open", "p:c", "intro", 2, "e-1") == "open:p:c:intro:2:e-1"
    assert event_id("open", "p:c", "intro", 2, "e-1") != event_id("open", "p:c", "intro", 2, "e-2")
    # Run ids may be 251 characters; a run takes event ids of at most 200.
    long_run = "p:" + "c" * 249
    long = event_id("click", long_run, "intro", 1)
    assert long.startswith("click:") and len(long) == len("click:") + 64
    assert long == event_id("click", long_run, "intro", 1) != event_id("click", long_run, "x", 1)


# -- suppressions ---------------------------------------------------------------------------


def test_suppress_is_idempotent_and_ignores_case(store: HitStore) -> None:
    assert not store.is_suppressed("ana@example.com")
    assert store.suppression("ana@example.com") is None
    assert store.suppress(" Ana@Example.COM ", reason="unsubscribe", run_id=RUN) is True
    assert store.suppress("ana@example.com", reason="bounce") is False
    assert store.is_suppressed("ANA@example.com")
    suppression = store.suppression("ana@EXAMPLE.com")
    assert suppression is not None
    # The first reason and run are kept.
    assert (suppression.address, suppression.reason, suppression.run_id) == (
        "ana@example.com",
        "unsubscribe",
        RUN,
    )
    assert suppression.at.tzinfo is not None
    assert not store.is_suppressed("bob@example.com")


def test_unknown_reason_is_refused(store: HitStore) -> None:
    with pytest.raises(ValueError, match="reason 'complaint' is unknown"):
        store.suppress("ana@example.com", reason="complaint")  # type: ignore[arg-type]


def test_the_worker_reads_suppressions_through_the_ledger(database_url: str) -> None:
    with SendLedger(database_url) as ledger, HitStore(database_url) as store:
        shared = Suppressions.sharing(ledger)
        assert not shared.is_suppressed("ana@example.com")
        store.suppress("ana@example.com", reason="spamreport")
        assert shared.is_suppressed("Ana@example.com")
        # Closing the borrowed view leaves the ledger's connections open.
        shared.close()
        assert ledger.claim("m1", run_id=RUN, step_id="intro", channel="email") == "claimed"
        assert shared.is_suppressed("ana@example.com")


# -- schema ---------------------------------------------------------------------------------


def test_migration_0003_goes_both_ways(database_url: str) -> None:
    HitStore(database_url).close()
    revision = ScriptDirectory.from_config(alembic_config()).get_revision("0003")
    assert revision is not None and revision.down_revision == "0002"
    engine = make_engine(resolve_url(database_url))
    tables = {"tracking_hits", "tracking_signals", "suppressions"}
    try:
        assert tables <= set(inspect(engine).get_table_names())
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0002")
        assert not tables & set(inspect(engine).get_table_names())
        assert "sends" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    with HitStore(database_url) as store:
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is not None


def test_database_failure_is_a_hit_store_error(store: HitStore, database_url: str) -> None:
    drop_table(database_url, "tracking_hits")
    with pytest.raises(HitStoreError, match="the tracking database .* failed"):
        store.record_hit(RUN, kind="open", step_id="intro", visit=1)


# -- whether each key's signal went out -----------------------------------------------------


def _status(store: HitStore, claim: SignalClaim) -> SignalStatus:
    status = store.signal_status(
        claim.run_id,
        step_id=claim.step_id,
        visit=claim.visit,
        kind=claim.kind,
        execution=claim.execution,
    )
    assert status is not None
    return status


def test_a_key_is_pending_until_its_signal_is_settled(store: HitStore) -> None:
    claim = store.record_hit(RUN, kind="click", step_id="intro", visit=1, url=LINK)
    assert claim is not None and claim.url == LINK and claim.at is not None
    assert claim.details == {"url": LINK}
    pending = _status(store, claim)
    assert (pending.claim, pending.at, pending.outcome, pending.done_at) == (
        claim.claim,
        claim.at,
        None,
        None,
    )
    assert (pending.attempts, pending.retry_at) == (0, None)
    assert store.settle([(claim, "signalled")]) == 1
    done = _status(store, claim)
    assert done.outcome == "signalled" and done.done_at is not None
    assert done.done_at >= claim.at
    # Settled once: a second record (the sweeper's, after the request path's) changes nothing.
    assert store.settle([(claim, "run-closed")]) == 0
    assert _status(store, claim).outcome == "signalled"
    assert store.take_due(older_than=0, lease=60) == []
    assert store.signal_status("other:run", step_id="intro", visit=1, kind="click") is None


def test_due_keys_are_taken_oldest_first_and_held_for_a_lease(store: HitStore) -> None:
    click = store.record_hit(RUN, kind="click", step_id="intro", visit=1, url=LINK)
    opened = store.record_hit(RUN, kind="open", step_id="intro", visit=1, execution="e-1")
    settled = store.record_hit(RUN, kind="open", step_id="intro", visit=2)
    assert click and opened and settled
    store.settle([(settled, "signalled")])
    # Not yet due: the server that took them may still be signalling.
    assert store.take_due(older_than=3600, lease=60) == []

    taken = store.take_due(older_than=0, lease=60)
    assert taken == [click, opened]
    assert [(c.url, c.at, c.attempts) for c in taken] == [
        (LINK, click.at, 1),
        (None, opened.at, 1),
    ]
    assert taken[1].event_id == opened.event_id == f"open:{RUN}:intro:1:e-1"
    # Held: neither this sweeper nor another takes them again while the lease lasts.
    assert store.take_due(older_than=0, lease=60) == []
    status = _status(store, click)
    assert status.outcome is None and status.attempts == 1 and status.retry_at is not None
    # The sweeper died: once its lease is over, they are taken again.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=61)
    again = store.take_due(older_than=0, lease=60, now=later)
    assert again == [click, opened] and [c.attempts for c in again] == [2, 2]
    assert store.take_due(older_than=0, lease=60, limit=1) == []
    # Settled in one go, the one settled before left as it was.
    assert store.settle([(c, "signalled") for c in (click, opened, settled)]) == 2


def test_a_postponed_key_waits_until_its_time(store: HitStore) -> None:
    claim = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert claim is not None
    [taken] = store.take_due(older_than=0, lease=600)
    now = datetime.datetime.now(datetime.UTC)
    store.postpone([(taken, now + datetime.timedelta(seconds=30))])
    assert _status(store, claim).retry_at == now + datetime.timedelta(seconds=30)
    assert store.take_due(older_than=0, lease=600, now=now + datetime.timedelta(seconds=29)) == []
    [retried] = store.take_due(older_than=0, lease=600, now=now + datetime.timedelta(seconds=31))
    assert retried == claim and retried.attempts == 2
    # Its try failed again, to be retried at +40 s. A sweep that started at +35 s does not
    # take it in a batch at +50 s (it took it once already); a sweep started later does.
    store.postpone([(retried, now + datetime.timedelta(seconds=40))])
    started, later = (now + datetime.timedelta(seconds=s) for s in (35, 50))
    assert store.take_due(older_than=0, lease=600, now=later, due_at=started) == []
    assert store.take_due(older_than=0, lease=600, now=later) == [claim]
    # A settled key is never postponed back into the queue.
    store.settle([(retried, "run-not-found")])
    store.postpone([(retried, now)])
    assert _status(store, claim).outcome == "run-not-found"
    assert store.take_due(older_than=0, lease=600, now=now + datetime.timedelta(days=1)) == []


def test_a_given_back_key_is_not_settled_by_its_old_claim(store: HitStore) -> None:
    first = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert first is not None
    store.release(first)
    second = store.record_hit(RUN, kind="open", step_id="intro", visit=1)
    assert second is not None
    assert store.settle([(first, "signalled")]) == 0
    assert _status(store, second).outcome is None
    assert store.take_due(older_than=0, lease=60) == [second]


def test_replicas_sweeping_one_database_take_each_key_once(database_url: str) -> None:
    with HitStore(database_url) as one, HitStore(database_url) as other:
        claims = [one.record_hit(RUN, kind="open", step_id="intro", visit=v) for v in range(40)]
        start = threading.Barrier(8)

        def take(index: int) -> list[SignalClaim]:
            store = (one, other)[index % 2]
            start.wait()
            return store.take_due(older_than=0, lease=60, limit=10)

        with ThreadPoolExecutor(8) as pool:
            taken = [claim for batch in pool.map(take, range(8)) for claim in batch]
    # Eight takers of ten could take 80: each of the 40 keys went to exactly one.
    assert sorted(claim.visit for claim in taken) == list(range(40))
    assert {claim.claim for claim in taken} == {claim.claim for claim in claims if claim}


def test_migration_0010_takes_earlier_keys_as_signalled(database_url: str) -> None:
    at = datetime.datetime(2026, 1, 2, 10, 0, tzinfo=datetime.UTC)
    engine = make_engine(resolve_url(database_url))
    try:
        with write_transaction(engine) as connection:
            command.upgrade(alembic_config(connection), "0009")
            connection.execute(
                text(
                    "INSERT INTO tracking_signals (run_id, execution, step_id, visit, kind, "
                    "claim, at) VALUES (:run, '', 'intro', 1, 'open', 'c0ffee', :at)"
                ),
                {"run": RUN, "at": at},
            )
    finally:
        engine.dispose()
    with HitStore(database_url) as store:
        status = store.signal_status(RUN, step_id="intro", visit=1, kind="open")
        assert status == SignalStatus("c0ffee", at, "signalled", at, 0, None)
        assert store.take_due(older_than=0, lease=60) == []
        # Still collapsed: a later hit of the key does not signal again.
        assert store.record_hit(RUN, kind="open", step_id="intro", visit=1) is None
        pending = store.record_hit(RUN, kind="open", step_id="intro", visit=2)
        assert pending is not None
    engine = make_engine(resolve_url(database_url))
    try:
        with write_transaction(engine) as connection:
            command.downgrade(alembic_config(connection), "0009")
        columns = {column["name"] for column in inspect(engine).get_columns("tracking_signals")}
        assert "done_at" not in columns and "claim" in columns
    finally:
        engine.dispose()
    with HitStore(database_url) as store:
        # Upgraded again, the pending key of before the downgrade counts as signalled too.
        assert store.take_due(older_than=0, lease=60) == []
        assert store.record_hit(RUN, kind="click", step_id="intro", visit=1) is not None
    engine = make_engine(resolve_url(database_url))
    try:
        for refused in [
            # An outcome of no known kind.
            "outcome = 'lost', done_at = at",
            # Settled without a time, or a time without an outcome.
            "outcome = 'signalled'",
            "done_at = at",
        ]:
            with pytest.raises(IntegrityError), write_transaction(engine) as connection:
                connection.execute(text(f"UPDATE tracking_signals SET {refused}"))
    finally:
        engine.dispose()
