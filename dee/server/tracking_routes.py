"""Tracking pixels, click redirects and unsubscribes: the signed links in every email.

::

    GET  /t/o/{token}   a 1x1 GIF (no-store); signals ``open``
    GET  /t/c/{token}   302 to the link that was signed; signals ``click``
    GET  /u/{token}     a small page asking to confirm, with an "Unsubscribe" button
    POST /u/{token}     unsubscribes: ``List-Unsubscribe=One-Click`` (RFC 8058) answers an
                        empty 200, the page's form a short confirmation page

Tokens are those :mod:`dee.runs.tracking` signs. A forged, altered or malformed token, or one of
another kind, answers ``404 invalid-token`` and keeps and signals nothing; the redirect
target is the URL inside the signed token and nothing else, so there is no open redirect.
``HEAD`` (what link checkers send) answers like ``GET`` but counts as no hit.

Every valid hit is kept with its user agent and time (:class:`dee.server.hits.HitStore`, in
``DEE_DATABASE_URL``), and opens and clicks are collapsed: only the first hit of a run,
step, visit and kind signals the run (see :mod:`dee.server.hits`). The answer waits for the
commit that keeps the hit, one commit shared by every hit arriving meanwhile, and never for
Temporal: the signal goes out afterwards, from a stage that signals in batches
(:mod:`dee.server.recorder`). If the run has ended the hit is only kept; if Temporal cannot
be reached, or the server dies before the signal, the key stays pending and the sweeper
(:mod:`dee.server.sweeper`) signals it later. If the database fails, the contact still gets
the GIF or the redirect and the hit is logged as lost.

An unsubscribe puts the address on the suppression list (source ``one-click``), then sends
``unsubscribe`` to the token's run and to every other running run of the same contact
(:func:`dee.runs.unsubscribe.unsubscribe`), which end with outcome ``unsubscribed``. Doing
it again changes nothing. These routes are links in emails, not API, and stay out of the OpenAPI
schema.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.service import RPCError

from dee.runs.contacts import ContactIds
from dee.runs.suppressions import InvalidContactValueError, normalize_address
from dee.runs.tracking import (
    CLICK,
    OPEN,
    UNSUBSCRIBE,
    TokenError,
    execution_of,
    unsubscribe_address,
    verify_token,
)
from dee.runs.unsubscribe import unsubscribe as unsubscribe_contact
from dee.server._http import ApiError, error_response
from dee.server.hits import HitKind, HitStore, HitStoreError, NewHit
from dee.server.state import ServerState, server_state

__all__ = ["TrackingHits", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


State = Annotated[ServerState, Depends(server_state)]

#: A transparent 1x1 GIF, the smallest image every mail client shows.
PIXEL: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
#: Every fetch should reach the server (and be counted); nothing here is for search engines.
_NO_STORE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "X-Robots-Tag": "noindex, nofollow",
}
#: The token holds the run id: never pass it on as a Referer.
_NO_REFERRER: Final = {**_NO_STORE, "Referrer-Policy": "no-referrer"}


def _verify(state: ServerState, token: str, kind: str) -> dict[str, Any]:
    secret = state.settings.secret_key
    if not secret:
        logger.error("DEE_SECRET_KEY is not set: tracking and unsubscribe links cannot be checked")
        raise ApiError(
            503, "not-configured", "the server cannot check links: DEE_SECRET_KEY is not set"
        )
    try:
        return verify_token(token, secret=secret, kind=kind)
    except TokenError as exc:
        logger.debug("refused a %s token: %s", kind, exc)
        raise ApiError(
            404, "invalid-token", "this link is not valid: it was altered or not made here"
        ) from None


def _address(state: ServerState, payload: dict[str, Any]) -> str:
    """The address a verified unsubscribe token unsubscribes (see :func:`_verify`)."""
    try:
        return unsubscribe_address(payload, secret=state.settings.secret_key or "")
    except TokenError as exc:
        logger.debug("refused an unsubscribe token: %s", exc)
        raise ApiError(404, "invalid-token", "this link names no address") from None


# -- opens and clicks -------------------------------------------------------------------------


class TrackingHits:
    """ASGI middleware answering ``GET`` and ``HEAD`` of ``/t/o/{token}`` and ``/t/c/{token}``
    in front of the app's own stack, and passing every other request on to ``app``.

    Pixels and redirects are most of what the server answers, at the pace of a send's opens
    and clicks, and need none of FastAPI's routing through every route, dependency
    injection or exception middleware, which cost more CPU than the rest of a hit. The
    access log, outside, still logs them by route (``scope["route"]``).
    """

    def __init__(self, app: ASGIApp, *, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            found = _HIT_PATH.fullmatch(path[len(root) :] if path.startswith(root) else path)
            if found is not None:
                kind, token = found.groups()
                scope["route"] = _ROUTES[kind]
                try:
                    response = await self._answer(scope, kind, token)
                except ApiError as exc:
                    response = error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, kind: str, token: str) -> Response:
        method = scope["method"]
        if method not in {"GET", "HEAD"}:
            raise ApiError(
                405, "method-not-allowed", "Method Not Allowed", headers={"Allow": "GET, HEAD"}
            )
        hit = method == "GET"
        user_agent = Headers(scope=scope).get("user-agent") if hit else None
        if kind == "o":
            payload = _verify(self.state, token, OPEN)
            if hit:
                await _hit(self.state, payload, kind="open", user_agent=user_agent)
            return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)
        payload = _verify(self.state, token, CLICK)
        url: str = payload["u"]
        parts = urlsplit(url)
        if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
            # DEE only signs http(s) links; anything else is no place to send a contact.
            raise ApiError(404, "invalid-token", "this link is not valid: it leads nowhere")
        if hit:
            await _hit(self.state, payload, kind="click", url=url, user_agent=user_agent)
        return RedirectResponse(url, status_code=302, headers=_NO_REFERRER)


@dataclass(frozen=True, slots=True)
class _Route:
    """What the access log reads from ``scope["route"]``: the route as declared."""

    path: str


_HIT_PATH: Final = re.compile(r"/t/([oc])/([^/]+)")
_ROUTES: Final = {"o": _Route("/t/o/{token}"), "c": _Route("/t/c/{token}")}


async def _hit(
    state: ServerState,
    payload: dict[str, Any],
    *,
    kind: HitKind,
    url: str | None = None,
    user_agent: str | None,
) -> None:
    """Keep the hit before answering, in a commit shared with the hits arriving with it;
    if it takes its key, the run is signalled afterwards (:mod:`dee.server.recorder`)."""
    hit = NewHit(
        payload["r"],
        kind,
        step_id=payload["s"],
        visit=payload["v"],
        url=url,
        user_agent=user_agent,
        execution=execution_of(payload),
    )
    try:
        await state.recorder.record(hit)
    except HitStoreError as exc:
        # The contact still gets the image or the link; without the key nothing signals,
        # which beats signalling every hit.
        logger.error("a %s hit was not kept: %s", kind, exc)


# -- unsubscribes -----------------------------------------------------------------------------


@router.get("/u/{token}")
async def unsubscribe_page(token: str, state: State) -> HTMLResponse:
    payload = _verify(state, token, UNSUBSCRIBE)
    address = html.escape(_address(state, payload))
    # No action: the form posts back to this very URL, token and all.
    body = (
        f"<p>Stop all emails to <strong>{address}</strong>?</p>"
        '<form method="post">'
        '<input type="hidden" name="confirm" value="yes">'
        '<button type="submit">Unsubscribe</button>'
        "</form>"
    )
    return HTMLResponse(_page("Unsubscribe", body), headers=_NO_REFERRER)


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request, state: State) -> Response:
    payload = _verify(state, token, UNSUBSCRIBE)
    form = await request.form()
    one_click = form.get("List-Unsubscribe") == "One-Click"
    if not one_click and form.get("confirm") != "yes":
        raise ApiError(
            400,
            "bad-request",
            "expected the form field List-Unsubscribe=One-Click (RFC 8058) or confirm=yes",
        )
    run_id: str = payload["r"]
    try:
        address = normalize_address(_address(state, payload))
    except InvalidContactValueError:
        raise ApiError(404, "invalid-token", "this link names no address") from None
    try:
        store = await state.store(HitStore)
        await asyncio.to_thread(
            store.record_hit,
            run_id,
            kind="unsubscribe",
            user_agent=request.headers.get("user-agent"),
        )
        done = await unsubscribe_contact(
            state.client,
            store,
            [address],
            reason="unsubscribe",
            source="one-click",
            run_id=run_id,
            contacts=await state.store(ContactIds),
        )
    except HitStoreError as exc:
        logger.error("an unsubscribe was not recorded: %s", exc)
        raise ApiError(
            503, "unavailable", "the unsubscribe could not be recorded: try again shortly"
        ) from None
    except RPCError as exc:
        logger.error("an unsubscribe could not reach the contact's runs: %s", exc)
        raise ApiError(
            503,
            "unavailable",
            "the address will get no more email, but its runs could not be stopped yet: "
            "try again shortly",
        ) from None
    logger.info("unsubscribe recorded; %d run(s) told", len(done.runs_ended))
    if one_click:
        return Response(status_code=200, headers=_NO_STORE)
    body = (
        f"<p><strong>{html.escape(address)}</strong> is unsubscribed "
        "and will get no more emails from us.</p>"
    )
    return HTMLResponse(_page("Unsubscribed", body), headers=_NO_REFERRER)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1.25rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
