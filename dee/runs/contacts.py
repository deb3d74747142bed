"""Default contact ids: a keyed hash of the contact's address, never the address itself.

A run's id is ``<plan id>:<contact id>``, and the contact id also lands in the
``DeeContactId`` search attribute, in tracking and unsubscribe links and in log lines. A
contact given without an ``id`` therefore gets ``c-`` and 24 base32 characters of an
HMAC-SHA256 of its normalised email address (else its phone number), keyed by a random
key that the database keeps (table ``dee_keys``, written once by whichever process needs it
first). The id is stable: the same address always gets the same id, in every process that
shares the database, so starting the same contact twice still finds the active run. Without
the key nobody can turn an id back into an address, not even by trying likely addresses.

:meth:`ContactIds.lookup` gives every id a contact's runs can carry: the hashed one, and the
address itself for runs started before DEE hashed them or by a plain Temporal client that
gave no ``id`` (the workflow cannot know the key, so such runs keep the address).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import Column, DateTime, LargeBinary, String, Table, select

from dee.errors import DeeError
from dee.runs.suppressions import InvalidContactValueError, normalize
from dee.storage.database import insert_if_absent, metadata, write_transaction
from dee.storage.store import Store, database_errors

__all__ = ["CONTACT_ID_PREFIX", "ContactIds", "ContactIdsError"]

#: What every hashed contact id starts with.
CONTACT_ID_PREFIX: Final = "c-"
_KEY_NAME: Final = "contact-ids"
_KEY_BYTES: Final = 32
#: 15 bytes of the HMAC, 24 base32 characters: 120 bits, no padding.
_ID_BYTES: Final = 15

#: Mirrors migration 0009; change only together with a new migration.
dee_keys = Table(
    "dee_keys",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", LargeBinary(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class ContactIdsError(DeeError):
    """The key behind contact ids could not be read or written."""


class ContactIds(Store):
    """Turns a contact's address into its default contact id; safe to share between
    threads and processes. Calls may touch the database once (the key): from async code
    run the first in a thread."""

    label = "contact id key"
    error: type[DeeError] = ContactIdsError

    def __init__(
        self, url: str | None = None, *, echo: bool = False, migrate: bool | None = None
    ) -> None:
        super().__init__(url, echo=echo, migrate=migrate)
        self._key: bytes | None = None
        self._loading = threading.Lock()

    def id_for(self, value: str) -> str:
        """The contact id of an email address or phone number (normalised first, so
        ``Ana@Example.com `` and ``ana@example.com`` share one);
        :class:`~dee.runs.suppressions.InvalidContactValueError` for anything else."""
        channel, normalized = normalize(value)
        digest = hmac.new(self.key, f"{channel}:{normalized}".encode(), hashlib.sha256).digest()
        return CONTACT_ID_PREFIX + base64.b32encode(digest[:_ID_BYTES]).decode("ascii").lower()

    def complete(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """``contact`` with its default ``id`` when it gives none: the id of its email
        address, else of its phone number. A contact with an ``id``, or with neither a
        valid address nor a valid number, is returned as it is (validation then says what
        is wrong with it)."""
        completed = dict(contact)
        if completed.get("id") is not None:
            return completed
        for field in ("email", "phone"):
            value = completed.get(field)
            if isinstance(value, str):
                try:
                    completed["id"] = self.id_for(value)
                except InvalidContactValueError:
                    return completed
                return completed
        return completed

    def lookup(self, value: str) -> tuple[str, ...]:
        """Every contact id a run of the contact with this address, phone number or id can
        carry: the hashed id, then the value itself (older runs, plain clients, and ids
        that callers chose)."""
        try:
            channel, normalized = normalize(value)
        except InvalidContactValueError:
            return (value,)
        del channel
        return tuple(dict.fromkeys((self.id_for(normalized), normalized, value.strip())))

    @property
    def key(self) -> bytes:
        """The database's contact id key, made the first time any process needs it."""
        if self._key is None:
            with self._loading:
                if self._key is None:
                    self._key = self._load_key()
        return self._key

    @database_errors
    def _load_key(self) -> bytes:
        with self._engine.connect() as connection:
            found = connection.execute(
                select(dee_keys.c.value).where(dee_keys.c.name == _KEY_NAME)
            ).scalar_one_or_none()
        if found is not None:
            return bytes(found)
        made = {
            "name": _KEY_NAME,
            "value": secrets.token_bytes(_KEY_BYTES),
            "created_at": datetime.datetime.now(datetime.UTC),
        }
        with write_transaction(self._engine) as connection:
            insert_if_absent(connection, dee_keys, made, keys=[dee_keys.c.name])
            # Another process may have written it first: theirs is the key.
            return bytes(
                connection.execute(
                    select(dee_keys.c.value).where(dee_keys.c.name == _KEY_NAME)
                ).scalar_one()
            )
