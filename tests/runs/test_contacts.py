"""Default contact ids: a keyed hash of the address, the same in every process of one
database, and never the address."""

from __future__ import annotations

import multiprocessing.pool
import re
import sqlite3
import time
from pathlib import Path

import pytest

from dee.runs.contacts import ContactIds, ContactIdsError
from dee.runs.model import Contact
from tests.helpers import db

HASHED = re.compile(r"c-[a-z2-7]{24}")


def test_an_id_is_a_keyed_hash_of_the_normalised_address(database_url: str, tmp_path: Path) -> None:
    with ContactIds(database_url) as contacts, ContactIds(database_url) as again:
        ana = contacts.id_for("ana@example.com")
        assert HASHED.fullmatch(ana)
        # Spelt otherwise, the same address; from another opening of the database, the same id.
        assert contacts.id_for("  Ana@Example.COM ") == again.id_for("ana@example.com") == ana
        assert contacts.id_for("bo@example.com") != ana
        # A number as it is written gets the id of its E.164 form, never an address's.
        assert contacts.id_for("+1 (555) 765-4321") == contacts.id_for("+15557654321") != ana
        # A valid Contact id: no whitespace or colon, well within 150 characters.
        assert Contact(id=ana).id == ana
    # Another database has another key: the id cannot be recomputed without it.
    with ContactIds(f"sqlite:///{tmp_path / 'other.db'}") as elsewhere:
        assert HASHED.fullmatch(elsewhere.id_for("ana@example.com"))
        assert elsewhere.id_for("ana@example.com") != ana


def test_complete_gives_the_default_id_and_keeps_a_given_one(database_url: str) -> None:
    with ContactIds(database_url) as contacts:
        ana = contacts.id_for("ana@example.com")
        assert contacts.complete({"email": "Ana@example.com", "firstName": "Ana"}) == {
            "email": "Ana@example.com",
            "firstName": "Ana",
            "id": ana,
        }
        both = contacts.complete({"email": "ana@example.com", "phone": "+15557654321"})
        assert both["id"] == ana
        by_phone = contacts.complete({"phone": "+15557654321"})
        assert by_phone["id"] == contacts.id_for("+15557654321")
        assert contacts.complete({"id": "crm-4711", "email": "ana@example.com"})["id"] == "crm-4711"
        # Nothing to hash, or nothing valid: left as it is, for validation to name.
        assert contacts.complete({"firstName": "Ana"}) == {"firstName": "Ana"}
        assert contacts.complete({"email": "ana@example.com\r\nBcc: x@evil.example"}) == {
            "email": "ana@example.com\r\nBcc: x@evil.example"
        }


def test_lookup_covers_hashed_raw_and_given_ids(database_url: str) -> None:
    with ContactIds(database_url) as contacts:
        ana = contacts.id_for("ana@example.com")
        assert contacts.lookup(" Ana@Example.com") == (ana, "ana@example.com", "Ana@Example.com")
        assert contacts.lookup("ana@example.com") == (ana, "ana@example.com")
        assert contacts.lookup("crm-4711") == ("crm-4711",)
        assert contacts.lookup(ana) == (ana,)


def test_processes_making_the_key_at_once_agree_on_it(
    database_url: str, spawn_pool: multiprocessing.pool.Pool
) -> None:
    with ContactIds(database_url):
        pass  # migrated, with no key yet: the four processes race to make it
    start_at = time.time() + 0.3
    ids = spawn_pool.starmap(
        db.contact_id_in_process, [(database_url, "ana@example.com", start_at)] * 4
    )
    assert len(set(ids)) == 1 and HASHED.fullmatch(ids[0]), ids
    with ContactIds(database_url) as contacts:
        assert contacts.id_for("ana@example.com") == ids[0]


def test_an_unreadable_key_is_a_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "dee.db"
    with ContactIds(f"sqlite:///{path}") as contacts:
        with sqlite3.connect(path) as broken:
            broken.execute("DROP TABLE dee_keys")  # the schema is gone under a running server
        with pytest.raises(ContactIdsError) as raised:
            contacts.id_for("ana@example.com")
    assert raised.value.transient
    assert "no such table: dee_keys" in str(raised.value)
