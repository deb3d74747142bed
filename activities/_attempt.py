"""How one attempt of a channel's activity behaves: it heartbeats while it works, and sorts
its failures into permanent ones (:func:`permanent`) and the rest, which are retried.

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

__all__ = ["HEARTBEAT_INTERVAL", "counted", "heartbeating", "permanent"]

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
