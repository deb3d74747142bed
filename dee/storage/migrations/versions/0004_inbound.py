"""Inbound: received messages (replies, automatic replies, unmatched) and provider events.

Revision ID: 0004
Revises: 0003
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        # The event id the message becomes; unique, so a provider's retry is seen as such.
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(300), nullable=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        # Only the sender's domain: matched mail leaves no addresses behind.
        sa.Column("from_domain", sa.String(255), nullable=True),
        sa.Column("subject", sa.String(300), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("auto_reason", sa.String(100), nullable=True),
        sa.Column("run_id", sa.String(400), nullable=True),
        sa.Column("step_id", sa.String(100), nullable=True),
        sa.Column("matched_by", sa.String(20), nullable=True),
        sa.Column("delivery", sa.String(20), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        # Kept for unmatched messages only, so someone can look at them (capped by the server).
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("raw_truncated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbound_messages"),
        sa.UniqueConstraint("event_id", name="uq_inbound_messages_event_id"),
        sa.CheckConstraint(
            "kind IN ('reply', 'auto-reply', 'unmatched')", name="ck_inbound_messages_kind"
        ),
        sa.CheckConstraint(
            "delivery IN ('signalled', 'run-closed', 'run-not-found', 'none')",
            name="ck_inbound_messages_delivery",
        ),
    )
    op.create_index(
        "ix_inbound_messages_kind_received_at", "inbound_messages", ["kind", "received_at"]
    )
    op.create_table(
        "provider_events",
        # "sendgrid:<sg_event_id>": a replayed or retried event is acknowledged, not signalled.
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("run_id", sa.String(400), nullable=True),
        sa.Column("step_id", sa.String(100), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_provider_events"),
    )


def downgrade() -> None:
    op.drop_table("provider_events")
    op.drop_index("ix_inbound_messages_kind_received_at", table_name="inbound_messages")
    op.drop_table("inbound_messages")
