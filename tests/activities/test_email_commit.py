"""The commit before the final dot, against a database another connection has locked.

The commit runs on the event loop's thread (see :mod:`activities._smtp`), so while it waits
nothing else of the worker runs, heartbeats included. Here another connection takes the
database's lock when the server sees RCPT (after the send's claim, before its commit); the
commit must give up within ``COMMIT_TIMEOUT``, the attempt fail retryably without the dot,
and the retry, once the lock is gone, send exactly one message. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities._attempt import HEARTBEAT_INTERVAL
from activities.email import EmailActivities
from dee.runs.ledger import COMMIT_TIMEOUT, LedgerError, SendLedger, email_key
from tests.activities.test_email import make_input, settings_for
from tests.helpers.smtp import RecordingHandler, smtp_server

KEY = email_key("test-run", "welcome:ana", "intro-email", 1)


class LockingHandler(RecordingHandler):
    """Calls ``lock`` (in the server's thread) when the first client's RCPT arrives."""

    def __init__(self, lock: Callable[[], None]) -> None:
        super().__init__()
        self.lock = lock
        self.locked = threading.Event()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if not self.locked.is_set():
            self.lock()
            self.locked.set()
        return reply


class Locker:
    """Another connection to the ledger's database that holds the lock the commit needs:
    SQLite's write lock, or on PostgreSQL the rows of ``sends`` (``FOR UPDATE``)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self._held: sqlite3.Connection | psycopg.Connection[Any] | None = None

    def lock(self) -> None:
        if self.url.get_backend_name() == "sqlite":
            lite = sqlite3.connect(
                str(self.url.database), isolation_level=None, check_same_thread=False
            )
            lite.execute("BEGIN IMMEDIATE")
            self._held = lite
        else:
            plain = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            pg = psycopg.connect(plain)
            locked = pg.execute("SELECT message_id FROM sends FOR UPDATE").fetchall()
            assert locked == [(KEY,)], locked
            self._held = pg

    def release(self) -> None:
        if self._held is not None:
            self._held.rollback()
            self._held.close()
            self._held = None


@contextmanager
def loop_stalls() -> Iterator[list[float]]:
    """The longest times the running loop went without running a 10 ms ticker, in seconds."""
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - start - 0.01)

    ticker = asyncio.get_running_loop().create_task(tick())
    try:
        yield gaps
    finally:
        ticker.cancel()


async def test_a_locked_database_fails_the_commit_fast_and_the_retry_sends_once(
    database_url: str,
) -> None:
    locker = Locker(database_url)
    handler = LockingHandler(locker.lock)
    beats: list[float] = []
    with SendLedger(database_url) as ledger:
        async with smtp_server(handler) as server:
            activities = EmailActivities(settings_for(server.url), ledger)
            first = ActivityEnvironment()
            first.on_heartbeat = lambda *_: beats.append(time.monotonic())
            try:
                with loop_stalls() as gaps, pytest.raises(LedgerError) as failed:
                    await first.run(activities.send_email, make_input())
                ended = time.monotonic()
                record = ledger.get(KEY)
                # Nothing was delivered: the attempt ended DATA without the dot.
                await asyncio.sleep(0.5)
                assert handler.messages == []
            finally:
                locker.release()
            retry = await ActivityEnvironment().run(activities.send_email, make_input())
            sent = ledger.get(KEY)
    # Positive control: the commit did meet the lock, and waited for it on the loop...
    assert handler.locked.is_set()
    assert max(gaps) >= COMMIT_TIMEOUT * 0.75, gaps
    # ... but no longer than its bound, so heartbeats kept within their timeout.
    assert max(gaps) < COMMIT_TIMEOUT + 1.0, gaps
    marks = [*beats, ended]
    assert beats and max(b - a for a, b in itertools.pairwise(marks)) < (
        HEARTBEAT_INTERVAL + COMMIT_TIMEOUT + 1.0
    ), marks
    # A LedgerError is no ApplicationError: Temporal retries the attempt.
    assert not isinstance(failed.value, ApplicationError)
    assert record is not None and record.status == "sending"
    assert retry.status == "sent"
    assert [received.rcpt_tos for received in handler.messages] == [("ana@recipient.example",)]
    assert sent is not None and sent.status == "sent"
