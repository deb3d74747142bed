"""The tracking server's database: raw hits, the signals they sent, and the suppression list.

Every fetch of an open pixel, click on a tracked link and unsubscribe is kept as a
:class:`Hit` (run, step, visit, kind, URL, user agent, time), for people to look at with
:meth:`HitStore.hits`. IP addresses are not kept at all, not even hashed: an IPv4 hash is
reversed by trying all four billion addresses, and what a hit is needed for (did the
contact open, which link) does not need one.

A run hears of opens and clicks once, however often they happen. A pixel fetched a
thousand times, or a link that a mail filter scans, would otherwise add a signal to the
run's history each time. So :meth:`HitStore.record_hit` keeps the hit and, in the same
transaction, tries to insert the key ``(run, step, visit, kind)`` into ``tracking_signals``
(``INSERT ... ON CONFLICT DO NOTHING``): only the hit whose insert succeeds gets a
:class:`SignalClaim` and signals, with an event id derived from the key
(:func:`event_id`), so that the run drops a second signal for the key even when a race or
a retry sends one. :meth:`HitStore.record_hits` does the same for many hits in one
transaction, which is how the server keeps them (:mod:`dee.server.recorder`): of the hits of
one key in a batch only the first can take it, and keys are inserted in one statement, in
one order for every server. The caller gives the key back with :meth:`HitStore.release` when the
signal could not be delivered for a reason that may pass (Temporal unreachable), so a later
hit tries again; when the run has ended there is no one to tell and the key stays.

Run ids are reused: a later run of the same plan for the same contact has the same id, and
its emails the same tracking links. A key is therefore taken again when the run's step has
sent an email since the key was taken (the send ledger's ``sends`` table, in the same
database, says when), so the later run hears of its opens too. A run that loops through
the step may so get one more signal for an earlier visit, which it drops by its id.

A key also says whether its signal went out. The server signals after the transaction that
took the key, so a server that dies in between would leave a key taken and its signal never
sent, and every later hit of the key collapsed into it: the hit lost for good. So a key stays
*pending* until it is settled (:meth:`HitStore.settle`): ``signalled`` once Temporal has
accepted the signal, ``run-closed`` or ``run-not-found`` when there is no one left to tell.
Keys still pending a while after their hit are taken by the sweeper
(:meth:`HitStore.take_due`, :mod:`dee.server.sweeper`) in batches, each for a lease, with a
conditional update, so that of several servers sweeping one database one signals each key;
one that fails is tried again later (:meth:`HitStore.postpone`). A key is therefore signalled
at least once, and the run, dropping repeats by event id, counts it once.

A :class:`HitStore` is also the suppression list (:class:`dee.runs.suppressions.Suppressions`),
so an unsubscribe is kept as a hit and suppresses its address on the same connections.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from dee.runs.ledger import sends
from dee.runs.suppressions import SuppressionError, Suppressions
from dee.runs.unsubscribe import event_id
from dee.server._hit_types import (
    MAX_USER_AGENT,
    Hit,
    HitKind,
    NewHit,
    SignalClaim,
    SignalKind,
    SignalOutcome,
    SignalStatus,
)
from dee.server._tracking_tables import tracking_hits, tracking_signals
from dee.storage.database import as_utc
from dee.storage.store import database_errors

__all__ = [
    "MAX_USER_AGENT",
    "Hit",
    "HitKind",
    "HitStore",
    "HitStoreError",
    "NewHit",
    "SignalClaim",
    "SignalKind",
    "SignalOutcome",
    "SignalStatus",
    "event_id",
]


class HitStoreError(SuppressionError):
    """The tracking database (hits, signals, suppressions) failed."""


class HitStore(Suppressions):
    """Raw tracking hits, the keys that collapse them into one signal each, and the
    suppression list. ``url`` as for :class:`dee.PlanRegistry`."""

    label = "tracking database"
    error = HitStoreError

    def record_hit(
        self,
        run_id: str,
        *,
        kind: HitKind,
        step_id: str | None = None,
        visit: int | None = None,
        url: str | None = None,
        user_agent: str | None = None,
        execution: str | None = None,
    ) -> SignalClaim | None:
        """Keep one hit; a :class:`SignalClaim` if this hit is the one to signal the run.

        Opens and clicks need ``step_id`` and ``visit``; ``execution`` is the run execution
        the token names, if any: each execution's hits signal once. Unsubscribes are only kept: they
        are signalled to every run of the contact, and the run drops repeats by event id.
        """
        hit = NewHit(run_id, kind, step_id, visit, url, user_agent, execution)
        [claim] = self.record_hits([hit])
        return claim

    @database_errors
    def record_hits(self, hits: Sequence[NewHit]) -> list[SignalClaim | None]:
        """Keep ``hits`` in one transaction, in their order, as :meth:`record_hit` keeps one:
        for each, the :class:`SignalClaim` if it is the hit to signal its run. Of several
        hits of one key, only the first can take it."""
        if not hits:
            return []
        rows = [hit.row() for hit in hits]
        claims: list[SignalClaim | None] = [None] * len(hits)
        # The first hit of each key in the batch is the one that may take it.
        first: dict[tuple[str, str, str, int, str], int] = {}
        for index, hit in enumerate(hits):
            if hit.kind != "unsubscribe":
                first.setdefault(hit.key, index)
        with self._writing() as connection:
            ids = connection.execute(_INSERT_HITS, rows).scalars().all()
            if not first:
                return claims
            # Keys in one order for every server, so two batches never wait on each other.
            taking = sorted(first.items())
            candidates = [(hits[index].claim(uuid.uuid4().hex), ids[index]) for _, index in taking]
            taken = _take_keys(connection, candidates)
            for (key, index), (claim, hit_id) in zip(taking, candidates, strict=True):
                if key in taken or _retake(connection, claim, hit_id=hit_id):
                    claims[index] = claim
        return claims

    @database_errors
    def release(self, claim: SignalClaim) -> None:
        """Give back a claim whose signal failed, so the next hit of its key signals; a
        claim that another hit has taken since is left alone."""
        with self._writing() as connection:
            connection.execute(
                delete(tracking_signals).where(
                    *_key(claim), tracking_signals.c.claim == claim.claim
                )
            )

    @database_errors
    def settle(self, settled: Sequence[tuple[SignalClaim, SignalOutcome]]) -> int:
        """Record how the signals of ``settled`` ended; the keys no longer wait for one. A
        claim that another hit has taken since, or that is settled already, is left alone;
        returns how many were settled now."""
        if not settled:
            return 0
        now = datetime.datetime.now(datetime.UTC)
        rows = [
            {**_key_parameters(claim), "k_outcome": outcome, "k_done_at": now}
            for claim, outcome in settled
        ]
        with self._writing() as connection:
            return connection.execute(_SETTLE, rows).rowcount

    @database_errors
    def take_due(
        self,
        *,
        older_than: float,
        lease: float,
        limit: int = 100,
        now: datetime.datetime | None = None,
        due_at: datetime.datetime | None = None,
    ) -> list[SignalClaim]:
        """Take up to ``limit`` pending keys, oldest first, that are due at ``due_at``
        (default ``now``, itself the present by default): whose hit was ``older_than``
        seconds before, that no sweeper holds and no failed try postponed past it. Hold
        them for ``lease`` seconds from ``now``: a sweeper that takes a key is the one to
        signal it, until it settles or postpones the key, or the lease runs out (it died
        meanwhile). A sweep gives its start as ``due_at``, so it takes no key twice however
        long it lasts.

        Taking is a conditional update: on SQLite under the write lock, on PostgreSQL of
        rows locked ``FOR UPDATE SKIP LOCKED``, so sweepers on one database take disjoint
        keys. Each taken claim counts an attempt.
        """
        now = now or datetime.datetime.now(datetime.UTC)
        due_at = due_at or now
        signals = tracking_signals.c
        due = (
            signals.done_at.is_(None),
            signals.at <= due_at - datetime.timedelta(seconds=older_than),
            or_(signals.retry_at.is_(None), signals.retry_at <= due_at),
        )
        # A read first: most sweeps find nothing, and need not queue for the write lock.
        with self._engine.connect() as connection:
            if connection.execute(select(literal(1)).where(*due).limit(1)).first() is None:
                return []
        with self._writing() as connection:
            rows = connection.execute(
                select(tracking_signals, tracking_hits.c.url)
                .outerjoin(tracking_hits, tracking_hits.c.id == signals.hit_id)
                .where(*due)
                .order_by(signals.at)
                .limit(limit)
                .with_for_update(of=tracking_signals, skip_locked=True)
            ).all()
            claims = [
                SignalClaim(
                    row.run_id,
                    row.step_id,
                    row.visit,
                    row.kind,
                    row.claim,
                    row.execution,
                    url=row.url,
                    at=as_utc(row.at),
                    attempts=row.attempts + 1,
                )
                for row in rows
            ]
            if claims:
                until = now + datetime.timedelta(seconds=lease)
                connection.execute(
                    update(tracking_signals)
                    .where(*_KEY_PARAMETERS)
                    .values(attempts=signals.attempts + 1, retry_at=until),
                    [_key_parameters(claim) for claim in claims],
                )
        return claims

    @database_errors
    def postpone(self, postponed: Sequence[tuple[SignalClaim, datetime.datetime]]) -> None:
        """Let no sweeper take these pending keys again before the time given with each
        (their signal failed, and may succeed later)."""
        if not postponed:
            return
        statement = (
            update(tracking_signals)
            .where(*_KEY_PARAMETERS, tracking_signals.c.done_at.is_(None))
            .values(retry_at=bindparam("k_retry_at"))
        )
        rows = [{**_key_parameters(claim), "k_retry_at": at} for claim, at in postponed]
        with self._writing() as connection:
            connection.execute(statement, rows)

    @database_errors
    def signal_status(
        self,
        run_id: str,
        *,
        step_id: str,
        visit: int,
        kind: SignalKind,
        execution: str | None = None,
    ) -> SignalStatus | None:
        """Where the signal of key ``(run_id, execution, step_id, visit, kind)`` stands;
        ``None`` when no hit holds the key."""
        claim = SignalClaim(run_id, step_id, visit, kind, "", execution or "")
        signals = tracking_signals.c
        with self._engine.connect() as connection:
            row = connection.execute(
                select(
                    signals.claim,
                    signals.at,
                    signals.outcome,
                    signals.done_at,
                    signals.attempts,
                    signals.retry_at,
                ).where(*_key(claim))
            ).first()
        if row is None:
            return None
        return SignalStatus(
            claim=row.claim,
            at=as_utc(row.at),
            outcome=row.outcome,
            done_at=as_utc(row.done_at) if row.done_at is not None else None,
            attempts=row.attempts,
            retry_at=as_utc(row.retry_at) if row.retry_at is not None else None,
        )

    @database_errors
    def is_signalled(
        self,
        run_id: str,
        *,
        step_id: str,
        visit: int,
        kind: SignalKind,
        execution: str | None = None,
    ) -> bool:
        """Whether a hit holds the key ``(run_id, execution, step_id, visit, kind)`` (its
        signal may still be pending: see :meth:`signal_status`)."""
        found = self.signal_status(
            run_id, step_id=step_id, visit=visit, kind=kind, execution=execution
        )
        return found is not None

    @database_errors
    def hits(self, run_id: str, *, limit: int = 1000) -> list[Hit]:
        """The first ``limit`` hits of run ``run_id``, in the order they arrived."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(tracking_hits)
                .where(tracking_hits.c.run_id == run_id)
                .order_by(tracking_hits.c.id)
                .limit(limit)
            ).all()
        return [
            Hit(
                id=values["id"],
                run_id=values["run_id"],
                step_id=values["step_id"],
                visit=values["visit"],
                kind=values["kind"],
                url=values["url"],
                user_agent=values["user_agent"],
                at=as_utc(values["at"]),
                execution=values["execution"],
            )
            for values in (row._mapping for row in rows)
        ]


#: A key taken again by a later run's hit waits for its signal afresh.
_PENDING_AGAIN: Final = {"done_at": None, "outcome": None, "attempts": 0, "retry_at": None}

#: A claim's key and token as bound parameters, for statements run once per claim.
_KEY_PARAMETERS: Final = (
    tracking_signals.c.run_id == bindparam("k_run_id"),
    tracking_signals.c.execution == bindparam("k_execution"),
    tracking_signals.c.step_id == bindparam("k_step_id"),
    tracking_signals.c.visit == bindparam("k_visit"),
    tracking_signals.c.kind == bindparam("k_kind"),
    tracking_signals.c.claim == bindparam("k_claim"),
)

#: Settling pending keys, one row of parameters per claim; built once (see :meth:`settle`).
_SETTLE: Final = (
    update(tracking_signals)
    .where(*_KEY_PARAMETERS, tracking_signals.c.done_at.is_(None))
    .values(done_at=bindparam("k_done_at"), outcome=bindparam("k_outcome"))
)


def _key_parameters(claim: SignalClaim) -> dict[str, Any]:
    return {
        "k_run_id": claim.run_id,
        "k_execution": claim.execution,
        "k_step_id": claim.step_id,
        "k_visit": claim.visit,
        "k_kind": claim.kind,
        "k_claim": claim.claim,
    }


def _key(claim: SignalClaim) -> tuple[Any, ...]:
    return (
        tracking_signals.c.run_id == claim.run_id,
        tracking_signals.c.execution == claim.execution,
        tracking_signals.c.step_id == claim.step_id,
        tracking_signals.c.visit == claim.visit,
        tracking_signals.c.kind == claim.kind,
    )


#: A key's columns, in the order of :attr:`NewHit.key`.
_KEY_COLUMNS: Final = (
    tracking_signals.c.run_id,
    tracking_signals.c.execution,
    tracking_signals.c.step_id,
    tracking_signals.c.visit,
    tracking_signals.c.kind,
)


#: Inserting keys unless held, per dialect: built once, they are not built again per batch.
_TAKE_KEYS: Final[dict[str, Any]] = {
    name: dialect.insert(tracking_signals)
    .on_conflict_do_nothing(index_elements=list(_KEY_COLUMNS))
    .returning(*_KEY_COLUMNS)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
#: Inserting hits, their ids back in the order of the rows.
_INSERT_HITS: Final = insert(tracking_hits).returning(
    tracking_hits.c.id, sort_by_parameter_order=True
)


def _take_keys(
    connection: Connection, taking: Sequence[tuple[SignalClaim, int]]
) -> set[tuple[Any, ...]]:
    """Insert the keys of ``taking`` (each claim with the id of its hit) that no hit holds
    yet, in one statement; the keys it inserted."""
    rows = [
        {
            "run_id": claim.run_id,
            "execution": claim.execution,
            "step_id": claim.step_id,
            "visit": claim.visit,
            "kind": claim.kind,
            "claim": claim.claim,
            "at": claim.at,
            "hit_id": hit_id,
        }
        for claim, hit_id in taking
    ]
    # ON CONFLICT DO NOTHING: on PostgreSQL a failed INSERT would abort the transaction. As
    # an executemany (SQLAlchemy sends it as multi-row INSERTs) its SQL is compiled once;
    # a statement with the rows in it would be compiled again for every batch.
    inserted = connection.execute(_TAKE_KEYS[connection.dialect.name], rows).all()
    return {tuple(row) for row in inserted}


def _retake(connection: Connection, claim: SignalClaim, *, hit_id: int) -> bool:
    """Whether ``claim``'s hit takes its key again from the hit holding it: only a token
    that names no execution does, when a later run under the same id (or visit) has sent
    the step since the key was taken."""
    if claim.execution:
        return False
    held = connection.execute(
        select(tracking_signals.c.claim, tracking_signals.c.at).where(*_key(claim))
    ).first()
    if held is None:
        # Given back a moment ago by a hit whose signal failed: the next one retries.
        return False
    latest_send = connection.execute(
        select(func.max(sends.c.created_at)).where(
            sends.c.run_id == claim.run_id, sends.c.step_id == claim.step_id
        )
    ).scalar()
    if latest_send is None or as_utc(latest_send) <= as_utc(held.at):
        return False
    retaken = connection.execute(
        update(tracking_signals)
        .where(*_key(claim), tracking_signals.c.claim == held.claim)
        .values(claim=claim.claim, at=claim.at, hit_id=hit_id, **_PENDING_AGAIN)
    )
    return bool(retaken.rowcount == 1)
