"""Puts the server together: routers, error answers, and the request-size limit."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dee import _api_routes, _inbound_routes, _tracking_routes, _twilio_routes
from dee._http import ApiError, ErrorBody
from dee.client import RunClosedError, RunNotFoundError
from dee.errors import DeeError

__all__ = ["install"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def install(app: FastAPI, state: Any) -> None:
    app.include_router(_api_routes.router)
    app.include_router(_tracking_routes.router)
    app.include_router(_inbound_routes.router)
    app.include_router(_twilio_routes.router)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RunNotFoundError, _run_not_found)
    app.add_exception_handler(RunClosedError, _run_closed)
    app.add_exception_handler(DeeError, _dee_error)


def _answer(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = ErrorBody(code=code, message=message, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = JSONResponse(exc.body.model_dump(exclude_none=True), status_code=exc.status)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return _answer(422, "invalid-request", details or "the request is not valid")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return _answer(exc.status_code, code, str(exc.detail))


async def _run_not_found(request: Request, exc: Exception) -> JSONResponse:
    return _answer(404, "run-not-found", str(exc))


async def _run_closed(request: Request, exc: Exception) -> JSONResponse:
    return _answer(409, "run-closed", str(exc))


async def _dee_error(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("request %s %s failed: %s", request.method, request.url.path, exc)
    return _answer(400, "bad-request", str(exc))


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not they say their
    length up front, before a route reads them."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(
                        413, "body-too-large", f"request bodies are at most {self.limit:,} bytes"
                    )
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> JSONResponse:
    return _answer(413, "body-too-large", f"request bodies are at most {limit:,} bytes")
