"""The send ledger: what DEE set out to send, so retries do not send it twice.

Temporal runs an activity at least once: a worker that dies mid-send, a timeout, or a
failure after the provider accepted the message all lead to another attempt. Each send
therefore goes through the ledger, keyed by a message id that the attempt derives from the
run, the step and the visit (so every attempt of one send has the same id):

1. :meth:`SendLedger.claim` before talking to the provider. ``"claimed"``: first attempt,
   send. ``"already-sent"``: an earlier attempt finished; return success without sending.
   ``"in-doubt"``: an earlier attempt claimed the message but never recorded success.
2. :meth:`SendLedger.mark_sent` right after the provider accepted the message.

**The fence.** Each attempt claims with a token of its own (``attempt``). An
``"in-doubt"`` claim replaces the earlier attempt's token: the send is now this attempt's.
:meth:`SendLedger.mark_sent` with a token succeeds only while that token holds the send,
and raises :class:`SupersededError` otherwise. So an earlier attempt that did not die but
stalled (a frozen process, a long pause, a database lock) and wakes after its retry took
over can no longer complete the send.

For email the record is made *inside* the SMTP transaction (:mod:`activities._smtp`): after
the whole body has gone to the server and before the final ``.`` of DATA. An SMTP message
exists only once the server reads that dot, so an attempt that died while the ledger still
says ``"sending"`` never completed a message and the retry sends it; one that died after the
record had already handed the dot to the kernel, which delivers it even after the process is
gone, and the retry finds ``"already-sent"``; one that stalled and finds itself superseded
at the record closes the connection without the dot. What is left is the few microseconds
between the record and the write of the dot (the record is made on the event loop's thread,
with nothing in between), in which a crash loses the message rather than sending it twice.
That record is bounded (``mark_sent(bounded=True)``: its own connections, and no wait for a
connection, a lock or a statement longer than :data:`COMMIT_TIMEOUT`), so a locked database
fails the attempt, without the dot, instead of stalling the loop past the heartbeat timeout;
and a server that refuses the message after the dot gets the record released
(:meth:`SendLedger.release`) so that a retry sends again. A voice call checks it still holds
the send right before dialling, and an ``"in-doubt"`` call asks Twilio whether an earlier
attempt placed it, never adopting a call the ledger has for another send.

The table lives in the same database as the plan registry (``DEE_DATABASE_URL``) and is
created by the migrations, which run when a ledger opens.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    String,
    Table,
    select,
    update,
)

from dee.errors import DeeError
from dee.storage.database import (
    as_utc,
    insert_if_absent,
    make_engine,
    metadata,
    write_transaction,
)
from dee.storage.store import Store, database_errors

__all__ = [
    "COMMIT_TIMEOUT",
    "Channel",
    "ClaimOutcome",
    "LedgerError",
    "SendLedger",
    "SendRecord",
    "SendStatus",
    "SupersededError",
    "call_key",
    "email_key",
    "key_of_message_id",
]

logger = logging.getLogger(__name__)

Channel: TypeAlias = Literal["email", "voice"]
SendStatus: TypeAlias = Literal["sending", "sent"]
ClaimOutcome: TypeAlias = Literal["claimed", "already-sent", "in-doubt"]

CHANNELS: Final = ("email", "voice")
#: Seconds ``mark_sent(bounded=True)`` may wait, in any one wait: well inside the activities'
#: 10-second heartbeat timeout, which their 2-second heartbeats must keep meeting.
COMMIT_TIMEOUT: Final = 2.0

#: An email's key: 32 hex digits of a hash, then the step id made safe for a Message-ID.
_EMAIL_KEY = re.compile(r"^[0-9a-f]{32}(?:\.[A-Za-z0-9_-]+)?$")


def email_key(workflow_run_id: str | None, run_id: str, step_id: str, visit: int) -> str:
    """The ledger key of one email send, and the left part of its ``Message-ID``
    (``<{key}@{domain}>``): the same for every attempt, different for every execution,
    step and visit.

    The workflow execution is part of it because a run id (``<plan>:<contact>``) comes
    back when the plan runs again for the contact, and that run must send anew.
    """
    seed = "\x1f".join([workflow_run_id or "", run_id, step_id, str(visit)])
    digest = hashlib.sha256(seed.encode()).hexdigest()[:32]
    # Step ids may hold dots in places a Message-ID may not ("a..b", "a.").
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", step_id).strip("-")
    return f"{digest}.{readable}" if readable else digest


def key_of_message_id(message_id: str) -> str | None:
    """The ledger key in a ``Message-ID`` DEE sent (without angle brackets), or ``None``
    when the id is not shaped like one of :func:`email_key`'s."""
    key = message_id.rpartition("@")[0]
    return key if _EMAIL_KEY.match(key) else None


def call_key(workflow_run_id: str | None, run_id: str, step_id: str, visit: int) -> str:
    """The ledger key of the call for one visit of a step: the same for every attempt,
    new for every execution (see :func:`email_key`)."""
    key = json.dumps([workflow_run_id or "", run_id, step_id, visit], separators=(",", ":"))
    return "call-" + hashlib.sha256(key.encode()).hexdigest()[:32]


#: Mirrors migrations 0002, 0005 and 0006; change only together with a new migration.
sends = Table(
    "sends",
    metadata,
    Column("message_id", String(200), primary_key=True),
    Column("run_id", String(400), nullable=False),
    Column("step_id", String(100), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("status", String(10), nullable=False),
    Column("provider_id", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("attempt", String(32), nullable=True),
    Column("execution", String(64), nullable=True),
    CheckConstraint("channel IN ('email', 'voice')", name="ck_sends_channel"),
    CheckConstraint("status IN ('sending', 'sent')", name="ck_sends_status"),
    Index("ix_sends_run_id", "run_id"),
)


class LedgerError(DeeError):
    """The send ledger's database failed, or was asked about a message it never claimed."""

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        self.message_id = message_id
        super().__init__(message)


class SupersededError(LedgerError):
    """Another attempt took this send over: the caller must not complete it (for email:
    must not send the final dot of DATA)."""


@dataclass(frozen=True, slots=True)
class SendRecord:
    """One row of the ledger."""

    message_id: str
    run_id: str
    step_id: str
    channel: Channel
    status: SendStatus
    provider_id: str | None
    created_at: datetime.datetime
    sent_at: datetime.datetime | None
    #: The run execution that made the send (``None`` on rows from before 0006).
    execution: str | None = None


class SendLedger(Store):
    """Claims and completions of sends; safe to share between threads and processes.

    ``url`` is as for :class:`dee.PlanRegistry`: ``sqlite:///path``, ``postgresql://...``,
    or ``None`` for ``$DEE_DATABASE_URL``, else ``sqlite:///.dee/dee.db``. Calls block:
    from async code run them in a thread (:func:`asyncio.to_thread`).
    """

    label = "send ledger"
    error = LedgerError

    def __init__(
        self, url: str | None = None, *, echo: bool = False, migrate: bool | None = None
    ) -> None:
        super().__init__(url, echo=echo, migrate=migrate)
        # For mark_sent(bounded=True), the commit an email makes on the event loop's thread:
        # connections of its own, so that a pool busy with threaded calls cannot hold it
        # up, and no wait longer than COMMIT_TIMEOUT, so that a locked database fails the
        # attempt in seconds instead of stopping the worker's heartbeats.
        self._bounded = make_engine(self.url, echo=echo, timeout=COMMIT_TIMEOUT)
        try:
            # Connect now, not first on the loop's thread.
            self._bounded.connect().close()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._bounded.dispose()
        super().close()

    @database_errors
    def claim(
        self,
        message_id: str,
        *,
        run_id: str,
        step_id: str,
        channel: Channel,
        attempt: str | None = None,
        execution: str | None = None,
    ) -> ClaimOutcome:
        """Record that ``message_id`` is about to be sent, unless an attempt already did.

        ``"claimed"`` the first time; ``"already-sent"`` once :meth:`mark_sent` has been
        called for it; ``"in-doubt"`` when an earlier claim never got as far as
        :meth:`mark_sent` (what to do then is the channel's call: see the module's doc).
        Concurrent claims of one message id: exactly one of them gets ``"claimed"``.

        ``attempt`` fences the send: a token of the calling attempt's own. An
        ``"in-doubt"`` claim with a token takes the send over from the earlier attempt,
        which, if it only stalled, can then no longer :meth:`mark_sent` it. ``execution``
        is the run execution the send belongs to, kept on the row.
        """
        if channel not in CHANNELS:
            raise ValueError(f"channel {channel!r} is unknown; expected one of {CHANNELS}")
        row = {
            "message_id": message_id,
            "run_id": run_id,
            "step_id": step_id,
            "channel": channel,
            "status": "sending",
            "created_at": datetime.datetime.now(datetime.UTC),
            "attempt": attempt,
            "execution": execution,
        }
        with write_transaction(self._engine) as connection:
            if insert_if_absent(connection, sends, row, keys=[sends.c.message_id]):
                return "claimed"
            if attempt is not None:
                taken = connection.execute(
                    update(sends)
                    .where(sends.c.message_id == message_id, sends.c.status == "sending")
                    .values(attempt=attempt)
                )
                if taken.rowcount == 1:
                    return "in-doubt"
            status = connection.execute(
                select(sends.c.status).where(sends.c.message_id == message_id)
            ).scalar_one()
        return "already-sent" if status == "sent" else "in-doubt"

    @database_errors
    def release(self, message_id: str) -> None:
        """Undo :meth:`mark_sent` for a message the provider refused after it was
        recorded, so that the next attempt sends it."""
        with write_transaction(self._engine) as connection:
            connection.execute(
                update(sends)
                .where(sends.c.message_id == message_id)
                .values(status="sending", provider_id=None, sent_at=None)
            )

    @database_errors
    def mark_sent(
        self,
        message_id: str,
        *,
        provider_id: str | None = None,
        attempt: str | None = None,
        bounded: bool = False,
    ) -> None:
        """Record that the provider accepted ``message_id``; calling it again changes
        nothing. :class:`LedgerError` if the message was never claimed;
        :class:`SupersededError` if ``attempt`` no longer holds the send (a later attempt
        took it over, or recorded it).

        ``bounded``: for a call on the event loop's thread. It then runs on connections of
        its own and raises :class:`LedgerError` rather than wait longer than
        :data:`COMMIT_TIMEOUT` seconds for a connection, a lock or a statement."""
        holds = [sends.c.message_id == message_id, sends.c.status == "sending"]
        if attempt is not None:
            holds.append(sends.c.attempt == attempt)
        engine = self._bounded if bounded else self._engine
        with write_transaction(engine) as connection:
            updated = connection.execute(
                update(sends)
                .where(*holds)
                .values(
                    status="sent",
                    provider_id=provider_id,
                    sent_at=datetime.datetime.now(datetime.UTC),
                )
            )
            if updated.rowcount == 1:
                return
            found = connection.execute(
                select(sends.c.status, sends.c.attempt).where(sends.c.message_id == message_id)
            ).first()
        if found is None:
            raise LedgerError(
                f"message {message_id!r} was never claimed: claim() it before sending",
                message_id=message_id,
            )
        if attempt is not None and found.attempt != attempt:
            raise SupersededError(
                f"message {message_id!r} was taken over by another attempt",
                message_id=message_id,
            )

    @database_errors
    def holds(self, message_id: str, *, attempt: str) -> bool:
        """Whether ``attempt`` still holds ``message_id`` (claimed, not sent, not taken over)."""
        with self._engine.connect() as connection:
            found = connection.execute(
                select(sends.c.message_id).where(
                    sends.c.message_id == message_id,
                    sends.c.status == "sending",
                    sends.c.attempt == attempt,
                )
            ).first()
        return found is not None

    @database_errors
    def recorded_provider_ids(self, provider_ids: list[str]) -> set[str]:
        """Which of ``provider_ids`` (call SIDs) the ledger already has for some send."""
        if not provider_ids:
            return set()
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(sends.c.provider_id).where(sends.c.provider_id.in_(provider_ids))
            )
            return {str(row.provider_id) for row in rows}

    @database_errors
    def get(self, message_id: str) -> SendRecord | None:
        """The ledger's row for ``message_id``, or ``None``."""
        with self._engine.connect() as connection:
            row = connection.execute(select(sends).where(sends.c.message_id == message_id)).first()
        if row is None:
            return None
        return _record(row._mapping)


def _record(row: Any) -> SendRecord:
    return SendRecord(
        message_id=row["message_id"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        channel=row["channel"],
        status=row["status"],
        provider_id=row["provider_id"],
        created_at=as_utc(row["created_at"]),
        sent_at=None if row["sent_at"] is None else as_utc(row["sent_at"]),
        execution=row["execution"],
    )
