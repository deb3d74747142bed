"""Send ledger fence: the attempt that holds each unsent message.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The token of the attempt allowed to record the send; a takeover replaces it, so an
    # attempt that stalled (not died) can no longer commit. NULL on rows from before.
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("attempt", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("attempt")
