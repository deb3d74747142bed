"""Which schema revision a database is at, which one this release needs, and the check a
process makes when it is told not to migrate on start.

``dee db upgrade`` (:func:`upgrade`) brings a database to the release's newest revision.
Processes opening a store (:class:`dee.storage.store.Store`) migrate it themselves unless
``DEE_MIGRATE_ON_START`` is false, as the production compose file sets it: they then only
check the revision (:func:`check_schema`) and refuse to start on another one, saying what
to run, so that one job migrates while every replica waits for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from dee.errors import DeeError
from dee.storage.database import alembic_config, migrate, safe_url

__all__ = [
    "SchemaStatus",
    "SchemaVersionError",
    "check_schema",
    "head_revision",
    "schema_status",
    "upgrade",
]


class SchemaVersionError(DeeError):
    """The database is not at the schema revision this release needs (and the process was
    told not to migrate it: ``DEE_MIGRATE_ON_START=false``)."""

    def __init__(self, message: str, *, current: str | None, required: str) -> None:
        super().__init__(message)
        self.current = current
        self.required = required


@functools.cache
def head_revision() -> str:
    """The newest revision of DEE's migrations: the one this release needs."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "DEE's migrations have no head"
    return head


def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(revision.revision for revision in script.walk_revisions())


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database is: ``current`` is ``None`` for a database DEE never migrated."""

    url: str
    current: str | None
    required: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.required

    @property
    def newer(self) -> bool:
        """Whether a later release migrated the database (a revision this one does not know)."""
        return self.current is not None and self.current not in _known_revisions()

    def problem(self) -> str | None:
        """What is wrong, and how to fix it; ``None`` when the database is up to date."""
        if self.up_to_date:
            return None
        if self.newer:
            return (
                f"the database {self.url} is at schema revision {self.current!r}, which this "
                f"release does not know (it needs {self.required!r}): a newer DEE migrated it; "
                "run that release (or newer) here, or restore the database it was upgraded from"
            )
        at = "has no DEE schema yet" if self.current is None else "is at schema revision"
        shown = "" if self.current is None else f" {self.current!r}"
        return (
            f"the database {self.url} {at}{shown}, this release needs {self.required!r}: "
            "run `dee db upgrade` (with the same DEE_DATABASE_URL), or set "
            "DEE_MIGRATE_ON_START=true to let this process migrate it"
        )


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_status(engine: Engine) -> SchemaStatus:
    """The revision the database at ``engine`` is at, and the one this release needs."""
    with engine.connect() as connection:
        current = _current(connection)
    return SchemaStatus(url=safe_url(engine.url), current=current, required=head_revision())


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at :func:`head_revision`."""
    status = schema_status(engine)
    problem = status.problem()
    if problem is not None:
        raise SchemaVersionError(problem, current=status.current, required=status.required)


def upgrade(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Migrate the database to :func:`head_revision`; its status before and after.

    Safe to run from several processes at once (:func:`dee.storage.database.migrate` holds a
    lock); a database already there is left as it is.
    """
    before = schema_status(engine)
    if before.newer:
        # Alembic would fail with "Can't locate revision"; say what it means instead.
        problem = before.problem()
        assert problem is not None
        raise SchemaVersionError(problem, current=before.current, required=before.required)
    migrate(engine)
    return before, schema_status(engine)
