"""Tracking: raw pixel, click and unsubscribe hits, the signals they sent, suppressions.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tracking_hits",
        # SQLite only auto-increments an INTEGER PRIMARY KEY.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(400), nullable=False),
        # Unsubscribe links name no step.
        sa.Column("step_id", sa.String(100), nullable=True),
        sa.Column("visit", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.String(500), nullable=True),
        # No IP address, not even hashed: see dee.server.hits.
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracking_hits"),
        sa.CheckConstraint(
            "kind IN ('open', 'click', 'unsubscribe')", name="ck_tracking_hits_kind"
        ),
    )
    op.create_index("ix_tracking_hits_run_id", "tracking_hits", ["run_id", "id"])
    op.create_table(
        "tracking_signals",
        # One row per (run, step, visit, kind) that has been signalled: the collapse key.
        sa.Column("run_id", sa.String(400), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        # Which hit holds the row, so only that one gives it back when its signal fails.
        sa.Column("claim", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step_id", "visit", "kind", name="pk_tracking_signals"),
        sa.CheckConstraint("kind IN ('open', 'click')", name="ck_tracking_signals_kind"),
    )
    op.create_table(
        "suppressions",
        # Lower-cased; the email activity skips every send to an address listed here.
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(400), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name="pk_suppressions"),
        sa.CheckConstraint(
            "reason IN ('unsubscribe', 'bounce', 'spamreport')", name="ck_suppressions_reason"
        ),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("tracking_signals")
    op.drop_index("ix_tracking_hits_run_id", table_name="tracking_hits")
    op.drop_table("tracking_hits")
