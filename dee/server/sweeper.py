"""Signalling runs of their tracking hits, and the sweeper that sees every signal go out.

The first hit of a key takes it and the server signals the run after answering (see
:mod:`dee.server.hits` and :mod:`dee.server.tracking_routes`). A server that dies between the
two leaves the key taken and its signal unsent; so does one whose record of a sent signal
failed. Every ``dee serve`` therefore sweeps: every few seconds it takes the keys still
pending :data:`~dee.settings.Settings.tracking_sweep_after` seconds after their hit, in
batches, and signals their runs. What a sweeper takes, no other takes until its lease ends
(:meth:`HitStore.take_due`), so several servers on one database share the work; one that
dies holding keys leaves them to the others once the lease runs out.

The guarantee: a hit's signal reaches Temporal at least once, and the run counts it once,
since it drops an event id it has seen (its ids are the keys'). A key is marked signalled
only after Temporal accepted the signal; one whose run has ended or never existed is marked
so and never tried again; any other failure (Temporal unreachable, the run busy
continuing as new) is tried again later, waiting twice as long each time up to
:data:`MAX_BACKOFF`.

- :func:`deliver` sends one claim's signal and says how it ended;
- :func:`signal_batch` delivers claims concurrently and records how each ended: the stage
  that signals recorded hits in batches;
- :func:`sweep` takes due claims batch by batch until none is left (``dee tracking sweep``);
- :func:`sweeping` sweeps in the background while its block runs (``dee serve``'s lifespan).

Logs name kinds, steps and counts, never run ids (they hold contact ids, often addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from temporalio.client import Client

from dee.errors import DeeError
from dee.runs.client import send_event
from dee.runs.errors import RunClosedError, RunNotFoundError
from dee.server.hits import HitStore, SignalClaim, SignalOutcome

__all__ = [
    "BATCH_SIZE",
    "LEASE",
    "SweepReport",
    "deliver",
    "signal_batch",
    "sweep",
    "sweep_interval",
    "sweeping",
]

logger = logging.getLogger(__name__)

#: Claims taken and signalled at a time.
BATCH_SIZE: Final = 100
#: Signals of one batch in flight at once.
CONCURRENCY: Final = 16
#: Seconds a sweeper's signal may take before it counts as failed (and is tried again).
SIGNAL_TIMEOUT: Final = 10.0
#: Seconds a sweeper holds the claims it took, well above the longest a batch can take
#: (``BATCH_SIZE / CONCURRENCY * SIGNAL_TIMEOUT``): past it, another may take them.
LEASE: Final = 120.0
#: Longest wait, in seconds, between tries of a claim whose signal keeps failing.
MAX_BACKOFF: Final = 600.0
#: Longest wait, in seconds, between two sweeps.
MAX_INTERVAL: Final = 10.0
#: Seconds a stopping server waits for a sweep under way before cancelling it.
STOP_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep did: claims signalled, claims whose run had ended (or never existed),
    and claims whose signal failed and will be tried again."""

    signalled: int = 0
    ended: int = 0
    failed: int = 0

    def __add__(self, other: SweepReport) -> SweepReport:
        return SweepReport(
            self.signalled + other.signalled, self.ended + other.ended, self.failed + other.failed
        )

    @property
    def total(self) -> int:
        return self.signalled + self.ended + self.failed


def sweep_interval(older_than: float) -> float:
    """Seconds between background sweeps: a third of the grace period, from 1 to
    :data:`MAX_INTERVAL` seconds, so a pending claim is swept soon after it is due."""
    return min(max(older_than / 3, 1.0), MAX_INTERVAL)


async def deliver(client: Client, claim: SignalClaim) -> SignalOutcome:
    """Signal ``claim``'s run; ``signalled`` once Temporal accepted it, ``run-closed`` or
    ``run-not-found`` when there is no run to take it. Any other failure raises."""
    try:
        await send_event(
            client,
            claim.run_id,
            type=claim.kind,
            step_id=claim.step_id,
            event_id=claim.event_id,
            details=claim.details,
            at=claim.at,
            execution=claim.execution or None,
        )
    except RunClosedError:
        return "run-closed"
    except RunNotFoundError:
        return "run-not-found"
    return "signalled"


async def signal_batch(
    client: Client,
    store: HitStore,
    claims: Sequence[SignalClaim],
    *,
    retry_after: float | None,
    slots: asyncio.Semaphore | None = None,
) -> SweepReport:
    """Signal the runs of ``claims``, at most :data:`CONCURRENCY` at once (or as many as
    ``slots`` lets through, shared with other batches), then settle those that ended in one
    transaction and postpone the others: their next try waits ``retry_after`` seconds,
    doubled for every try before, at most :data:`MAX_BACKOFF`. With ``retry_after`` ``None``
    (the first try, right after the hit) those stay pending as they were, for the sweeper."""
    slots = slots or asyncio.Semaphore(CONCURRENCY)

    async def one(claim: SignalClaim) -> SignalOutcome:
        async with slots, asyncio.timeout(SIGNAL_TIMEOUT):
            return await deliver(client, claim)

    outcomes = await asyncio.gather(*(one(claim) for claim in claims), return_exceptions=True)
    now = datetime.datetime.now(datetime.UTC)
    settled: list[tuple[SignalClaim, SignalOutcome]] = []
    postponed: list[tuple[SignalClaim, datetime.datetime]] = []
    failures: Counter[str] = Counter()
    for claim, outcome in zip(claims, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            failures[type(outcome).__name__] += 1
            if retry_after is None:
                continue
            wait = min(retry_after * 2 ** min(claim.attempts - 1, 20), MAX_BACKOFF)
            postponed.append((claim, now + datetime.timedelta(seconds=wait)))
            continue
        settled.append((claim, outcome))
        if outcome != "signalled":
            logger.info(
                "%s of step %r not signalled: %s (no more tries)",
                claim.kind,
                claim.step_id,
                outcome,
            )
    if settled:
        await asyncio.to_thread(store.settle, settled)
    if postponed:
        await asyncio.to_thread(store.postpone, postponed)
    failed = sum(failures.values())
    if failures:
        # Only the errors' types: their text may name the run.
        reasons = ", ".join(f"{name} x{count}" for name, count in sorted(failures.items()))
        logger.warning(
            "%d tracking signal(s) failed (%s); %s",
            failed,
            reasons,
            "they are tried again later" if retry_after is not None else "the sweeper retries them",
        )
    ended = sum(1 for _claim, outcome in settled if outcome != "signalled")
    return SweepReport(signalled=len(settled) - ended, ended=ended, failed=failed)


async def sweep(
    client: Client,
    store: HitStore,
    *,
    older_than: float,
    batch_size: int = BATCH_SIZE,
    lease: float = LEASE,
) -> SweepReport:
    """Signal every claim pending ``older_than`` seconds after its hit, batch by batch,
    until none that was due when the sweep started is left. A claim is taken once a sweep:
    one that fails waits for a later sweep."""
    report = SweepReport()
    retry_after = max(older_than, 1.0)
    started = datetime.datetime.now(datetime.UTC)
    while True:
        claims = await asyncio.to_thread(
            store.take_due, older_than=older_than, lease=lease, limit=batch_size, due_at=started
        )
        if claims:
            report += await signal_batch(client, store, claims, retry_after=retry_after)
        if len(claims) < batch_size:
            return report


@contextlib.asynccontextmanager
async def sweeping(
    client: Client, store: Callable[[], Awaitable[HitStore]], *, older_than: float
) -> AsyncIterator[None]:
    """Sweep (as :func:`sweep`) at once and every :func:`sweep_interval` seconds while the
    block runs, in a task of its own. ``store`` opens the tracking database (again after a
    failure). A failing sweep is logged and the next one tries again; at the end of the
    block a sweep under way gets :data:`STOP_TIMEOUT` seconds to finish, then is cancelled.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(
        _sweep_until(stop, client, store, older_than=older_than), name="dee-signal-sweeper"
    )
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT)
        except TimeoutError:
            logger.warning("the signal sweep did not end within %g s: cancelled", STOP_TIMEOUT)


async def _sweep_until(
    stop: asyncio.Event,
    client: Client,
    store: Callable[[], Awaitable[HitStore]],
    *,
    older_than: float,
) -> None:
    interval = sweep_interval(older_than)
    while not stop.is_set():
        try:
            report = await sweep(client, await store(), older_than=older_than)
        except DeeError as exc:
            logger.error("the signal sweep failed, next try in %g s: %s", interval, exc)
        except Exception:
            logger.exception("the signal sweep failed, next try in %g s", interval)
        else:
            if report.total:
                logger.info(
                    "signal sweep: %d signalled, %d for ended runs, %d to try again",
                    report.signalled,
                    report.ended,
                    report.failed,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
