"""An access log that carries no secrets or addresses.

uvicorn's own access log writes each request's path and query string: the inbound webhook's
``?key=`` secret, every tracking and unsubscribe token, Twilio's callback tokens, and run
ids and suppression values that hold contacts' email addresses and phone numbers. DEE drops
those records and logs its own instead (logger ``dee.server.access``, INFO): the method, the
route as declared (``/t/o/{token}``, ``/v1/runs/{run_id}``), never the path or the query,
the status and the time taken.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "quiet_uvicorn_access_log", "route_template"]

logger = logging.getLogger("dee.server.access")

#: What a request matching no route is logged as.
UNMATCHED: Final = "(no route)"


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP_ALL: Final = _DropAll()


def quiet_uvicorn_access_log() -> None:
    """Drop uvicorn's access records, whoever runs the app (``dee serve``, ``dee dev`` or a
    uvicorn of the operator's own); idempotent."""
    access = logging.getLogger("uvicorn.access")
    if _DROP_ALL not in access.filters:
        access.addFilter(_DROP_ALL)


class AccessLog:
    """ASGI middleware logging each HTTP request by its route template (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            logger.info(
                "%s %s %d %.1f ms",
                scope["method"],
                route_template(scope),
                status,
                (time.perf_counter() - started) * 1000,
            )


def route_template(scope: Scope) -> str:
    """The template of the route ``scope`` matched (Starlette's router records it in the
    scope), never its path."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED
