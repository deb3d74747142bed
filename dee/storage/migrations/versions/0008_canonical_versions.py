"""Plan versions keep the canonical text their digest is of.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Until now a version's digest was recomputed from the models of the release reading it, so
a field added later (even with a default) made every stored version look changed. From
here each version stores ``canonical``, the exact text its digest is the SHA-256 of, and is
read back from it. For the rows already there the text is rebuilt from their stored JSON
(not through any model) the way the release that wrote them built it, and kept only where
it hashes to the stored digest; a row where it does not keeps ``canonical`` NULL and is
checked as before.

Self-contained on purpose: a migration must do the same thing whatever the models become.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_versions = sa.table(
    "plan_versions",
    sa.column("plan_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("digest", sa.String),
    sa.column("document", sa.Text),
    sa.column("content", sa.Text),
    sa.column("canonical", sa.Text),
)


def _canonical(document: str, content: str) -> str | None:
    try:
        plan = json.loads(document)
        meaning = {
            "name": plan["name"],
            "steps": plan["steps"],
            "transitions": plan["transitions"],
            "description": plan["metadata"].get("description"),
            "content": json.loads(content),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def upgrade() -> None:
    with op.batch_alter_table("plan_versions") as batch:
        batch.add_column(sa.Column("canonical", sa.Text(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            _versions.c.plan_id,
            _versions.c.version,
            _versions.c.digest,
            _versions.c.document,
            _versions.c.content,
        )
    ).all()
    for row in rows:
        canonical = _canonical(row.document, row.content)
        if canonical is None or hashlib.sha256(canonical.encode()).hexdigest() != row.digest:
            continue
        connection.execute(
            sa.update(_versions)
            .where(_versions.c.plan_id == row.plan_id, _versions.c.version == row.version)
            .values(canonical=canonical)
        )


def downgrade() -> None:
    with op.batch_alter_table("plan_versions") as batch:
        batch.drop_column("canonical")
