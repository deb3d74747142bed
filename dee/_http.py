"""Errors as the server answers them: JSON ``{"code", "message"}`` with a status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ApiError", "ErrorBody"]


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
