"""What every route of the server shares: settings, the Temporal client, the registry, the
payload codec, the server's stores and its hit recorder, on ``app.state`` as one
:class:`ServerState`."""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from temporalio.client import Client

from dee.plans.registry import PlanRegistry
from dee.runs.codec import EncryptionCodec
from dee.server.hits import HitStore
from dee.server.recorder import HitRecorder
from dee.settings import Settings
from dee.storage.store import Store

__all__ = ["ServerState", "server_state"]


_S = TypeVar("_S", bound=Store)


@dataclass
class ServerState:
    """What every route can use. ``codec`` encrypts with ``settings.payload_keys`` (``None``
    without them). ``stores`` holds the server's own databases (the send ledger, hits and
    suppressions, inbound messages): one of each kind per app, opened on first use through
    :meth:`store`, closed by the app's lifespan."""

    settings: Settings
    client: Client
    registry: PlanRegistry
    codec: EncryptionCodec | None = None
    stores: dict[str, Any] = field(default_factory=dict)
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def recorder(self) -> HitRecorder:
        """What keeps tracking hits and signals their runs (:mod:`dee.server.recorder`)."""
        return HitRecorder(self.client, self._hit_store)

    async def _hit_store(self) -> HitStore:
        return await self.store(HitStore)

    async def store(self, kind: type[_S]) -> _S:
        """The app's store of ``kind``, opened (and migrated) in a thread the first time."""
        found = self.stores.get(kind.__name__)
        if found is None:
            found = await asyncio.to_thread(self._open, kind)
        assert isinstance(found, kind), f"stores[{kind.__name__!r}] is {type(found).__name__}"
        return found

    def _open(self, kind: type[_S]) -> _S:
        with self._opening:
            found = self.stores.get(kind.__name__)
            if found is None:
                found = self.stores[kind.__name__] = kind(self.settings.database_url)
        assert isinstance(found, kind)
        return found


async def server_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`, as a FastAPI dependency (``async``, so FastAPI
    calls it on the event loop rather than through its thread pool)."""
    state: ServerState = request.app.state.dee
    return state
