"""Each tracking signal key says whether its signal went out, so none is lost.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

A row of ``tracking_signals`` is taken in the transaction that keeps the hit, and the run is
signalled after that; a server that dies in between left a taken key whose signal never went
out, and later hits of the key are collapsed into it. From here a row records:

- ``hit_id``: the hit that holds the key (its URL is the click's), NULL on rows from before;
- ``done_at`` and ``outcome``: when the key was settled, and how: ``signalled`` (Temporal
  accepted the signal), ``run-closed`` or ``run-not-found`` (no one left to tell). NULL
  while the signal has not gone out: the sweeper (:mod:`dee.server.sweeper`) sends it;
- ``attempts`` and ``retry_at``: the sweeper's tries, and the time before which no sweeper
  takes the key again (another replica holds it, or the last try failed).

Rows from before are taken as signalled (``done_at`` is their ``at``): whether their signal
went out cannot be known, and sending every old key again would signal long-ended runs. A
partial index holds the pending rows only, so the sweeper's query stays small.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES = "outcome IN ('signalled', 'run-closed', 'run-not-found')"
# A key is settled with an outcome, or pending without one.
_SETTLED = "(done_at IS NULL AND outcome IS NULL) OR (done_at IS NOT NULL AND outcome IS NOT NULL)"
_PENDING = sa.text("done_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("tracking_signals") as batch:
        batch.add_column(sa.Column("hit_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    signals = sa.table(
        "tracking_signals",
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("done_at", sa.DateTime(timezone=True)),
        sa.column("outcome", sa.String),
    )
    op.execute(signals.update().values(done_at=signals.c.at, outcome="signalled"))
    with op.batch_alter_table("tracking_signals") as batch:
        batch.create_check_constraint("ck_tracking_signals_outcome", _OUTCOMES)
        batch.create_check_constraint("ck_tracking_signals_settled", _SETTLED)
    op.create_index(
        "ix_tracking_signals_pending",
        "tracking_signals",
        ["at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_tracking_signals_pending", table_name="tracking_signals")
    with op.batch_alter_table("tracking_signals") as batch:
        batch.drop_constraint("ck_tracking_signals_settled", type_="check")
        batch.drop_constraint("ck_tracking_signals_outcome", type_="check")
        batch.drop_column("retry_at")
        batch.drop_column("attempts")
        batch.drop_column("outcome")
        batch.drop_column("done_at")
        batch.drop_column("hit_id")
