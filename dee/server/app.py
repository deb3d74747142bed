"""The API and webhook server: the outside world steering runs, over HTTP.

``create_app`` builds the FastAPI app; ``dee serve`` runs it under uvicorn. Its parts:

- the REST API under ``/v1`` (:mod:`dee.server.plans_api`, :mod:`dee.server.runs_api`,
  :mod:`dee.server.bulk_api`, :mod:`dee.server.suppressions_api`), behind bearer API keys;
- tracking pixels, click redirects and unsubscribes (:mod:`dee.server.tracking_routes`),
  answering the signed links the email activity puts in every message;
- provider webhooks (:mod:`dee.server.inbound_routes`, :mod:`dee.server.twilio_routes`): replies,
  SendGrid events, Twilio call status and answering-machine callbacks;
- the codec endpoint (:mod:`dee.server.codec_routes`), through which the Temporal Web UI shows
  the payloads DEE encrypts, with CORS for the Web UI's origins;
- ``/metrics`` (:mod:`dee.server.metrics_route`), for Prometheus, off unless it has keys.

Everything the routes need lives on ``app.state`` as one :class:`ServerState`, reached
through :func:`server_state` so routes can be tested against a real app. While the app runs,
its lifespan runs the stages that keep tracking hits and signal them
(:mod:`dee.server.recorder`) and sweeps tracking signals that never went out
(:mod:`dee.server.sweeper`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from temporalio.client import Client

from dee.plans.registry import PlanRegistry
from dee.runs.codec import EncryptionCodec, parse_payload_keys
from dee.server import (
    bulk_api,
    codec_routes,
    inbound_routes,
    metrics_route,
    plans_api,
    runs_api,
    suppressions_api,
    tracking_routes,
    twilio_routes,
)
from dee.server._http import install_error_answers
from dee.server.access_log import AccessLog, quiet_uvicorn_access_log
from dee.server.hits import HitStore
from dee.server.state import ServerState
from dee.server.sweeper import sweeping
from dee.settings import Settings

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    *,
    client: Client,
    registry: PlanRegistry | None = None,
    extra_setup: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """The DEE app for ``settings``, signalling runs through ``client``."""
    # Unusable payload keys stop the server here, not at the first call to /codec.
    codec = (
        EncryptionCodec(parse_payload_keys(settings.payload_keys))
        if settings.payload_keys
        else None
    )
    owned_registry = registry is None
    state = ServerState(
        settings=settings,
        client=client,
        registry=registry if registry is not None else PlanRegistry(settings.database_url),
        codec=codec,
    )

    async def hit_store() -> HitStore:
        return await state.store(HitStore)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with (
                sweeping(state.client, hit_store, older_than=settings.tracking_sweep_after),
                state.recorder.running(),
            ):
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
    api = (plans_api, runs_api, bulk_api, suppressions_api)
    routes = (tracking_routes, inbound_routes, twilio_routes, codec_routes, metrics_route)
    for module in (*api, *routes):
        app.include_router(module.router)
    install_error_answers(
        app,
        larger_bodies={
            codec_routes.PREFIX + "/": codec_routes.MAX_BODY_BYTES,
            bulk_api.PATH: bulk_api.MAX_BULK_BODY_BYTES,
        },
    )
    if settings.codec_origins:
        app.add_middleware(codec_routes.CodecCors, origins=settings.codec_origins)
    # Pixels and redirects are answered before the rest of the stack, and logged.
    app.add_middleware(tracking_routes.TrackingHits, state=state)
    # Outermost, so it sees every answer, refusals by the body limit included.
    app.add_middleware(AccessLog)
    quiet_uvicorn_access_log()
    if extra_setup is not None:
        extra_setup(app)
    return app
