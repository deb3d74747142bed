"""The API and webhook server: the outside world steering runs, over HTTP.

``create_app`` builds the FastAPI app; ``dee serve`` runs it under uvicorn. Its parts:

- the REST API under ``/v1`` (:mod:`dee._api_routes`), behind bearer API keys;
- tracking pixels, click redirects and unsubscribes (:mod:`dee._tracking_routes`),
  answering the signed links the email activity puts in every message;
- provider webhooks (:mod:`dee._inbound_routes`, :mod:`dee._twilio_routes`): replies,
  SendGrid events, Twilio call status and answering-machine callbacks.

Everything the routes need lives on ``app.state`` as one :class:`ServerState`, reached
through :func:`server_state` so routes can be tested against a real app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from temporalio.client import Client

from dee._store import Store
from dee.registry import PlanRegistry
from dee.settings import Settings

__all__ = ["ServerState", "create_app", "server_state"]

logger = logging.getLogger(__name__)

#: Bodies larger than this are refused with 413 before they are read in full.
MAX_BODY_BYTES = 1024 * 1024


_S = TypeVar("_S", bound=Store)


@dataclass
class ServerState:
    """What every route can use. ``stores`` holds the server's own databases (the send
    ledger, hits and suppressions, inbound messages): one of each kind per app, opened on
    first use through :meth:`store`, closed by the app's lifespan."""

    settings: Settings
    client: Client
    registry: PlanRegistry
    stores: dict[str, Any] = field(default_factory=dict)
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False)

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


def create_app(
    settings: Settings,
    *,
    client: Client,
    registry: PlanRegistry | None = None,
    extra_setup: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """The DEE app for ``settings``, signalling runs through ``client``."""
    from dee import _routes  # the routers, gathered in one place

    owned_registry = registry is None
    state = ServerState(
        settings=settings,
        client=client,
        registry=registry if registry is not None else PlanRegistry(settings.database_url),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for store in state.stores.values():
                store.close()
            if owned_registry:
                state.registry.close()

    app = FastAPI(
        title="DEE",
        summary="A durable engine for outbound communication workflows",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.dee = state
    _routes.install(app, state)
    if extra_setup is not None:
        extra_setup(app)
    return app
