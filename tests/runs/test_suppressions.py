"""The suppression list: one store for addresses and numbers, how values are read, the
migration that made it so, and ``start_run`` refusing a suppressed contact."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.registry import PlanRegistry
from dee.runs.client import start_run
from dee.runs.errors import ContactSuppressedError
from dee.runs.suppressions import (
    InvalidContactValueError,
    Suppressions,
    normalize,
)
from dee.storage.database import alembic_config, make_engine, resolve_url, write_transaction
from tests.helpers.spec import SPEC_CONTENT, SPEC_YAML


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Case and surrounding whitespace do not make another address.
        ("  Ana@Example.COM\t", ("email", "ana@example.com")),
        # Numbers as people write them, and the international 00 prefix.
        ("+1 (555) 765-4321", ("phone", "+15557654321")),
        ("+44 20.7946.0958", ("phone", "+442079460958")),
        ("0044 20 7946 0958", ("phone", "+442079460958")),
    ],
)
def test_values_are_normalised(value: str, expected: tuple[str, str]) -> None:
    assert normalize(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        # A line break inside: it could start another header or value.
        "ana@example.com\r\nBcc: all@example.com",
        "ana@exa\nmple.com",
        # No country code: never guessed.
        "555 765 4321",
        "+0 555",
        "",
        "ana",
    ],
)
def test_values_that_are_neither_are_refused(value: str) -> None:
    with pytest.raises(InvalidContactValueError) as raised:
        normalize(value)
    assert raised.value.value == value


def test_one_list_for_both_channels(database_url: str) -> None:
    with Suppressions(database_url) as store:
        assert store.suppress("Ana@Example.com", reason="unsubscribe", source="one-click")
        assert store.suppress("+1 555 765 4321", reason="manual", source="cli", run_id="p:c")
        assert not store.suppress("+15557654321", reason="bounce", source="api")
        assert [(e.address, e.channel, e.reason, e.source) for e in store.entries()] == [
            ("+15557654321", "phone", "manual", "cli"),
            ("ana@example.com", "email", "unsubscribe", "one-click"),
        ]
        assert [e.address for e in store.entries(channel="email")] == ["ana@example.com"]
        assert store.is_suppressed("00 1 555 765 4321")
        assert store.remove("ANA@example.com") and not store.remove("ana@example.com")
        assert not store.is_suppressed("ana@example.com")


def test_many_values_are_looked_up_at_once(database_url: str) -> None:
    with Suppressions(database_url) as suppressions:
        suppressions.suppress("ana@example.com", reason="bounce")
        suppressions.suppress("+15557654321", reason="unsubscribe")
        others = [f"person{number}@example.com" for number in range(1200)]
        found = suppressions.suppressions_of(
            [*others, " Ana@Example.COM", "ana@example.com", "+1 (555) 765-4321", "not a value"]
        )
    # By the value as given; spellings of one address each find it; the rest are absent.
    assert {value: entry.reason for value, entry in found.items()} == {
        " Ana@Example.COM": "bounce",
        "ana@example.com": "bounce",
        "+1 (555) 765-4321": "unsubscribe",
    }


def test_a_database_at_the_previous_head_upgrades_with_its_rows(database_url: str) -> None:
    engine = make_engine(resolve_url(database_url))
    at = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    try:
        with write_transaction(engine) as connection:
            command.upgrade(alembic_config(connection), "0005")
            for address, reason in [
                ("ana@example.com", "unsubscribe"),
                ("bo@example.com", "bounce"),
            ]:
                connection.execute(
                    text(
                        "INSERT INTO suppressions (address, reason, run_id, at) "
                        "VALUES (:address, :reason, 'p:c', :at)"
                    ),
                    {"address": address, "reason": reason, "at": at},
                )
            connection.execute(
                text(
                    "INSERT INTO inbound_messages (event_id, source, received_at, kind, delivery,"
                    " size, raw_truncated) VALUES ('inbound:x', 'raw', :at, 'reply', 'none', 1,"
                    " false)"
                ),
                {"at": at},
            )
    finally:
        engine.dispose()
    with Suppressions(database_url) as store:
        old = {(e.address, e.channel, e.reason, e.source, e.run_id, e.at) for e in store.entries()}
        assert old == {
            ("ana@example.com", "email", "unsubscribe", "one-click", "p:c", at),
            ("bo@example.com", "email", "bounce", "sendgrid", "p:c", at),
        }
        # What the new schema allows: phone numbers, the manual reason.
        assert store.suppress("+15557654321", reason="manual", source="api")
    from dee.server.inbound_store import InboundStore

    with InboundStore(database_url) as inbound:
        found = inbound.find("inbound:x")
        assert found is not None and found.kind == "reply"


async def test_start_run_refuses_a_suppressed_email_or_phone(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path}/dee.db"
    plan = dee.load_plan(SPEC_YAML)
    # Plan ids of this test's own: the dev server is shared by the session.
    plan = plan.model_copy(update={"id": f"spec-{uuid.uuid4().hex[:8]}"})
    with PlanRegistry(database) as registry, Suppressions(database) as store:
        version = registry.create(plan, dee.load_content(SPEC_CONTENT, plan))
        contact = {"email": "Ana@Example.com", "firstName": "Ana", "phone": "+15557654321"}
        queue = f"nobody-polls-{uuid.uuid4()}"

        async def start(**changes: str) -> str:
            return await start_run(
                dev_env.client,
                version,
                contact={**contact, **changes},
                variables={"product": "DEE"},
                task_queue=queue,
                suppressions=store,
            )

        # Positive control: nothing suppressed, the run starts.
        started = await start()
        await dev_env.client.get_workflow_handle(started).terminate()

        store.suppress("ana@example.com", reason="unsubscribe", source="one-click")
        with pytest.raises(ContactSuppressedError) as email:
            await start()
        assert (email.value.value, email.value.channel, email.value.reason) == (
            "ana@example.com",
            "email",
            "unsubscribe",
        )
        assert "`dee suppressions remove ana@example.com`" in str(email.value)

        store.suppress("+1 555 765 4321", reason="manual", source="cli")
        with pytest.raises(ContactSuppressedError) as phone:
            await start(email="bo@example.com")
        assert (phone.value.value, phone.value.channel, phone.value.source) == (
            "+15557654321",
            "phone",
            "cli",
        )
        assert "`dee suppressions remove +15557654321`" in str(phone.value)
        assert phone.value.run_id == f"{plan.id}:bo@example.com"
