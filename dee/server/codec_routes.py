"""The codec endpoint: Temporal's remote codec protocol, so the Temporal Web UI and CLI show
the payloads DEE encrypts (``DEE_PAYLOAD_KEYS``, :mod:`dee.runs.codec`) to whoever may read
them.

::

    POST /codec/encode    {"payloads": [{"metadata": {...}, "data": "..."}]}: encrypted
    POST /codec/decode    the same shape: decrypted (payloads not encrypted pass as they are)
    GET  /codec/login     a sign-in page for the Web UI's browser (an API key in a form)
    POST /codec/login     checks the key and sets a session cookie
    POST /codec/logout    clears it

Payloads are protobuf's JSON form of ``temporal.api.common.v1.Payloads`` (metadata values
and data in base64), as the Web UI and ``temporal --codec-endpoint`` send them; they add
``X-Namespace`` (any namespace is served: a payload decrypts only with DEE's keys) and the
Web UI ``?preserveStorageRefs=true`` (DEE stores no payload elsewhere).

Who may call: a caller with ``Authorization: Bearer <key>``, a key of ``DEE_API_KEYS``
(``temporal workflow show --codec-endpoint .../codec --codec-auth "Bearer <key>"``), or a
browser signed in at ``/codec/login``. The Web UI cannot send a DEE key: with "Include
cross-origin credentials" (``TEMPORAL_CODEC_INCLUDE_CREDENTIALS=true``) it sends the
browser's cookies for this server, which is the way Temporal recommends for a codec server
with its own sign-in. The session cookie is ``HttpOnly``, limited to ``/codec``, lasts
:data:`SESSION_SECONDS`, and is an HMAC (under a key derived from the encrypting payload key)
of its expiry and the API key it was made with: removing that API key, or rotating the
first payload key, signs it out. Over HTTPS it is ``Secure; SameSite=None``, so a Web UI on
another site may send it; over plain HTTP (on one machine) ``SameSite=Strict``, which a Web
UI on another port of the same host still sends.

Browsers call from the Web UI's origin, so ``/codec`` answers CORS (preflight included) for
the origins in ``DEE_CODEC_ORIGINS``, and only for them; no other path of the server does.
Without payload keys, every route here answers ``404 codec-not-configured``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import time
from collections.abc import Sequence
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads

from dee.runs.codec import EncryptionCodec, PayloadDecryptError
from dee.server._api import (
    Responses,
    State,
    api_key_bearer,
    check_api_key,
    error_response,
    key_secrets,
)
from dee.server._http import ApiError
from dee.server.state import ServerState

__all__ = [
    "MAX_BODY_BYTES",
    "PREFIX",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "CodecCors",
    "PayloadBody",
    "PayloadsBody",
    "router",
]

PREFIX: Final = "/codec"
#: Bodies up to this size: Temporal's payloads reach 2 MiB, a third more in base64.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
SESSION_COOKIE: Final = "dee_codec_session"
SESSION_SECONDS: Final = 12 * 3600
_SESSION_PURPOSE: Final = b"dee codec session v1"
#: What the Web UI sends with its calls (``Authorization-Extras`` with an access token).
_HEADERS: Final = ("Content-Type", "X-Namespace", "Authorization", "Authorization-Extras")

router = APIRouter(prefix=PREFIX, tags=["codec"])

_NOT_CONFIGURED: Responses = {
    404: error_response("Payloads are not encrypted here (`codec-not-configured`)")
}
_CODEC_ANSWERS: Responses = {
    401: error_response("No API key or sign-in, or not a known one"),
    422: error_response(
        "Not payloads (`invalid-payloads`), or a payload under a key that is not configured "
        "(`unknown-payload-key`) or that does not decrypt (`undecryptable-payload`)"
    ),
    **_NOT_CONFIGURED,
}


#: Bytes in protobuf JSON: base64, standard or URL-safe (protobuf's parser would skip
#: whatever else it met).
Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/_-]*={0,2}$")]


class PayloadBody(BaseModel):
    """One Temporal payload as protobuf JSON: metadata values and data in base64."""

    model_config = ConfigDict(extra="allow")

    metadata: dict[str, Base64] = Field(default_factory=dict)
    data: Base64 = ""


class PayloadsBody(BaseModel):
    """``temporal.api.common.v1.Payloads`` as protobuf JSON."""

    payloads: list[PayloadBody] = Field(default_factory=list)


# Who may call ---------------------------------------------------------------------------


def _codec_of(state: ServerState) -> EncryptionCodec:
    codec = state.codec
    if codec is None:
        raise ApiError(
            404,
            "codec-not-configured",
            "payloads are not encrypted on this server (DEE_PAYLOAD_KEYS is not set), so "
            "there is nothing to encode or decode",
        )
    return codec


async def _caller_may_decode(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_bearer)],
    state: State,
) -> EncryptionCodec:
    """An API key as a bearer token, or a browser's session cookie; then the codec."""
    keys = state.settings.api_keys
    if credentials is not None or not keys:
        check_api_key(credentials.credentials if credentials else None, keys)
    elif not _session_valid(request.cookies.get(SESSION_COOKIE), state.codec, keys):
        raise ApiError(
            401,
            "unauthorized",
            f"send an API key as `Authorization: Bearer <key>`, or sign in at {PREFIX}/login "
            "(the Temporal Web UI then needs 'Include cross-origin credentials')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _codec_of(state)


Codec = Annotated[EncryptionCodec, Depends(_caller_may_decode)]


def _session_mac(codec: EncryptionCodec, api_key: str, expires: int) -> bytes:
    key = codec.derive_key(_SESSION_PURPOSE)
    return hmac.new(key, f"{expires}:{api_key}".encode(), hashlib.sha256).digest()


def _new_session(codec: EncryptionCodec, api_key: str, *, now: float) -> str:
    expires = int(now) + SESSION_SECONDS
    mac = _session_mac(codec, api_key, expires)
    return f"{expires}.{_mac_text(mac)}"


def _session_valid(
    token: str | None, codec: EncryptionCodec | None, api_keys: Sequence[str]
) -> bool:
    if not token or codec is None:
        return False
    expires_text, _, mac_text = token.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or int(expires_text) < time.time():
        return False
    expires = int(expires_text)
    # The MAC's text is compared, not its decoded bytes: base64's unused trailing bits would
    # otherwise give one sign-in several valid spellings. Every key is compared, in constant
    # time, as for bearer keys.
    given = mac_text.encode("ascii", "replace")
    matches = [
        hmac.compare_digest(given, _mac_text(_session_mac(codec, key, expires)).encode())
        for key in key_secrets(api_keys)
    ]
    return any(matches)


def _mac_text(mac: bytes) -> str:
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


# The codec ------------------------------------------------------------------------------


def _payloads(body: PayloadsBody) -> list[Payload]:
    message = Payloads()
    try:
        json_format.ParseDict(body.model_dump(), message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, binascii.Error) as exc:
        raise ApiError(
            422, "invalid-payloads", f"the payloads are not Temporal payloads in JSON: {exc}"
        ) from None
    return list(message.payloads)


def _answer(payloads: Sequence[Payload]) -> PayloadsBody:
    return PayloadsBody.model_validate(
        {"payloads": [json_format.MessageToDict(payload) for payload in payloads]}
    )


@router.post(
    "/encode",
    response_model=PayloadsBody,
    summary="Encrypt payloads (Temporal's remote codec protocol)",
    responses=_CODEC_ANSWERS,
)
async def encode(body: PayloadsBody, codec: Codec) -> PayloadsBody:
    """Each payload encrypted with the first key of `DEE_PAYLOAD_KEYS`."""
    return _answer([codec.encrypt(payload) for payload in _payloads(body)])


@router.post(
    "/decode",
    response_model=PayloadsBody,
    summary="Decrypt payloads (Temporal's remote codec protocol)",
    responses=_CODEC_ANSWERS,
)
async def decode(body: PayloadsBody, codec: Codec) -> PayloadsBody:
    """Each encrypted payload decrypted; payloads that are not encrypted come back as sent."""
    try:
        return _answer([codec.decrypt(payload) for payload in _payloads(body)])
    except PayloadDecryptError as exc:
        code = "undecryptable-payload" if exc.key_id in codec.key_ids else "unknown-payload-key"
        raise ApiError(422, code, str(exc)) from None


# Signing in a browser -------------------------------------------------------------------


def _page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    document = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='referrer' content='no-referrer'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers={"Cache-Control": "no-store"})


def _form(problem: str = "") -> str:
    said = f"<p role='alert'>{html.escape(problem)}</p>" if problem else ""
    return (
        f"{said}<p>Sign in with a DEE API key so the Temporal Web UI in this browser can "
        "show the payloads DEE encrypts. In the Web UI's codec settings, tick "
        "<em>Include cross-origin credentials</em>.</p>"
        "<form method='post' action='login'><label>API key "
        "<input type='password' name='key' autocomplete='off' required></label> "
        "<button type='submit'>Sign in</button></form>"
    )


@router.get(
    "/login",
    response_class=HTMLResponse,
    summary="The sign-in page for the Temporal Web UI's browser",
    responses=_NOT_CONFIGURED,
)
async def login_page(state: State) -> HTMLResponse:
    _codec_of(state)
    return _page("DEE: decode payloads in the Temporal Web UI", _form())


@router.post(
    "/login",
    response_class=HTMLResponse,
    summary="Sign a browser in with an API key (sets the session cookie)",
    responses={401: {"description": "Not a key of `DEE_API_KEYS`"}, **_NOT_CONFIGURED},
)
async def login(
    request: Request, key: Annotated[str, Form(max_length=1024)], state: State
) -> HTMLResponse:
    codec = _codec_of(state)
    title = "DEE: decode payloads in the Temporal Web UI"
    try:
        check_api_key(key, state.settings.api_keys)
    except ApiError as exc:
        return _page(title, _form(exc.body.message), status=401)
    response = _page(
        "Signed in",
        f"<p>The Temporal Web UI in this browser can decode payloads for the next "
        f"{SESSION_SECONDS // 3600} hours.</p>"
        "<form method='post' action='logout'><button type='submit'>Sign out</button></form>",
    )
    secure = request.url.scheme == "https" or state.settings.public_url.startswith("https:")
    response.set_cookie(
        SESSION_COOKIE,
        _new_session(codec, key, now=time.time()),
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        secure=secure,
        samesite="none" if secure else "strict",
    )
    return response


@router.post("/logout", response_class=HTMLResponse, summary="Sign a browser out")
async def logout() -> HTMLResponse:
    response = _page("Signed out", "<p>This browser no longer decodes payloads.</p>")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True)
    return response


# CORS -----------------------------------------------------------------------------------


class CodecCors:
    """CORS for ``/codec/...`` only, for the Web UI's ``origins``: it calls from its own
    origin with JSON, ``X-Namespace`` and perhaps cookies, so it needs a preflight; the
    rest of the server answers no browser script of another origin."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["POST"],
            allow_headers=list(_HEADERS),
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
