"""Plan versions: one immutable row per version of a plan, with its content.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plan_versions",
        sa.Column("plan_id", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        # SHA-256 hex of the plan's meaning and content: equal digests, same version.
        sa.Column("digest", sa.String(64), nullable=False),
        # JSON stored as text so both SQLite and PostgreSQL keep it byte for byte.
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_digests", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # The key is what stops two concurrent creators taking the same version number.
        sa.PrimaryKeyConstraint("plan_id", "version", name="pk_plan_versions"),
        sa.CheckConstraint("version >= 1", name="ck_plan_versions_version_positive"),
    )


def downgrade() -> None:
    op.drop_table("plan_versions")
