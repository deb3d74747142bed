"""Send ledger: one row per message DEE set out to send, for exactly-once sends.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sends",
        # The key is what makes a second claim of the same message see the first.
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(400), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        # What the provider calls it, such as a Twilio call SID.
        sa.Column("provider_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id", name="pk_sends"),
        sa.CheckConstraint("channel IN ('email', 'voice')", name="ck_sends_channel"),
        sa.CheckConstraint("status IN ('sending', 'sent')", name="ck_sends_status"),
    )
    # Everything a run sent, for support and for the tracking server.
    op.create_index("ix_sends_run_id", "sends", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_sends_run_id", table_name="sends")
    op.drop_table("sends")
