"""Tracking hits at the speed of a send: hits kept in shared commits, runs signalled in batches.

A pixel or a redirect must answer at once, and must not lose its hit. Committing each hit
in a transaction of its own, in a thread of its own, and signalling Temporal once per hit
made the server's CPU the limit (about 4 ms a hit) and queued the answers behind it. So a
:class:`HitRecorder` runs two stages in the background of ``dee serve``:

- **group commit**: a request hands its hit to the recorder and waits for the commit that
  keeps it (:meth:`HitRecorder.record`). One writer commits every hit waiting, up to
  :data:`BATCH_SIZE`, in one transaction (:meth:`HitStore.record_hits`, which also takes
  the collapse keys), then answers all their requests. While it commits, the next batch
  gathers: under load a batch is whatever arrived during the last commit, and alone a hit
  waits for its own commit only. The answer therefore waits for no more than the commit
  under way and its own (a few milliseconds), and once the contact has the GIF or the
  redirect the hit is on disk: a server killed at any point loses at most hits whose
  request it had not answered, which the mail client fetches again.
- **signalling**: the keys a commit took go to the signalling stage at once, not after
  the sweeper's grace period. Each commit's keys are one batch
  (:func:`dee.server.sweeper.signal_batch`): their signals go out concurrently, at most
  :data:`SIGNAL_CONCURRENCY` in flight across batches, and the batch is settled in one
  transaction. A signal that fails leaves its key pending, as does a server that dies with
  signals in memory: the sweeper (:mod:`dee.server.sweeper`) signals those keys once they
  are :data:`~dee.settings.Settings.tracking_sweep_after` seconds old. No more than
  :data:`MAX_SIGNALLING` keys wait in memory; past that (Temporal much slower than the
  hits) the sweeper takes the rest, so memory stays bounded.

The Temporal signal is thus off the request path, and the database write is on it only as
one shared commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from temporalio.client import Client

from dee.errors import DeeError
from dee.metrics import count_hits
from dee.server.hits import HitStore, NewHit, SignalClaim
from dee.server.sweeper import STOP_TIMEOUT, signal_batch

__all__ = ["BATCH_SIZE", "MAX_SIGNALLING", "SIGNAL_CONCURRENCY", "HitRecorder"]

logger = logging.getLogger(__name__)

#: Most hits kept in one transaction.
BATCH_SIZE: Final = 500
#: Signals in flight at once, across batches.
SIGNAL_CONCURRENCY: Final = 32
#: Most keys waiting in memory for their signal; the sweeper signals any beyond.
MAX_SIGNALLING: Final = 5000

#: A hit, and the future its request awaits: the commit's error, or ``None`` once kept.
_Waiting = tuple[NewHit, "asyncio.Future[BaseException | None]"]


class HitRecorder:
    """Keeps tracking hits in shared commits and signals the keys they take (see the
    module). ``store`` opens the tracking database (again after a failure). The stages start
    with the first hit, or with :meth:`running`, whose end drains them."""

    def __init__(self, client: Client, store: Callable[[], Awaitable[HitStore]]) -> None:
        self._client = client
        self._store = store
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self._signalling: set[asyncio.Task[None]] = set()
        self._outstanding = 0
        self._slots = asyncio.Semaphore(SIGNAL_CONCURRENCY)

    async def record(self, hit: NewHit) -> None:
        """Keep ``hit``; returns once the transaction that keeps it has committed (its
        signal, if it takes its key, goes out afterwards). Raises the store's
        :class:`~dee.server.hits.HitStoreError` when the commit failed."""
        future: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((hit, future))
        # The writer commits until nothing waits; with no await between its last look and
        # its end, a hit added meanwhile is either seen by it or finds it done.
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="dee-hit-writer")
        # Shielded: a contact who hangs up does not take the hit out of its batch. The
        # error comes as a result, so one nobody awaits any more is not "never retrieved".
        failure = await asyncio.shield(future)
        if failure is not None:
            raise failure

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The block during which the recorder serves; at its end, hits still waiting are
        committed and signals under way get :data:`~dee.server.sweeper.STOP_TIMEOUT`
        seconds to finish (keys left are the sweeper's)."""
        try:
            yield
        finally:
            await self.drain()

    async def drain(self) -> None:
        """Commit the hits waiting and wait (bounded) for the signals under way."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=STOP_TIMEOUT)
        if self._signalling:
            _done, late = await asyncio.wait(self._signalling, timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()
            if late:
                logger.warning(
                    "%d tracking signal batch(es) did not end within %g s: the sweeper "
                    "signals their keys",
                    len(late),
                    STOP_TIMEOUT,
                )

    async def _write(self) -> None:
        """Commit what waits, batch after batch, until nothing does."""
        while self._waiting:
            batch = self._waiting[:BATCH_SIZE]
            del self._waiting[:BATCH_SIZE]
            try:
                claims = await self._commit([hit for hit, _future in batch])
            except BaseException as exc:
                for _hit, future in batch:
                    future.set_result(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _hit, future in batch:
                future.set_result(None)
            count_hits(hit.kind for hit, _future in batch)
            taken = [claim for claim in claims if claim is not None]
            if taken:
                self._signal(taken)

    async def _commit(self, hits: list[NewHit]) -> list[SignalClaim | None]:
        store = await self._store()
        return await asyncio.to_thread(store.record_hits, hits)

    def _signal(self, claims: Sequence[SignalClaim]) -> None:
        room = MAX_SIGNALLING - self._outstanding
        if room < len(claims):
            logger.warning(
                "%d tracking signal(s) left to the sweeper: %d are waiting already",
                len(claims) - max(room, 0),
                self._outstanding,
            )
            claims = claims[: max(room, 0)]
        if not claims:
            return
        self._outstanding += len(claims)
        task = asyncio.create_task(self._signal_batch(claims), name="dee-hit-signals")
        self._signalling.add(task)
        task.add_done_callback(self._signalling.discard)

    async def _signal_batch(self, claims: Sequence[SignalClaim]) -> None:
        try:
            await signal_batch(
                self._client, await self._store(), claims, retry_after=None, slots=self._slots
            )
        except DeeError as exc:
            # The keys stay pending (or signalled but not recorded): the sweeper signals
            # them again, and the runs drop the repeats by event id.
            logger.warning("%d tracking signal(s) were not settled: %s", len(claims), exc)
        except Exception:
            logger.exception("%d tracking signal(s) were not settled", len(claims))
        finally:
            self._outstanding -= len(claims)
