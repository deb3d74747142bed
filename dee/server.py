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

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from temporalio.client import Client

from dee.registry import PlanRegistry
from dee.settings import Settings

__all__ = ["ServerState", "create_app", "server_state"]

logger = logging.getLogger(__name__)

#: Bodies larger than this are refused with 413 before they are read in full.
MAX_BODY_BYTES = 1024 * 1024


@dataclass
class ServerState:
    """What every route can use. ``stores`` holds the server's own databases (hits,
    suppressions, inbound messages), opened once per app, keyed by name."""

    settings: Settings
    client: Client
    registry: PlanRegistry
    stores: dict[str, Any] = field(default_factory=dict)


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
