"""What the REST API's route modules share: API keys, base models and error answers.

Every request to the API (:mod:`dee.server.plans_api`, :mod:`dee.server.runs_api`) needs
``Authorization: Bearer <key>`` with a key from ``DEE_API_KEYS``; without keys configured
the API refuses everything (:func:`require_api_key`, on every router :func:`v1_router`
makes). Bodies and answers use the camelCase names of plan documents (:class:`ApiRequest`,
:class:`ApiAnswer`); errors are :class:`~dee.server._http.ErrorBody` JSON with a stable code.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from dee.errors import PlanInvalidError, PlanNotFoundError, RegistryError
from dee.server._http import ApiError, ErrorBody
from dee.server.state import ServerState, server_state

__all__ = [
    "AUTH_ERRORS",
    "Caller",
    "MAX_VERSION",
    "NOT_JSON",
    "PLAN_NOT_FOUND",
    "ApiAnswer",
    "ApiRequest",
    "ProblemBody",
    "Responses",
    "State",
    "api_key_bearer",
    "check_api_key",
    "error_response",
    "invalid_plan",
    "key_secrets",
    "registry_errors",
    "require_api_key",
    "v1_router",
]

#: Version numbers are stored as 32-bit integers (PostgreSQL ``integer``).
MAX_VERSION: Final = 2**31 - 1

#: ``Authorization: Bearer <key>``, read without refusing (routes decide what they need).
api_key_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `DEE_API_KEYS`, as `Authorization: Bearer <key>`.",
)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_bearer)],
    state: Annotated[ServerState, Depends(server_state)],
) -> str:
    """Let the request through only with one of ``settings.api_keys`` as its bearer token;
    the key's name (see :func:`check_api_key`)."""
    return check_api_key(credentials.credentials if credentials else None, state.settings.api_keys)


#: ``name:secret`` in ``DEE_API_KEYS``: a name of this shape, a colon, the key itself.
_NAMED_KEY: Final = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):(.+)$", re.DOTALL)


def _name_and_secret(entry: str) -> tuple[str, str]:
    """An entry of ``DEE_API_KEYS`` as its name and the secret a client sends. A key given
    without a name is named ``key-`` and 8 hex digits of its SHA-256 (never the key)."""
    named = _NAMED_KEY.match(entry)
    if named:
        return named.group(1), named.group(2)
    return f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry


def key_secrets(keys: Sequence[str]) -> list[str]:
    """What clients send for each entry of ``DEE_API_KEYS`` (the entries without names)."""
    return [_name_and_secret(key)[1] for key in keys]


def check_api_key(given: str | None, keys: Sequence[str]) -> str:
    """Refuse (401) unless ``given`` is the secret of one of ``keys``; that key's name.

    An entry is ``name:secret`` or the secret alone. The name is who a request acts as
    (a plan version's ``createdBy`` when its document names nobody).
    """
    if not keys:
        raise _unauthorized(
            "the API has no keys configured: set DEE_API_KEYS (comma-separated) on the server"
        )
    if given is None:
        raise _unauthorized("send an API key as `Authorization: Bearer <key>`")
    # Every key is compared, in constant time, so timing tells nothing about which is near.
    names = [_name_and_secret(key) for key in keys]
    matches = [hmac.compare_digest(given.encode(), secret.encode()) for _, secret in names]
    if not any(matches):
        raise _unauthorized("the API key is not one of DEE_API_KEYS")
    return names[matches.index(True)][0]


#: The name of the API key a request came with (:func:`require_api_key`; FastAPI runs it
#: once a request however many times it is asked for).
Caller = Annotated[str, Depends(require_api_key)]


Responses = dict[int | str, dict[str, Any]]

AUTH_ERRORS: Responses = {
    401: {"model": ErrorBody, "description": "No API key, or not a known one"},
    422: {"model": ErrorBody, "description": "The request does not have the expected shape"},
}


def v1_router() -> APIRouter:
    """A router under ``/v1`` whose every route needs an API key."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS)


State = Annotated[ServerState, Depends(server_state)]


# Models ---------------------------------------------------------------------------------


class ApiRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True)


class ApiAnswer(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, frozen=True
    )


class ProblemBody(ApiAnswer):
    """One thing wrong with a plan; ``stepId`` is null for plan-wide problems."""

    step_id: str | None
    code: str
    message: str
    location: str | None


def error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


PLAN_NOT_FOUND: Responses = {404: error_response("No such plan or version (`plan-not-found`)")}
NOT_JSON: Responses = {400: error_response("The body is not JSON text (UTF-8)")}


# Errors ---------------------------------------------------------------------------------


def invalid_plan(error: PlanInvalidError) -> ApiError:
    problems = [
        ProblemBody(
            step_id=problem.step_id,
            code=problem.code,
            message=problem.message,
            location=problem.location,
        ).model_dump()
        for problem in error.problems
    ]
    count = len(problems)
    return ApiError(
        422,
        "invalid-plan",
        f"the plan has {count} problem{'s' if count != 1 else ''}",
        problems=problems,
    )


@contextlib.contextmanager
def registry_errors() -> Iterator[None]:
    try:
        yield
    except PlanNotFoundError as exc:
        raise ApiError(404, "plan-not-found", str(exc)) from exc
    except PlanInvalidError as exc:
        raise invalid_plan(exc) from exc
    except RegistryError as exc:
        raise ApiError(500, "registry-error", str(exc)) from exc
