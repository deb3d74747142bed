"""The send ledger against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from dee.errors import DeeError
from dee.plans.registry import PlanRegistry
from dee.runs.ledger import LedgerError, SendLedger, SupersededError
from dee.storage.database import alembic_config, make_engine, resolve_url
from tests.helpers.db import drop_table


@pytest.fixture
def ledger(database_url: str) -> Iterator[SendLedger]:
    with SendLedger(database_url) as opened:
        yield opened


def test_first_claim_then_sent(ledger: SendLedger) -> None:
    before = datetime.datetime.now(datetime.UTC)
    assert ledger.claim("m1", run_id="plan:ana", step_id="intro", channel="email") == "claimed"
    record = ledger.get("m1")
    assert record is not None
    assert (record.run_id, record.step_id, record.channel) == ("plan:ana", "intro", "email")
    assert record.status == "sending"
    assert record.provider_id is None and record.sent_at is None
    assert record.created_at.tzinfo is not None
    assert before - datetime.timedelta(seconds=5) <= record.created_at

    ledger.mark_sent("m1")
    record = ledger.get("m1")
    assert record is not None and record.status == "sent"
    assert record.sent_at is not None and record.sent_at >= record.created_at
    assert record.sent_at.tzinfo == datetime.UTC


def test_claim_after_sent_is_already_sent(ledger: SendLedger) -> None:
    ledger.claim("m1", run_id="r", step_id="s", channel="email")
    ledger.mark_sent("m1")
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "already-sent"
    # Asking again changes nothing.
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "already-sent"


def test_claim_without_mark_sent_is_in_doubt(ledger: SendLedger) -> None:
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "claimed"
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "in-doubt"
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "in-doubt"
    # A resend that succeeds settles it.
    ledger.mark_sent("m1")
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email") == "already-sent"


def test_provider_id_is_kept(ledger: SendLedger) -> None:
    ledger.claim("call-1", run_id="r", step_id="call", channel="voice")
    ledger.mark_sent("call-1", provider_id="CA" + "0" * 32)
    record = ledger.get("call-1")
    assert record is not None
    assert (record.channel, record.provider_id) == ("voice", "CA" + "0" * 32)


def test_mark_sent_twice_keeps_the_first(ledger: SendLedger) -> None:
    ledger.claim("m1", run_id="r", step_id="s", channel="voice")
    ledger.mark_sent("m1", provider_id="first")
    first = ledger.get("m1")
    ledger.mark_sent("m1", provider_id="second")
    assert ledger.get("m1") == first


def test_mark_sent_needs_a_claim(ledger: SendLedger) -> None:
    with pytest.raises(LedgerError, match="never claimed") as caught:
        ledger.mark_sent("unknown")
    assert caught.value.message_id == "unknown"
    assert isinstance(caught.value, DeeError)


def test_get_unknown_is_none(ledger: SendLedger) -> None:
    assert ledger.get("unknown") is None


def test_messages_are_independent(ledger: SendLedger) -> None:
    ledger.claim("m1", run_id="r", step_id="s", channel="email")
    ledger.mark_sent("m1")
    assert ledger.claim("m2", run_id="r", step_id="s", channel="email") == "claimed"


def test_unknown_channel_is_refused(ledger: SendLedger) -> None:
    with pytest.raises(ValueError, match="channel 'sms'"):
        ledger.claim("m1", run_id="r", step_id="s", channel="sms")  # type: ignore[arg-type]
    assert ledger.get("m1") is None


def test_concurrent_claims_give_one_claimed(ledger: SendLedger) -> None:
    def claim(_index: int) -> str:
        return ledger.claim("race", run_id="r", step_id="s", channel="email")

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(claim, range(16)))
    assert sorted(outcomes) == ["claimed"] + ["in-doubt"] * 15


def test_a_takeover_fences_the_earlier_attempt(ledger: SendLedger) -> None:
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email", attempt="a") == "claimed"
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email", attempt="b") == "in-doubt"
    # The stalled first attempt wakes and tries to record the send: refused.
    with pytest.raises(SupersededError, match="taken over by another attempt"):
        ledger.mark_sent("m1", attempt="a")
    assert ledger.get("m1").status == "sending"  # type: ignore[union-attr]
    ledger.mark_sent("m1", attempt="b")
    ledger.mark_sent("m1", attempt="b")  # again: changes nothing
    assert ledger.get("m1").status == "sent"  # type: ignore[union-attr]
    with pytest.raises(SupersededError):
        ledger.mark_sent("m1", attempt="a")
    assert ledger.claim("m1", run_id="r", step_id="s", channel="email", attempt="c") == (
        "already-sent"
    )


def test_concurrent_takeovers_leave_one_attempt_able_to_commit(ledger: SendLedger) -> None:
    def claim(index: int) -> tuple[str, str]:
        attempt = f"attempt-{index}"
        return attempt, ledger.claim(
            "race", run_id="r", step_id="s", channel="email", attempt=attempt
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(claim, range(16)))
    assert sorted(outcome for _, outcome in outcomes) == ["claimed"] + ["in-doubt"] * 15
    committed = []
    for attempt, _ in outcomes:
        try:
            ledger.mark_sent("race", attempt=attempt)
        except SupersededError:
            continue
        committed.append(attempt)
    assert len(committed) == 1
    assert ledger.get("race").status == "sent"  # type: ignore[union-attr]


def test_state_survives_reopening(database_url: str) -> None:
    with SendLedger(database_url) as first:
        first.claim("m1", run_id="r", step_id="s", channel="email")
        first.mark_sent("m1")
    with SendLedger(database_url) as second:
        assert second.claim("m1", run_id="r", step_id="s", channel="email") == "already-sent"


def test_ledger_and_registry_share_a_database(database_url: str) -> None:
    # Whichever opens first migrates to head; the other finds it there.
    with SendLedger(database_url) as ledger, PlanRegistry(database_url) as registry:
        ledger.claim("m1", run_id="r", step_id="s", channel="email")
        assert registry.list_plans() == []
    engine = make_engine(resolve_url(database_url))
    try:
        with engine.connect() as connection:
            revisions = list(
                connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revisions == [head]
    assert head is not None and int(head) >= 2  # at least the ledger's own migration


def test_database_failure_is_a_ledger_error(database_url: str) -> None:
    with SendLedger(database_url) as ledger:
        drop_table(database_url, "sends")
        with pytest.raises(LedgerError, match="the send ledger .* failed"):
            ledger.claim("m1", run_id="r", step_id="s", channel="email")


def test_unreachable_database_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="cannot open the send ledger"):
        SendLedger("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
