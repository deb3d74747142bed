"""Inbound mail, kept: one row per message received, and the provider events processed.

The inbound webhooks (:mod:`dee.server.inbound_routes`) keep every message they have read
(:mod:`dee.server.inbound_mail`) and matched (:mod:`dee.server.inbound_match`) in the
:class:`InboundStore`.

**The store** keeps one row per message in ``inbound_messages`` (its event id, Message-ID,
source, time, sender domain, subject, kind, the run and step it matched and whether the run
took the event, its size) and the raw bytes of unmatched messages only, up to
:data:`MAX_KEPT_BYTES`, so someone can look at what matched nothing. It also records the
provider events already processed (``provider_events``), so a webhook retried or replayed
answers without signalling twice.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    select,
)

from dee.server.inbound_mail import InboundError, InboundMail
from dee.server.inbound_match import Match
from dee.storage.database import as_utc, insert_if_absent, metadata, write_transaction
from dee.storage.store import Store, database_errors

__all__ = [
    "MAX_KEPT_BYTES",
    "Delivery",
    "InboundKind",
    "InboundRecord",
    "InboundStore",
]

InboundKind: TypeAlias = Literal["reply", "auto-reply", "unmatched", "unsubscribe", "bounce"]
#: What became of a matched message's event: the run took it, or had ended or never was.
Delivery: TypeAlias = Literal["signalled", "run-closed", "run-not-found", "none"]

#: Raw bytes kept of an unmatched message; the rest is cut (``raw_truncated``).
MAX_KEPT_BYTES: Final = 256 * 1024


#: Mirrors migrations 0004 and 0007; change only together with a new migration.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(200), nullable=False),
    Column("message_id", String(300), nullable=True),
    Column("source", String(20), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("from_domain", String(255), nullable=True),
    Column("subject", String(300), nullable=True),
    Column("kind", String(20), nullable=False),
    Column("auto_reason", String(100), nullable=True),
    Column("run_id", String(400), nullable=True),
    Column("step_id", String(100), nullable=True),
    Column("matched_by", String(20), nullable=True),
    Column("delivery", String(20), nullable=False),
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=True),
    Column("raw_truncated", Boolean, nullable=False),
    UniqueConstraint("event_id", name="uq_inbound_messages_event_id"),
    CheckConstraint(
        "kind IN ('reply', 'auto-reply', 'unmatched', 'unsubscribe', 'bounce')",
        name="ck_inbound_messages_kind",
    ),
    CheckConstraint(
        "delivery IN ('signalled', 'run-closed', 'run-not-found', 'none')",
        name="ck_inbound_messages_delivery",
    ),
    Index("ix_inbound_messages_kind_received_at", "kind", "received_at"),
)

#: Mirrors migration 0004.
provider_events = Table(
    "provider_events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("provider", String(20), nullable=False),
    Column("type", String(50), nullable=False),
    Column("run_id", String(400), nullable=True),
    Column("step_id", String(100), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One row of ``inbound_messages``."""

    id: int
    event_id: str
    message_id: str | None
    source: str
    received_at: datetime.datetime
    from_domain: str | None
    subject: str | None
    kind: InboundKind
    auto_reason: str | None
    run_id: str | None
    step_id: str | None
    matched_by: str | None
    delivery: Delivery
    size: int
    #: Whether the raw message is kept (unmatched ones only), and whether it was cut.
    raw_kept: bool
    raw_truncated: bool


def _record(row: Any) -> InboundRecord:
    return InboundRecord(
        id=row["id"],
        event_id=row["event_id"],
        message_id=row["message_id"],
        source=row["source"],
        received_at=as_utc(row["received_at"]),
        from_domain=row["from_domain"],
        subject=row["subject"],
        kind=row["kind"],
        auto_reason=row["auto_reason"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        matched_by=row["matched_by"],
        delivery=row["delivery"],
        size=row["size"],
        raw_kept=row["raw_kept"],
        raw_truncated=row["raw_truncated"],
    )


_COLUMNS = [
    *(column for column in inbound_messages.c if column.name != "raw"),
    inbound_messages.c.raw.isnot(None).label("raw_kept"),
]


class InboundStore(Store):
    """Inbound messages and processed provider events, in DEE's database (``url`` as for
    :class:`dee.PlanRegistry`). Calls block: from async code run them in a thread."""

    label = "inbound message store"
    error = InboundError

    @database_errors
    def find(self, event_id: str) -> InboundRecord | None:
        """The message already received under ``event_id``, or ``None``."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(*_COLUMNS).where(inbound_messages.c.event_id == event_id)
            ).first()
        return None if row is None else _record(row._mapping)

    @database_errors
    def get(self, record_id: int) -> InboundRecord | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(*_COLUMNS).where(inbound_messages.c.id == record_id)
            ).first()
        return None if row is None else _record(row._mapping)

    @database_errors
    def record(
        self,
        mail: InboundMail,
        *,
        source: str,
        kind: InboundKind,
        match: Match | None,
        delivery: Delivery,
    ) -> tuple[InboundRecord, bool]:
        """Keep ``mail``; returns its row, and ``False`` when a row with its event id was
        already there (a concurrent delivery of the same message), which is left as it was.
        The raw bytes are kept for unmatched messages only, cut at :data:`MAX_KEPT_BYTES`."""
        keep = kind == "unmatched"
        row = {
            "event_id": mail.event_id,
            "message_id": mail.message_id[:300] if mail.message_id else None,
            "source": source,
            "received_at": datetime.datetime.now(datetime.UTC),
            "from_domain": mail.from_domain,
            "subject": mail.subject[:300],
            "kind": kind,
            "auto_reason": mail.auto_reason[:100] if mail.auto_reason else None,
            "run_id": match.run_id if match else None,
            "step_id": match.step_id if match else None,
            "matched_by": match.matched_by if match else None,
            "delivery": delivery,
            "size": len(mail.raw),
            "raw": mail.raw[:MAX_KEPT_BYTES] if keep else None,
            "raw_truncated": keep and len(mail.raw) > MAX_KEPT_BYTES,
        }
        with write_transaction(self._engine) as connection:
            inserted = insert_if_absent(
                connection, inbound_messages, row, keys=[inbound_messages.c.event_id]
            )
            found = connection.execute(
                select(*_COLUMNS).where(inbound_messages.c.event_id == mail.event_id)
            ).one()
        return _record(found._mapping), inserted

    @database_errors
    def unmatched(self, *, limit: int = 100) -> list[InboundRecord]:
        """Messages that matched no run, newest first."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(*_COLUMNS)
                .where(inbound_messages.c.kind == "unmatched")
                .order_by(inbound_messages.c.received_at.desc(), inbound_messages.c.id.desc())
                .limit(limit)
            ).all()
        return [_record(row._mapping) for row in rows]

    @database_errors
    def raw(self, record_id: int) -> bytes | None:
        """The kept raw bytes of an (unmatched) message, or ``None``."""
        with self._engine.connect() as connection:
            value = connection.execute(
                select(inbound_messages.c.raw).where(inbound_messages.c.id == record_id)
            ).scalar_one_or_none()
        return None if value is None else bytes(value)

    @database_errors
    def seen_event(self, event_id: str) -> bool:
        """Whether a provider event with ``event_id`` was processed already."""
        with self._engine.connect() as connection:
            found = connection.execute(
                select(provider_events.c.event_id).where(provider_events.c.event_id == event_id)
            ).first()
        return found is not None

    @database_errors
    def record_event(
        self,
        event_id: str,
        *,
        provider: str,
        type: str,
        run_id: str | None = None,
        step_id: str | None = None,
    ) -> bool:
        """Record a processed provider event; ``False`` when it was recorded already."""
        row = {
            "event_id": event_id,
            "provider": provider,
            "type": type[:50],
            "run_id": run_id,
            "step_id": step_id,
            "received_at": datetime.datetime.now(datetime.UTC),
        }
        with write_transaction(self._engine) as connection:
            return insert_if_absent(
                connection, provider_events, row, keys=[provider_events.c.event_id]
            )
