"""Fixtures of the channel activities' tests: the loopback Calls API and a send ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dee.runs.ledger import SendLedger
from tests.helpers.twilio_api import TwilioApi, twilio_api


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    """A loopback Calls API the real twilio client talks to."""
    with twilio_api() as api:
        yield api


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SendLedger]:
    """A send ledger in a new SQLite file (the email tests have their own)."""
    ledger = SendLedger(f"sqlite:///{tmp_path / 'dee.db'}")
    try:
        yield ledger
    finally:
        ledger.close()
