"""The suppression list: addresses that asked to hear no more (or bounced, or reported spam).

The server adds to it (unsubscribe links, bounces, spam reports) and the email activity
reads it before every send, skipping suppressed addresses. It lives in the same database as
the send ledger, so the worker reads it through the ledger's own connections
(:meth:`Suppressions.sharing`). Addresses are kept trimmed and lower-cased.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, Self, TypeAlias

from sqlalchemy import CheckConstraint, Column, Connection, DateTime, String, Table, select

from dee.errors import DeeError
from dee.storage.database import as_utc, insert_if_absent, metadata, write_transaction
from dee.storage.store import Store, database_errors

__all__ = [
    "Suppression",
    "SuppressionError",
    "SuppressionReason",
    "Suppressions",
    "normalize_address",
]

SuppressionReason: TypeAlias = Literal["unsubscribe", "bounce", "spamreport"]
SUPPRESSION_REASONS: Final = ("unsubscribe", "bounce", "spamreport")

#: Mirrors migration 0003; change only together with a new migration.
suppressions = Table(
    "suppressions",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("reason", String(20), nullable=False),
    Column("run_id", String(400), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "reason IN ('unsubscribe', 'bounce', 'spamreport')", name="ck_suppressions_reason"
    ),
)


class SuppressionError(DeeError):
    """The suppression list's database failed."""


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that gets no more email, and why."""

    address: str
    reason: SuppressionReason
    #: The run whose link, bounce or report put it there, if known.
    run_id: str | None
    at: datetime.datetime


def normalize_address(address: str) -> str:
    """How the suppression list spells an address: trimmed and lower-cased."""
    return address.strip().lower()


class Suppressions(Store):
    """The suppression list; safe to share between threads and processes.

    Open it from a URL like any store, or on another store's connections with
    :meth:`sharing`. Calls block: from async code run them in a thread.
    """

    label = "suppression list"
    error: type[DeeError] = SuppressionError
    _borrowed = False

    def __init__(self, url: str | None = None, *, echo: bool = False) -> None:
        super().__init__(url, echo=echo)
        self._writers = threading.Lock()

    @classmethod
    def sharing(cls, store: Store) -> Self:
        """The list in ``store``'s database, through ``store``'s connections (which that
        store has migrated and closes; closing this one does nothing)."""
        shared = cls.__new__(cls)
        shared.url = store.url
        shared._engine = store._engine
        shared._borrowed = True
        shared._writers = threading.Lock()
        return shared

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, this process's writers queue on a lock first:
        contending for the file lock itself would put them in SQLite's busy handler, which
        sleeps in steps of up to 100 ms where a lock wakes the next writer at once."""
        queue = self._writers if self._engine.dialect.name == "sqlite" else contextlib.nullcontext()
        with queue, write_transaction(self._engine) as connection:
            yield connection

    @database_errors
    def suppress(
        self, address: str, *, reason: SuppressionReason, run_id: str | None = None
    ) -> bool:
        """Put ``address`` on the list; ``True`` if it was not there already (an address
        keeps the reason and run it was first suppressed with)."""
        if reason not in SUPPRESSION_REASONS:
            raise ValueError(f"reason {reason!r} is unknown; expected one of {SUPPRESSION_REASONS}")
        row = {
            "address": normalize_address(address),
            "reason": reason,
            "run_id": run_id,
            "at": datetime.datetime.now(datetime.UTC),
        }
        with self._writing() as connection:
            return insert_if_absent(connection, suppressions, row, keys=[suppressions.c.address])

    @database_errors
    def is_suppressed(self, address: str) -> bool:
        """Whether ``address`` (in any case) is on the list."""
        with self._engine.connect() as connection:
            found = connection.execute(
                select(suppressions.c.address).where(
                    suppressions.c.address == normalize_address(address)
                )
            ).first()
        return found is not None

    @database_errors
    def suppression(self, address: str) -> Suppression | None:
        """Why ``address`` is on the list, or ``None``."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(suppressions).where(suppressions.c.address == normalize_address(address))
            ).first()
        if row is None:
            return None
        values = row._mapping
        return Suppression(
            address=values["address"],
            reason=values["reason"],
            run_id=values["run_id"],
            at=as_utc(values["at"]),
        )
