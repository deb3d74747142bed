"""``GET /metrics``: DEE's metrics from ``dee serve`` (tracking hits, signals, suppressions,
the process), for Prometheus, behind keys of their own.

Off unless ``DEE_METRICS_KEYS`` is set (the route answers 404 ``not-found`` as if it did not
exist), and then only with ``Authorization: Bearer <key>`` for one of those keys: the server
usually faces the internet (tracking links and webhooks reach it), and the metrics say how
much mail goes out and how it is read. Prometheus sends the key with ``authorization:
{credentials: ...}`` in its scrape config. The keys are not ``DEE_API_KEYS``, so a scraper
cannot start runs. The metrics are listed in :mod:`dee.metrics`.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials

from dee import metrics
from dee.server._api import api_key_bearer
from dee.server._http import ApiError
from dee.server.state import ServerState, server_state

__all__ = ["PATH", "router"]

PATH = "/metrics"

router = APIRouter()


@router.get(PATH, include_in_schema=False)
async def metrics_endpoint(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_bearer)],
    state: Annotated[ServerState, Depends(server_state)],
) -> Response:
    keys = state.settings.metrics_keys
    if not keys:
        raise ApiError(
            404,
            "not-found",
            "metrics are off: set DEE_METRICS_KEYS on the server to serve them here",
        )
    given = credentials.credentials.encode() if credentials else b""
    # Every key is compared, in constant time, as for the API's keys.
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise ApiError(
            401,
            "unauthorized",
            "send one of DEE_METRICS_KEYS as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
