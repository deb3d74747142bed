"""The tracking tables: every hit, and the signal key each collapsed hit shares with its
first (see :mod:`dee.server.hits`)."""

from __future__ import annotations

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
    text,
)

from dee.storage.database import metadata

__all__ = ["tracking_hits", "tracking_signals"]

#: Mirror migrations 0003, 0006 and 0010; change only together with a new migration.
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
    #: The hit holding the key; NULL on keys from before 0010.
    Column("hit_id", BigInteger, nullable=True),
    #: When and how the key was settled; both NULL while its signal has not gone out.
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("outcome", String(16), nullable=True),
    #: The sweeper's tries, and when the next may start.
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("retry_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("kind IN ('open', 'click')", name="ck_tracking_signals_kind"),
    Index(
        "ix_tracking_signals_pending",
        "at",
        sqlite_where=text("done_at IS NULL"),
        postgresql_where=text("done_at IS NULL"),
    ),
)
