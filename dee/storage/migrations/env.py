"""Alembic environment for DEE's database.

DEE runs migrations itself (:func:`dee.storage.database.migrate`), handing over a connection that is
already in a transaction and holds the migration lock. A configuration with only
``sqlalchemy.url`` works too, for developers calling Alembic's commands directly.
Logging is left to the application: no ``fileConfig`` here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from dee.storage.database import make_engine, metadata, resolve_url, write_transaction


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    engine = make_engine(resolve_url(context.config.get_main_option("sqlalchemy.url")))
    try:
        with write_transaction(engine) as own:
            _run(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("DEE's migrations run against a database; offline (--sql) mode is off")
run_migrations_online()
