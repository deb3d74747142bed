"""One suppression list for email addresses and phone numbers, with where each came from.

Adds ``channel`` (``email`` or ``phone``: a do-not-call list beside the email list) and
``source`` (the entry point that suppressed it) to ``suppressions``, allows the reason
``manual``, and lets ``inbound_messages`` keep unsubscribes sent by mail and delivery status
notifications (``unsubscribe``, ``bounce``). Rows from before are email addresses, and were
put there by the one-click link (``unsubscribe``) or SendGrid's events (``bounce``,
``spamreport``): their source is backfilled so.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REASONS = "reason IN ('unsubscribe', 'bounce', 'spamreport', 'manual')"
_CHANNELS = "channel IN ('email', 'phone')"
_SOURCES = "source IN ('one-click', 'mailto', 'sendgrid', 'inbound-bounce', 'api', 'cli', 'manual')"
_KINDS = "kind IN ('reply', 'auto-reply', 'unmatched', 'unsubscribe', 'bounce')"


def upgrade() -> None:
    with op.batch_alter_table("suppressions") as batch:
        batch.add_column(
            sa.Column("channel", sa.String(10), nullable=False, server_default="email")
        )
        batch.add_column(sa.Column("source", sa.String(20), nullable=True))
    suppressions = sa.table(
        "suppressions", sa.column("reason", sa.String), sa.column("source", sa.String)
    )
    op.execute(
        suppressions.update()
        .values(
            source=sa.case((suppressions.c.reason == "unsubscribe", "one-click"), else_="sendgrid")
        )
        .where(suppressions.c.source.is_(None))
    )
    with op.batch_alter_table("suppressions") as batch:
        batch.alter_column("source", existing_type=sa.String(20), nullable=False)
        batch.drop_constraint("ck_suppressions_reason", type_="check")
        batch.create_check_constraint("ck_suppressions_reason", _REASONS)
        batch.create_check_constraint("ck_suppressions_channel", _CHANNELS)
        batch.create_check_constraint("ck_suppressions_source", _SOURCES)
    with op.batch_alter_table("inbound_messages") as batch:
        batch.drop_constraint("ck_inbound_messages_kind", type_="check")
        batch.create_check_constraint("ck_inbound_messages_kind", _KINDS)


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages") as batch:
        batch.drop_constraint("ck_inbound_messages_kind", type_="check")
        batch.create_check_constraint(
            "ck_inbound_messages_kind", "kind IN ('reply', 'auto-reply', 'unmatched')"
        )
    op.execute("DELETE FROM suppressions WHERE channel = 'phone' OR reason = 'manual'")
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_constraint("ck_suppressions_source", type_="check")
        batch.drop_constraint("ck_suppressions_channel", type_="check")
        batch.drop_constraint("ck_suppressions_reason", type_="check")
        batch.create_check_constraint(
            "ck_suppressions_reason", "reason IN ('unsubscribe', 'bounce', 'spamreport')"
        )
        batch.drop_column("source")
        batch.drop_column("channel")
