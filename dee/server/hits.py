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
a retry sends one. The caller gives the key back with :meth:`HitStore.release` when the
signal could not be delivered for a reason that may pass (Temporal unreachable), so a later
hit tries again; when the run has ended there is no one to tell and the key stays.

Run ids are reused: a later run of the same plan for the same contact has the same id, and
its emails the same tracking links. A key is therefore taken again when the run's step has
sent an email since the key was taken (the send ledger's ``sends`` table, in the same
database, says when), so the later run hears of its opens too. A run that loops through
the step may so get one more signal for an earlier visit, which it drops by its id.

A :class:`HitStore` is also the suppression list (:class:`dee.runs.suppressions.Suppressions`),
so an unsubscribe is kept as a hit and suppresses its address on the same connections.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from dee.runs.ledger import sends
from dee.runs.suppressions import SuppressionError, Suppressions
from dee.runs.unsubscribe import event_id
from dee.storage.database import as_utc, insert_if_absent, metadata
from dee.storage.store import database_errors

__all__ = [
    "Hit",
    "HitKind",
    "HitStore",
    "HitStoreError",
    "SignalClaim",
    "SignalKind",
    "event_id",
]

HitKind: TypeAlias = Literal["open", "click", "unsubscribe"]
SignalKind: TypeAlias = Literal["open", "click"]

HIT_KINDS: Final = ("open", "click", "unsubscribe")
#: Longest user agent kept; the rest is cut.
MAX_USER_AGENT: Final = 500

#: Mirror migrations 0003 and 0006; change only together with a new migration.
tracking_hits = Table(
    "tracking_hits",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(400), nullable=False),
    Column("step_id", String(100), nullable=True),
    Column("visit", Integer, nullable=True),
    Column("kind", String(12), nullable=False),
    Column("url", Text, nullable=True),
    Column("user_agent", String(500), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("execution", String(64), nullable=True),
    CheckConstraint("kind IN ('open', 'click', 'unsubscribe')", name="ck_tracking_hits_kind"),
    Index("ix_tracking_hits_run_id", "run_id", "id"),
)
tracking_signals = Table(
    "tracking_signals",
    metadata,
    Column("run_id", String(400), primary_key=True),
    Column("execution", String(64), primary_key=True),
    Column("step_id", String(100), primary_key=True),
    Column("visit", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(12), primary_key=True),
    Column("claim", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    CheckConstraint("kind IN ('open', 'click')", name="ck_tracking_signals_kind"),
)


class HitStoreError(SuppressionError):
    """The tracking database (hits, signals, suppressions) failed."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One fetch of a pixel, click on a link, or unsubscribe, as it arrived."""

    id: int
    run_id: str
    step_id: str | None
    visit: int | None
    kind: HitKind
    url: str | None
    user_agent: str | None
    at: datetime.datetime
    #: The run execution the hit's token named, if any.
    execution: str | None = None


@dataclass(frozen=True, slots=True)
class SignalClaim:
    """The right to signal ``kind`` for one run execution, step and visit, held by one hit.
    ``execution`` is ``""`` for a token that names none."""

    run_id: str
    step_id: str
    visit: int
    kind: SignalKind
    claim: str
    execution: str = ""

    @property
    def event_id(self) -> str:
        return event_id(self.kind, self.run_id, self.step_id, self.visit, self.execution)


class HitStore(Suppressions):
    """Raw tracking hits, the keys that collapse them into one signal each, and the
    suppression list. ``url`` as for :class:`dee.PlanRegistry`."""

    label = "tracking database"
    error = HitStoreError

    @database_errors
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
        if kind not in HIT_KINDS:
            raise ValueError(f"kind {kind!r} is unknown; expected one of {HIT_KINDS}")
        if kind != "unsubscribe" and (step_id is None or visit is None):
            raise ValueError(f"a {kind} hit needs its step_id and visit")
        now = datetime.datetime.now(datetime.UTC)
        hit = {
            "run_id": run_id,
            "step_id": step_id,
            "visit": visit,
            "kind": kind,
            "url": url,
            "user_agent": user_agent[:MAX_USER_AGENT] if user_agent else None,
            "at": now,
            "execution": execution,
        }
        with self._writing() as connection:
            connection.execute(insert(tracking_hits).values(hit))
            if kind == "unsubscribe":
                return None
            assert step_id is not None and visit is not None
            claim = SignalClaim(run_id, step_id, visit, kind, uuid.uuid4().hex, execution or "")
            key = _key(claim)
            row = {
                "run_id": run_id,
                "execution": claim.execution,
                "step_id": step_id,
                "visit": visit,
                "kind": kind,
                "claim": claim.claim,
                "at": now,
            }
            keys = [
                tracking_signals.c.run_id,
                tracking_signals.c.execution,
                tracking_signals.c.step_id,
                tracking_signals.c.visit,
                tracking_signals.c.kind,
            ]
            taken = insert_if_absent(connection, tracking_signals, row, keys=keys)
            if taken:
                return claim
            held = connection.execute(
                select(tracking_signals.c.claim, tracking_signals.c.at).where(*key)
            ).first()
            if held is None:
                # Given back a moment ago by a hit whose signal failed: the next one retries.
                return None
            # A token that names no execution: a later run under the same id (or visit)
            # may have sent this step since, and then takes the key again.
            latest_send = connection.execute(
                select(func.max(sends.c.created_at)).where(
                    sends.c.run_id == run_id, sends.c.step_id == step_id
                )
            ).scalar()
            if claim.execution or latest_send is None or as_utc(latest_send) <= as_utc(held.at):
                return None
            retaken = connection.execute(
                update(tracking_signals)
                .where(*key, tracking_signals.c.claim == held.claim)
                .values(claim=claim.claim, at=now)
            )
            return claim if retaken.rowcount == 1 else None

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
    def is_signalled(
        self,
        run_id: str,
        *,
        step_id: str,
        visit: int,
        kind: SignalKind,
        execution: str | None = None,
    ) -> bool:
        """Whether a hit holds the key ``(run_id, execution, step_id, visit, kind)``."""
        claim = SignalClaim(run_id, step_id, visit, kind, "", execution or "")
        with self._engine.connect() as connection:
            found = connection.execute(select(tracking_signals.c.claim).where(*_key(claim)))
            return found.first() is not None

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


def _key(claim: SignalClaim) -> tuple[Any, ...]:
    return (
        tracking_signals.c.run_id == claim.run_id,
        tracking_signals.c.execution == claim.execution,
        tracking_signals.c.step_id == claim.step_id,
        tracking_signals.c.visit == claim.visit,
        tracking_signals.c.kind == claim.kind,
    )
