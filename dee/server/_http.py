"""HTTP plumbing: errors as the server answers them (JSON ``{"code", "message"}`` with a
status), the handlers that turn exceptions into those answers, and the body-size limit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.service import RPCError

from dee.errors import DeeError
from dee.runs.errors import RunBusyError, RunClosedError, RunNotFoundError
from dee.server.access_log import route_template

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "BodyLimit",
    "ErrorBody",
    "error_response",
    "install_error_answers",
]

logger = logging.getLogger(__name__)

#: Bodies larger than this are refused with 413 before they are read in full.
MAX_BODY_BYTES = 1024 * 1024
#: What a 503 asks the caller to wait before trying again, in seconds.
RETRY_AFTER_SECONDS = 5


class ErrorBody(BaseModel):
    """Every error the server answers: a stable ``code`` and a message for people."""

    code: str
    message: str
    #: Plan problems, for ``422 invalid-plan``.
    problems: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """Raise in a route to answer ``status`` with an :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        problems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = ErrorBody(code=code, message=message, problems=problems)
        self.headers = headers
        super().__init__(message)


def install_error_answers(app: FastAPI, *, larger_bodies: Mapping[str, int] | None = None) -> None:
    """Answer every error in DEE's JSON shape, and refuse bodies over the limit
    (:data:`MAX_BODY_BYTES`, or ``larger_bodies[prefix]`` for paths under a prefix)."""
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, larger=larger_bodies or {})
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RunNotFoundError, _run_not_found)
    app.add_exception_handler(RunClosedError, _run_closed)
    app.add_exception_handler(RunBusyError, _run_busy)
    app.add_exception_handler(DeeError, _dee_error)
    app.add_exception_handler(RPCError, _temporal_error)


def _answer(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = ErrorBody(code=code, message=message, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


def error_response(exc: ApiError) -> JSONResponse:
    """The answer to ``exc``, for handlers outside FastAPI's exception handling."""
    response = JSONResponse(exc.body.model_dump(exclude_none=True), status_code=exc.status)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return _answer(422, "invalid-request", details or "the request is not valid")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        400: "bad-request",
        404: "not-found",
        405: "method-not-allowed",
        413: "body-too-large",
    }.get(exc.status_code, "http-error")
    response = _answer(exc.status_code, code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _run_not_found(request: Request, exc: Exception) -> JSONResponse:
    return _answer(404, "run-not-found", str(exc))


async def _run_closed(request: Request, exc: Exception) -> JSONResponse:
    return _answer(409, "run-closed", str(exc))


async def _run_busy(request: Request, exc: Exception) -> JSONResponse:
    # Providers (SendGrid, Twilio, mail hosts) retry on 5xx; Retry-After paces the others.
    return _unavailable("run-busy", str(exc))


async def _dee_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DeeError) and exc.transient:
        # A database down or locked: providers (mail hosts, SendGrid, Twilio) retry a 5xx
        # and drop a 4xx, so a passing outage must not lose the reply or bounce.
        logger.error("request %s %s failed: %s", request.method, route_template(request.scope), exc)
        return _unavailable("storage-unavailable", str(exc))
    logger.warning("request %s %s failed: %s", request.method, route_template(request.scope), exc)
    return _answer(400, "bad-request", str(exc))


async def _temporal_error(request: Request, exc: Exception) -> JSONResponse:
    # The route as declared, never the path: paths hold tokens and run ids (access_log).
    logger.error(
        "request %s %s: Temporal failed: %s", request.method, route_template(request.scope), exc
    )
    return _unavailable("temporal-unavailable", f"Temporal: {exc}")


def _unavailable(code: str, message: str) -> JSONResponse:
    response = _answer(503, code, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (``larger[prefix]`` for paths under a
    prefix) with 413 in DEE's JSON shape, whether they declare their length or not. The
    body is read here, up to the limit, before the app sees it; the app then gets it as one
    message."""

    def __init__(
        self, app: ASGIApp, *, limit: int, larger: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.larger = dict(larger or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = next(
            (size for prefix, size in self.larger.items() if path.startswith(prefix)), self.limit
        )
        too_large = _answer(413, "body-too-large", f"request bodies are at most {limit:,} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
