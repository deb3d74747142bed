"""``dee db``: the database's schema, for operators.

::

    dee db upgrade      bring the database to this release's schema (safe to run again)
    dee db status       the revision the database is at; exit 1 unless it is this release's

Every command takes the database from ``--database`` or ``DEE_DATABASE_URL``. In production
one job runs ``dee db upgrade`` before the worker and the API start (the ``dee-migrate``
service of docker-compose.yml) and the processes, with ``DEE_MIGRATE_ON_START=false``,
only check the revision (:mod:`dee.storage.schema`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dee.cli.runs import database_of
from dee.errors import RegistryError
from dee.storage.database import make_engine, resolve_url, safe_url
from dee.storage.schema import SchemaStatus, schema_status, upgrade

__all__ = ["db"]


@click.group()
def db() -> None:
    """The database's schema: upgrade it, or see where it is."""


@contextmanager
def _engine(ctx: click.Context) -> Iterator[Engine]:
    url = resolve_url(database_of(ctx))
    try:
        engine = make_engine(url)
    except ValueError as exc:  # DEE_DATABASE_POOL_SIZE, DEE_DATABASE_MAX_OVERFLOW
        raise RegistryError(str(exc)) from None
    try:
        yield engine
    except SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise RegistryError(
            f"cannot reach the database {safe_url(url)}: {reason}; check DEE_DATABASE_URL "
            "(or --database) and that the server accepts connections"
        ) from exc
    finally:
        engine.dispose()


def _revision(status: SchemaStatus) -> str:
    return "no DEE schema" if status.current is None else f"revision {status.current}"


@db.command(name="upgrade")
@click.pass_context
def upgrade_command(ctx: click.Context) -> None:
    """Migrate the database to this release's schema.

    Running it again, or from several places at once, is safe: a database already at
    this release's revision is left as it is.
    """
    with _engine(ctx) as engine:
        before, after = upgrade(engine)
    if before.up_to_date:
        click.echo(f"{after.url}: already at revision {after.current}, nothing to do")
    else:
        click.echo(f"{after.url}: upgraded from {_revision(before)} to revision {after.current}")


@db.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Print the database's schema revision and the one this release needs.

    Exits 0 when they are the same, 1 when `dee db upgrade` (or a newer release) is needed.
    """
    with _engine(ctx) as engine:
        found = schema_status(engine)
    problem = found.problem()
    if problem is None:
        click.echo(f"{found.url}: at revision {found.current}, up to date")
        return
    click.echo(f"{found.url}: {_revision(found)}, this release needs revision {found.required}")
    click.echo(problem, err=True)
    raise click.exceptions.Exit(1)
