"""Database plumbing for the plan registry: URLs, engines, tables and migrations.

Two backends are supported: SQLite (the default, a file under ``.dee/``) and PostgreSQL.
The schema is owned by the Alembic migrations in :mod:`dee.storage.migrations`; the tables below
mirror it for queries and must change only together with a new migration.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dee.errors import RegistryError
from dee.settings import database_pool

__all__ = [
    "DATABASE_URL_ENV",
    "alembic_config",
    "make_engine",
    "metadata",
    "migrate",
    "plan_versions",
    "resolve_url",
    "safe_url",
    "write_transaction",
]

logger = logging.getLogger(__name__)

DATABASE_URL_ENV = "DEE_DATABASE_URL"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Seconds a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT = 30
#: Key of the PostgreSQL advisory lock that serialises migrations ("DEE_MIGR").
_MIGRATION_LOCK_KEY = 0x4445455F4D494752
#: Connection execution option asking for SQLite's write lock when the transaction begins.
_WRITE_OPTION = "dee_write"

metadata = MetaData()

plan_versions = Table(
    "plan_versions",
    metadata,
    Column("plan_id", String(100), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("content_digests", Text, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    #: The text ``digest`` is the SHA-256 of, and what the version is read from (0008);
    #: NULL on rows from before whose digest it could not reproduce.
    Column("canonical", Text, nullable=True),
    CheckConstraint("version >= 1", name="ck_plan_versions_version_positive"),
)


def resolve_url(url: str | None = None) -> URL:
    """The database to use: ``url``, else ``$DEE_DATABASE_URL``, else ``.dee/dee.db``.

    ``postgresql://`` and ``postgres://`` URLs get the psycopg 3 driver.
    """
    if url is None:
        url = os.environ.get(DATABASE_URL_ENV) or None
    if url is None:
        folder = Path.cwd() / ".dee"
        folder.mkdir(parents=True, exist_ok=True)
        return make_url(f"sqlite:///{folder / 'dee.db'}")
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(
            f"cannot parse database URL: {exc}; expected sqlite:///path or postgresql://..."
        ) from exc
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg"}:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        if parsed.database and parsed.database != ":memory:":
            # A file database needs no setup, not even its folder.
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(
                    f"cannot open the plan database {safe_url(parsed)}: cannot create "
                    f"{str(folder)!r}: {exc.strerror}"
                ) from exc
        return parsed
    raise RegistryError(
        f"unsupported database {safe_url(parsed)!r}: "
        "use sqlite:///path/to/file.db or postgresql://user@host/database"
    )


def safe_url(url: URL) -> str:
    """``url`` with any password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_begin), so sqlite3's legacy transaction
    # handling must stay out of the way.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers work while a creator writes; NORMAL is durable enough with WAL.
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _set_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs an exclusive lock and SQLite does not call the busy
    # handler for it, so processes opening a new database together retry here. Once the
    # file is in WAL mode (which persists) the statement returns at once.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.02))


def _sqlite_begin(connection: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is
    # locked" when another writer got in between; taking the write lock up front makes
    # concurrent creators queue on the busy timeout instead.
    if connection.get_execution_options().get(_WRITE_OPTION):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


def make_engine(url: URL, *, echo: bool = False, timeout: float | None = None) -> Engine:
    """An engine for ``url``, set up for concurrent use by threads and processes.

    ``timeout`` bounds every wait of the engine's transactions, for code that must not
    block for long (the event loop's thread): a connection from the pool or to the server,
    a lock (SQLite's busy timeout, PostgreSQL's ``lock_timeout``) and each statement
    (``statement_timeout``) give up after that many seconds and raise. Without it, SQLite
    waits up to :data:`SQLITE_BUSY_TIMEOUT` for another writer and PostgreSQL as long as
    it takes. A PostgreSQL engine keeps ``DEE_DATABASE_POOL_SIZE`` connections and opens
    up to ``DEE_DATABASE_MAX_OVERFLOW`` more while busy.
    """
    bounded: dict[str, Any] = {} if timeout is None else {"pool_timeout": timeout}
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT if timeout is None else timeout},
            **bounded,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # DEE_DATABASE_POOL_SIZE and DEE_DATABASE_MAX_OVERFLOW: every process has a pool per
    # store, and they all count against PostgreSQL's max_connections.
    pool_size, max_overflow = database_pool()
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    if timeout is None:
        return create_engine(url, echo=echo, **pool)
    # libpq counts its connect timeout in whole seconds, and takes at least 2.
    connect = {"connect_timeout": max(2, math.ceil(timeout))}
    engine = create_engine(url, echo=echo, connect_args=connect, **bounded, **pool)
    event.listen(engine, "begin", functools.partial(_postgres_begin, seconds=timeout))
    return engine


def _postgres_begin(connection: Connection, *, seconds: float) -> None:
    # SET LOCAL: for this transaction only, and it works behind a transaction pooler.
    limit = f"'{round(seconds * 1000)}ms'"
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {limit}")
    connection.exec_driver_sql(f"SET LOCAL statement_timeout = {limit}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that will write; on SQLite it holds the write lock."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE_OPTION: True})
        with connection.begin():
            yield connection


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for DEE's migrations; no ``alembic.ini`` is needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema; safe to call from many processes at once."""
    with write_transaction(engine) as connection:
        # The whole upgrade runs in one transaction under a lock, so a second process
        # waits, then finds the schema at head and does nothing. On SQLite the write lock
        # taken by BEGIN IMMEDIATE does the same job.
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        command.upgrade(alembic_config(connection), "head")
    logger.debug("database %s is at the newest schema", safe_url(engine.url))


def insert_if_absent(
    connection: Connection,
    table: Table,
    row: Mapping[str, Any],
    *,
    keys: Sequence[Column[Any]],
) -> bool:
    """Insert ``row`` unless a row with the same ``keys`` exists; whether it went in.

    ON CONFLICT DO NOTHING rather than catching IntegrityError: on PostgreSQL a failed
    INSERT aborts the transaction. RETURNING rather than rowcount: psycopg reports -1 for
    an INSERT ... ON CONFLICT.
    """
    dialect: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    inserted = connection.execute(
        dialect.insert(table)
        .values(dict(row))
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(keys[0])
    ).first()
    return inserted is not None


def as_utc(value: datetime.datetime) -> datetime.datetime:
    """A stored time as an aware UTC datetime: SQLite hands back naive ones, and everything
    DEE stores is UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)
