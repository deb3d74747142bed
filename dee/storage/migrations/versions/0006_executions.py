"""Run executions: each send, tracking hit and signal key names the execution it belongs to.

A run id (``<plan>:<contact>``) comes back when a contact runs a plan again; the execution
(the run's first Temporal run id) tells the two runs' sends, hits and signals apart.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL on rows from before: those sends and hits name no execution.
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("execution", sa.String(64), nullable=True))
    with op.batch_alter_table("tracking_hits") as batch:
        batch.add_column(sa.Column("execution", sa.String(64), nullable=True))
    # The signal keys only collapse repeated hits into one signal; the runs drop repeats by
    # event id too, so the table is rebuilt with the execution in its key rather than
    # altered ('' for tokens that name no execution).
    op.drop_table("tracking_signals")
    op.create_table(
        "tracking_signals",
        # One row per (run, execution, step, visit, kind) signalled: the collapse key.
        sa.Column("run_id", sa.String(400), nullable=False),
        sa.Column("execution", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("claim", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "run_id", "execution", "step_id", "visit", "kind", name="pk_tracking_signals"
        ),
        sa.CheckConstraint("kind IN ('open', 'click')", name="ck_tracking_signals_kind"),
    )


def downgrade() -> None:
    op.drop_table("tracking_signals")
    op.create_table(
        "tracking_signals",
        sa.Column("run_id", sa.String(400), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("claim", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step_id", "visit", "kind", name="pk_tracking_signals"),
        sa.CheckConstraint("kind IN ('open', 'click')", name="ck_tracking_signals_kind"),
    )
    with op.batch_alter_table("tracking_hits") as batch:
        batch.drop_column("execution")
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("execution")
