"""The suppression list: email addresses and phone numbers DEE must not contact any more.

One list for both channels: an email address (unsubscribed, bounced hard, reported spam)
gets no more email, and a phone number on it (the do-not-call list) is never dialled. Each
entry keeps its reason, the entry point that put it there (its *source*), the run it came
from when known, and the time.

=================  ===========================================================
reason             meaning
=================  ===========================================================
``unsubscribe``    the contact asked: a link, a mail, an API or CLI event
``bounce``         the address does not exist (a hard bounce)
``spamreport``     the contact reported an email as spam
``manual``         someone put it there by hand (``dee suppressions add``, the API)
=================  ===========================================================

Sources: ``one-click`` (the List-Unsubscribe link), ``mailto`` (the List-Unsubscribe
mail), ``sendgrid`` (SendGrid's events), ``inbound-bounce`` (a delivery status notification
at the inbound webhook), ``api``, ``cli``, and ``manual`` (this class used directly).

Addresses are kept trimmed and lower-cased; phone numbers in E.164 (``+15551234567``), with
spaces, dots, dashes and parentheses dropped and a leading ``00`` read as ``+``. A value
that is neither (a line break, no ``@``, a number without its country code) is refused
with :class:`InvalidContactValueError`, never stored half-cleaned.

The server and the CLI add to it; both activities read it before every send, and
:func:`dee.runs.client.start_run` before a run starts. It lives in the same database as the
send ledger, so the worker reads it through the ledger's own connections
(:meth:`Suppressions.sharing`).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Self, TypeAlias

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    String,
    Table,
    delete,
    select,
)

from dee.errors import DeeError
from dee.metrics import count_suppression
from dee.plans.model import EMAIL_PATTERN, PHONE_PATTERN
from dee.storage.database import as_utc, insert_if_absent, metadata, write_transaction
from dee.storage.store import Store, database_errors

__all__ = [
    "SUPPRESSION_REASONS",
    "SUPPRESSION_SOURCES",
    "Channel",
    "InvalidContactValueError",
    "Suppression",
    "SuppressionError",
    "SuppressionReason",
    "SuppressionSource",
    "Suppressions",
    "normalize",
    "normalize_address",
    "normalize_phone",
]

Channel: TypeAlias = Literal["email", "phone"]
SuppressionReason: TypeAlias = Literal["unsubscribe", "bounce", "spamreport", "manual"]
SUPPRESSION_REASONS: Final = ("unsubscribe", "bounce", "spamreport", "manual")
SuppressionSource: TypeAlias = Literal[
    "one-click", "mailto", "sendgrid", "inbound-bounce", "api", "cli", "manual"
]
SUPPRESSION_SOURCES: Final = (
    "one-click",
    "mailto",
    "sendgrid",
    "inbound-bounce",
    "api",
    "cli",
    "manual",
)
#: Most entries one :meth:`Suppressions.entries` call answers.
MAX_LIST: Final = 10_000

_EMAIL: Final = re.compile(EMAIL_PATTERN)
_PHONE: Final = re.compile(PHONE_PATTERN)
#: Values per query in :meth:`Suppressions.suppressions_of` (SQLite allows 32,766).
_LOOKUP_BATCH: Final = 500
#: What people put between a number's digits.
_PHONE_SEPARATORS: Final = re.compile(r"[ .()\-\u00a0]")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


#: Mirrors migrations 0003 and 0007; change only together with a new migration.
suppressions = Table(
    "suppressions",
    metadata,
    # An address (it has an @) or an E.164 number (it has none): the two never collide.
    Column("address", String(320), primary_key=True),
    Column("reason", String(20), nullable=False),
    Column("run_id", String(400), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("channel", String(10), nullable=False, server_default="email"),
    Column("source", String(20), nullable=False),
    CheckConstraint(_in("reason", SUPPRESSION_REASONS), name="ck_suppressions_reason"),
    CheckConstraint(_in("channel", ("email", "phone")), name="ck_suppressions_channel"),
    CheckConstraint(_in("source", SUPPRESSION_SOURCES), name="ck_suppressions_source"),
)


class SuppressionError(DeeError):
    """The suppression list's database failed."""


class InvalidContactValueError(DeeError, ValueError):
    """A value given to the suppression list is neither an email address nor an E.164
    phone number; ``value`` is what was given."""

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address or number that gets nothing more, and why."""

    #: The normalised address or E.164 number.
    address: str
    channel: Channel
    reason: SuppressionReason
    #: Which entry point put it there (see the module's doc).
    source: SuppressionSource
    #: The run whose link, bounce or report put it there, if known.
    run_id: str | None
    at: datetime.datetime


def normalize_address(address: str) -> str:
    """How the list spells an email address: trimmed and lower-cased;
    :class:`InvalidContactValueError` when it is not one plain address."""
    cleaned = address.strip().lower()
    if len(cleaned) > 254 or not _EMAIL.match(cleaned):
        raise InvalidContactValueError(
            f"{address!r} is not an email address such as ana@example.com", value=address
        )
    return cleaned


def normalize_phone(phone: str) -> str:
    """How the list spells a phone number: E.164 (``+15551234567``). Spaces, dots, dashes
    and parentheses go, a leading ``00`` becomes ``+``; :class:`InvalidContactValueError`
    when what remains is not E.164 (a number without its country code is not guessed)."""
    cleaned = _PHONE_SEPARATORS.sub("", phone.strip())
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not _PHONE.match(cleaned):
        raise InvalidContactValueError(
            f"{phone!r} is not a phone number in E.164 form: give the country code, such "
            "as +15551234567",
            value=phone,
        )
    return cleaned


def normalize(value: str) -> tuple[Channel, str]:
    """The channel of ``value`` (an address has an ``@``) and its normalised form."""
    if "@" in value:
        return "email", normalize_address(value)
    return "phone", normalize_phone(value)


class Suppressions(Store):
    """The suppression list; safe to share between threads and processes.

    Open it from a URL like any store, or on another store's connections with
    :meth:`sharing`. Calls block: from async code run them in a thread. Every method taking
    a value takes an email address or a phone number (:func:`normalize`).
    """

    label = "suppression list"
    error: type[DeeError] = SuppressionError
    _borrowed = False

    def __init__(
        self, url: str | None = None, *, echo: bool = False, migrate: bool | None = None
    ) -> None:
        super().__init__(url, echo=echo, migrate=migrate)
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
        self,
        value: str,
        *,
        reason: SuppressionReason,
        source: SuppressionSource = "manual",
        run_id: str | None = None,
    ) -> bool:
        """Put ``value`` on the list; ``True`` if it was not there already (an entry keeps
        the reason, source and run it was first suppressed with)."""
        if reason not in SUPPRESSION_REASONS:
            raise ValueError(f"reason {reason!r} is unknown; expected one of {SUPPRESSION_REASONS}")
        if source not in SUPPRESSION_SOURCES:
            raise ValueError(f"source {source!r} is unknown; expected one of {SUPPRESSION_SOURCES}")
        channel, address = normalize(value)
        row = {
            "address": address,
            "channel": channel,
            "reason": reason,
            "source": source,
            "run_id": run_id,
            "at": datetime.datetime.now(datetime.UTC),
        }
        with self._writing() as connection:
            added = insert_if_absent(connection, suppressions, row, keys=[suppressions.c.address])
        if added:
            count_suppression(channel, reason)
        return added

    @database_errors
    def remove(self, value: str) -> bool:
        """Take ``value`` off the list (sends to it resume); ``True`` if it was there."""
        _channel, address = normalize(value)
        with self._writing() as connection:
            removed = connection.execute(
                delete(suppressions).where(suppressions.c.address == address)
            )
        return removed.rowcount == 1

    def is_suppressed(self, value: str) -> bool:
        """Whether ``value`` (in any case or spelling) is on the list."""
        return self.suppression(value) is not None

    @database_errors
    def suppression(self, value: str) -> Suppression | None:
        """Why ``value`` is on the list, or ``None``."""
        _channel, address = normalize(value)
        with self._engine.connect() as connection:
            row = connection.execute(
                select(suppressions).where(suppressions.c.address == address)
            ).first()
        return None if row is None else _suppression(row._mapping)

    @database_errors
    def suppressions_of(self, values: Iterable[str]) -> dict[str, Suppression]:
        """The entries of those of ``values`` on the list, by the value as given: one query
        for many (a bulk start asks for a few hundred contacts at a time). Values that are
        neither an address nor a number are left out."""
        wanted: dict[str, list[str]] = {}
        for value in values:
            try:
                _channel, address = normalize(value)
            except InvalidContactValueError:
                continue
            wanted.setdefault(address, []).append(value)
        found: dict[str, Suppression] = {}
        addresses = list(wanted)
        with self._engine.connect() as connection:
            for start in range(0, len(addresses), _LOOKUP_BATCH):
                batch = addresses[start : start + _LOOKUP_BATCH]
                rows = connection.execute(
                    select(suppressions).where(suppressions.c.address.in_(batch))
                ).all()
                for row in rows:
                    entry = _suppression(row._mapping)
                    for value in wanted[entry.address]:
                        found[value] = entry
        return found

    @database_errors
    def entries(self, *, channel: Channel | None = None, limit: int = 1000) -> list[Suppression]:
        """The list, newest first; only ``channel``'s entries when given."""
        query = select(suppressions).order_by(suppressions.c.at.desc(), suppressions.c.address)
        if channel is not None:
            query = query.where(suppressions.c.channel == channel)
        with self._engine.connect() as connection:
            rows = connection.execute(query.limit(min(limit, MAX_LIST))).all()
        return [_suppression(row._mapping) for row in rows]


def _suppression(row: Any) -> Suppression:
    return Suppression(
        address=row["address"],
        channel=row["channel"],
        reason=row["reason"],
        source=row["source"],
        run_id=row["run_id"],
        at=as_utc(row["at"]),
    )
