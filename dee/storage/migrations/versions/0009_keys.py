"""Keys DEE makes for itself and keeps with its data.

``dee_keys`` holds named random keys that every process sharing the database must agree
on and nobody needs to configure: the first is ``contact-ids``, the HMAC key that turns a
contact's address into its default contact id (so run ids, search attributes and links
carry no address). A key is written once, by whichever process needs it first, and never
changes: changing it would change every default contact id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dee_keys",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("value", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dee_keys")
