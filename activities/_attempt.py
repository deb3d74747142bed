"""How one attempt of a channel's activity behaves: it checks its window first
(:func:`check_window`), heartbeats while it works, and sorts its failures into permanent
ones (:func:`permanent`) and the rest, which are retried.

Heartbeats let a worker that dies mid-send be noticed in seconds. Without them Temporal only
learns an attempt is lost when its start-to-close timeout ends (minutes); with
``heartbeat_timeout`` set on the activity and this running beside the work, the attempt is
retried on another worker shortly after its heartbeats stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Final, Protocol, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dee.metrics import count_send
from dee.runs.model import Contact
from dee.runs.windows import (
    OUTSIDE_WINDOW,
    NoOpeningError,
    WindowCheck,
    closed_details,
    closed_until,
)

__all__ = ["HEARTBEAT_INTERVAL", "check_window", "counted", "heartbeating", "permanent"]

HEARTBEAT_INTERVAL: Final = 2.0


async def _beat(interval: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def heartbeating(interval: float = HEARTBEAT_INTERVAL) -> AsyncIterator[None]:
    """Heartbeat every ``interval`` seconds for the duration of the block."""
    beat = asyncio.create_task(_beat(interval))
    try:
        yield
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


def permanent(message: str, kind: str) -> ApplicationError:
    """A failure no retry can mend (a refused recipient, a missing setting): it ends the
    step at once, with ``kind`` as the error's type."""
    return ApplicationError(message, type=kind, non_retryable=True)


class _Result(Protocol):
    @property
    def status(self) -> str: ...


_R = TypeVar("_R", bound=_Result)


async def counted(channel: str, send: Awaitable[_R]) -> _R:
    """``send``'s result, counted in ``dee_sends_total`` by its status, or as ``failed``
    (a permanent failure), ``error`` (retried) or ``cancelled``."""
    status = "error"
    try:
        result = await send
        status = result.status
        return result
    except ApplicationError as exc:
        status = "failed" if exc.non_retryable else "error"
        raise
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        count_send(channel, status)


async def check_window(check: WindowCheck | None, contact: Contact) -> None:
    """Raise ``OutsideWindow`` (non-retryable, with a :class:`~dee.runs.windows.WindowClosed`
    as its details) when the attempt falls outside its window, before it does anything.

    The time is the attempt's start, from the Temporal server's clock (skipped time
    included on the time-skipping test server), not this machine's: a retry that lands in
    a closed window is held again rather than going out late.
    """
    if check is None:
        return
    # When this attempt started by the server's clock. Not current_attempt_scheduled_time:
    # the time-skipping test server reports there the end of the previous attempt (one
    # backoff interval early), and the start is the closer to the send in any case (a task
    # may wait in the queue for a busy worker).
    now = activity.info().started_time
    try:
        # Off the event loop: the first use of a holiday calendar builds it (~0.1 s).
        closed = await asyncio.to_thread(closed_until, check, contact, now=now)
    except (NoOpeningError, LookupError) as exc:
        raise permanent(
            f"step {check.step_id!r}: {check.kind} {exc}; fix the plan's schedule (dee plans "
            "validate reports what is wrong)",
            "InvalidWindow",
        ) from None
    if closed is None:
        return
    activity.logger.info("%s: outside its window until %s", check.step_id, closed.until)
    raise ApplicationError(
        closed.reason, closed_details(closed), type=OUTSIDE_WINDOW, non_retryable=True
    )
