"""Signed tokens: tracking pixels, tracked links, unsubscribe links, reply addresses and call
callbacks. Every kind of token DEE signs is defined here, once.

A token is ``<payload>.<signature>``: the payload is compact JSON in base64url without
padding, and the signature an HMAC-SHA256 of the encoded payload keyed by
``DEE_SECRET_KEY``, also base64url. Payloads are small and say what the token is for in
``"k"``:

=======  ==============================================  ===============================
kind     payload                                          URL
=======  ==============================================  ===============================
open     ``{"k":"o","r":run,"s":step,"v":visit}``         ``{public_url}/t/o/{token}``
click    the same plus ``"u"``, the original URL          ``{public_url}/t/c/{token}``
unsub.   ``{"k":"u","r":run,"a":sealed address}``         ``{public_url}/u/{token}``, and the
                                                          subject of the ``mailto:``
reply    ``{"k":"r","r":run,"s":step,"v":visit}``         ``{local}+{token}@{domain}``
call     ``{"k":"call","r":run,"s":step,"v":visit}``      ``.../webhooks/twilio/status?token=``
amd      the same with ``"k":"amd"``, plus ``"m"`` TwiML   ``.../webhooks/twilio/amd?token=``
=======  ==============================================  ===============================

Every kind but unsubscribe may also carry ``"x"``, the run execution that sent it
(:attr:`dee.runs.model.RunEvent.execution`), so that an open, click, reply or call callback
of a previous run that had the same run id is recorded as that run's, never counted in the
new one. Tokens made before executions were tracked lack it; they verify as before.

Every token made now also carries ``"i"``, the id of the key that signed it (8 characters of
a hash of the key, never the key): verifying takes that key alone, and a token whose key has
been dropped from ``DEE_SECRET_KEY`` says so. Tokens made before key ids verify against
every configured key.

Tokens are signed, not encrypted: anyone holding one can read its payload (the run id, whose
contact id is a keyed hash by default), but nobody without the key can make or change one.
The address an unsubscribe link unsubscribes is sealed in it (``"a"``: AES-GCM under a key
derived from the signing key, bound to the run id), so a forwarded or logged link shows no
address; links from before carry it readable as ``"e"`` and still work.

:func:`verify_token` refuses anything forged, altered, of another kind, malformed or longer
than :data:`MAX_TOKEN_LENGTH` with a :class:`TokenError`.

:func:`rewrite_links` and :func:`add_open_pixel` put the URLs into an email's HTML.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dee.errors import DeeError
from dee.settings import split_keys

__all__ = [
    "CALL_AMD",
    "CALL_STATUS",
    "CLICK",
    "EXECUTION",
    "MAX_TOKEN_LENGTH",
    "OPEN",
    "REPLY",
    "UNSUBSCRIBE",
    "TokenError",
    "add_open_pixel",
    "click_url",
    "execution_of",
    "key_id",
    "open_pixel_url",
    "reply_address",
    "reply_token",
    "rewrite_links",
    "sign_token",
    "signing_keys",
    "unsubscribe_address",
    "unsubscribe_mailto",
    "unsubscribe_token",
    "unsubscribe_url",
    "verify_token",
]

OPEN: Final = "o"
CLICK: Final = "c"
UNSUBSCRIBE: Final = "u"
#: The plus-address of a reply (see :mod:`dee.server.inbound_match`).
REPLY: Final = "r"
#: Twilio's status and answering machine callbacks (see :mod:`activities.voice`).
CALL_STATUS: Final = "call"
CALL_AMD: Final = "amd"

#: Longest token made or accepted. Tokens travel in URLs, and URLs much past 2,000
#: characters are cut short by some mail clients and proxies.
MAX_TOKEN_LENGTH: Final = 2048

#: Signatures cover this prefix too, so a DEE token can never be replayed as the HMAC of
#: some other scheme that shares the key, and a later token format can use ``v2``.
_DOMAIN: Final = b"dee-token-v1."
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")
#: The optional payload field naming the run execution a token belongs to.
EXECUTION: Final = "x"
#: The payload field naming the key that signed the token.
KEY_ID: Final = "i"
_KEY_ID_DOMAIN: Final = b"dee-key-id."
_SEAL_DOMAIN: Final = b"dee-token-address."
_NONCE_BYTES: Final = 12
#: Temporal run ids are UUIDs; anything of this shape is accepted, nothing longer.
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Fields each known kind must carry, with their types.
_FIELDS: Final[dict[str, dict[str, type]]] = {
    OPEN: {"r": str, "s": str, "v": int},
    CLICK: {"r": str, "s": str, "v": int, "u": str},
    UNSUBSCRIBE: {"r": str},
    REPLY: {"r": str, "s": str, "v": int},
    CALL_STATUS: {"r": str, "s": str, "v": int},
    CALL_AMD: {"r": str, "s": str, "v": int},
}


class TokenError(DeeError):
    """A token is forged, altered, of the wrong kind, malformed or too long; or a token
    cannot be made (no secret key, payload too large)."""


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_keys(secret: str) -> tuple[str, ...]:
    """The keys in ``secret`` (``DEE_SECRET_KEY``): one, or several separated by commas
    while a key is rotated. The first signs; every one verifies, so links signed with the
    previous key (unsubscribe links in inboxes) keep working until it is dropped."""
    keys = split_keys(secret)
    if not keys:
        raise TokenError("no secret key: set DEE_SECRET_KEY to sign and verify tokens")
    return keys


def key_id(key: str) -> str:
    """The id tokens signed with ``key`` carry: 8 characters of a hash of it."""
    return _encode(hashlib.sha256(_KEY_ID_DOMAIN + key.encode()).digest()[:6])


def _signature(encoded_payload: str, key: str) -> str:
    digest = hmac.new(key.encode(), _DOMAIN + encoded_payload.encode("ascii"), hashlib.sha256)
    return _encode(digest.digest())


def sign_token(payload: dict[str, Any], *, secret: str) -> str:
    """A URL-safe token carrying ``payload`` (JSON-ready, with its kind in ``"k"``)."""
    if not isinstance(payload.get("k"), str):
        raise TokenError('a token payload needs its kind as a string in "k"')
    key = signing_keys(secret)[0]
    signed = {**payload, KEY_ID: key_id(key)}
    data = json.dumps(signed, separators=(",", ":"), ensure_ascii=False).encode()
    encoded = _encode(data)
    token = f"{encoded}.{_signature(encoded, key)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(
            f"the token would have {len(token):,} characters; the most is {MAX_TOKEN_LENGTH:,}"
        )
    return token


def verify_token(token: str, *, secret: str, kind: str) -> dict[str, Any]:
    """The payload of ``token`` if DEE signed it with ``secret`` and it is of ``kind``."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("the token is too long or not text")
    encoded, dot, signature = token.partition(".")
    if not dot or not _BASE64URL.match(encoded) or not _BASE64URL.match(signature):
        raise TokenError("the token is malformed")
    keys = signing_keys(secret)
    try:
        payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        payload = None  # refused below, after the signature: a forgery learns nothing more
    named = payload.get(KEY_ID) if isinstance(payload, dict) else None
    if named is not None:
        keys = tuple(key for key in keys if key_id(key) == named)
        if not keys:
            raise TokenError(
                f"the token was signed with key {str(named)[:16]!r}, which DEE_SECRET_KEY no "
                "longer holds: it was rotated out, or the token is forged"
            )
    # Comparing the text, not decoded bytes, also refuses other spellings of the same
    # signature (base64's unused trailing bits), so each token has exactly one valid form.
    # Without a key id (older tokens) every key is tried, whichever matches.
    matches = [
        hmac.compare_digest(_signature(encoded, key).encode("ascii"), signature.encode("ascii"))
        for key in keys
    ]
    if not any(matches):
        raise TokenError("the token's signature does not match: it was altered or forged")
    if payload is None:
        # Signed by DEE yet unreadable: only a key shared with something else could do it.
        raise TokenError("the token's payload is not JSON")
    if not isinstance(payload, dict):
        raise TokenError("the token's payload is not an object")
    if payload.get("k") != kind:
        raise TokenError(f"the token is of kind {payload.get('k')!r}, expected {kind!r}")
    for name, expected_type in _FIELDS.get(kind, {}).items():
        value = payload.get(name)
        # bool is an int to isinstance, and never a visit number.
        if not isinstance(value, expected_type) or isinstance(value, bool):
            raise TokenError(f"the token lacks {name!r} ({expected_type.__name__})")
    if kind == UNSUBSCRIBE and not (
        isinstance(payload.get("a"), str) or isinstance(payload.get("e"), str)
    ):
        raise TokenError("the token lacks the address it unsubscribes")
    execution = payload.get(EXECUTION)
    if execution is not None and not (
        isinstance(execution, str) and _EXECUTION_ID.match(execution)
    ):
        raise TokenError(f"the token's {EXECUTION!r} is not an execution id")
    return payload


def _sealing_key(key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(_SEAL_DOMAIN + key.encode()).digest())


def _seal(address: str, *, key: str, run_id: str) -> str:
    # The nonce is a MAC of what is sealed: one run and address always seal alike (a retried
    # send renders the same links, the https and mailto forms carry one token), and a nonce
    # repeats only with the very same plaintext, which is all GCM needs.
    material = _SEAL_DOMAIN + run_id.encode() + b"\x00" + address.encode()
    nonce = hmac.new(key.encode(), material, hashlib.sha256).digest()[:_NONCE_BYTES]
    sealed = _sealing_key(key).encrypt(nonce, address.encode(), run_id.encode())
    return _encode(nonce + sealed)


def unsubscribe_address(payload: dict[str, Any], *, secret: str) -> str:
    """The address a verified unsubscribe token's payload unsubscribes: unsealed with the
    key that signed it, or as an older link carries it."""
    sealed = payload.get("a")
    if not isinstance(sealed, str):
        readable = payload.get("e")
        if not isinstance(readable, str):
            raise TokenError("the token lacks the address it unsubscribes")
        return readable
    keys = [key for key in signing_keys(secret) if key_id(key) == payload.get(KEY_ID)]
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        nonce, body = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        opened = _sealing_key(keys[0]).decrypt(nonce, body, str(payload["r"]).encode())
        return opened.decode()
    except (IndexError, binascii.Error, ValueError, InvalidTag) as exc:
        raise TokenError("the token's address cannot be unsealed") from exc


def execution_of(payload: dict[str, Any]) -> str | None:
    """The run execution a verified token's payload names, or ``None`` (an older token)."""
    execution = payload.get(EXECUTION)
    return execution if isinstance(execution, str) else None


def _with_execution(payload: dict[str, Any], execution: str | None) -> dict[str, Any]:
    return payload if execution is None else {**payload, EXECUTION: execution}


def open_pixel_url(
    public_url: str,
    *,
    secret: str,
    run_id: str,
    step_id: str,
    visit: int,
    execution: str | None = None,
) -> str:
    """``{public_url}/t/o/{token}``: a 1x1 image that records an open."""
    payload = _with_execution({"k": OPEN, "r": run_id, "s": step_id, "v": visit}, execution)
    return f"{public_url.rstrip('/')}/t/o/{sign_token(payload, secret=secret)}"


def click_url(
    public_url: str,
    *,
    secret: str,
    run_id: str,
    step_id: str,
    visit: int,
    url: str,
    execution: str | None = None,
) -> str:
    """``{public_url}/t/c/{token}``: records a click, then redirects to ``url``.

    :class:`TokenError` when ``url`` is too long to fit in a token.
    """
    payload = _with_execution(
        {"k": CLICK, "r": run_id, "s": step_id, "v": visit, "u": url}, execution
    )
    return f"{public_url.rstrip('/')}/t/c/{sign_token(payload, secret=secret)}"


def unsubscribe_token(*, secret: str, run_id: str, email: str) -> str:
    """The signed token that unsubscribes ``email`` (kind :data:`UNSUBSCRIBE`), the address
    sealed (:func:`unsubscribe_address` reads it)."""
    sealed = _seal(email, key=signing_keys(secret)[0], run_id=run_id)
    return sign_token({"k": UNSUBSCRIBE, "r": run_id, "a": sealed}, secret=secret)


def unsubscribe_url(public_url: str, *, secret: str, run_id: str, email: str) -> str:
    """``{public_url}/u/{token}``: unsubscribes ``email`` (GET shows a page, POST is the
    RFC 8058 one-click unsubscribe)."""
    token = unsubscribe_token(secret=secret, run_id=run_id, email=email)
    return f"{public_url.rstrip('/')}/u/{token}"


def unsubscribe_mailto(mailbox: str, *, secret: str, run_id: str, email: str) -> str:
    """``mailto:{mailbox}?subject=unsubscribe%20{token}``: the RFC 2369 mail form of the
    unsubscribe. Mail clients send it with that subject; the inbound webhook finds the
    token there (:func:`dee.server.inbound_match.unsubscribe_request`), so a mail without
    a valid one unsubscribes nobody."""
    token = unsubscribe_token(secret=secret, run_id=run_id, email=email)
    return f"mailto:{quote(mailbox, safe='@')}?subject=unsubscribe%20{token}"


def reply_token(
    *, secret: str, run_id: str, step_id: str, visit: int, execution: str | None = None
) -> str:
    """The signed token of a reply address for one send (kind :data:`REPLY`)."""
    payload = _with_execution({"k": REPLY, "r": run_id, "s": step_id, "v": visit}, execution)
    return sign_token(payload, secret=secret)


def reply_address(
    base: str,
    *,
    secret: str,
    run_id: str,
    step_id: str,
    visit: int,
    execution: str | None = None,
) -> str:
    """``base`` (``replies@reply.example.com``) plus-addressed with a :func:`reply_token`:
    what an email's ``Reply-To`` would be when a reply domain is configured."""
    local, _, domain = base.rpartition("@")
    token = reply_token(
        secret=secret, run_id=run_id, step_id=step_id, visit=visit, execution=execution
    )
    return f"{local}+{token}@{domain}"


# -- HTML -----------------------------------------------------------------------------------

#: One attribute inside a start tag, as html.parser's own ``attrfind_tolerant`` reads it.
_ATTRIBUTE = re.compile(
    r"""((?<=[\s'"/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?""",
)


class _LinkFinder(HTMLParser):
    """Finds where each ``<a>`` start tag sits in the source, with its parsed ``href``."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        # Offsets of line starts, to turn getpos()'s (line, column) into an index; the
        # parser counts lines by "\n" alone.
        self._line_starts = [0] + [match.end() for match in re.finditer("\n", source)]
        self.links: list[tuple[int, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        href = next((value for name, value in attrs if name == "href"), None)
        raw = self.get_starttag_text()
        if href is None or raw is None:
            return
        line, column = self.getpos()
        self.links.append((self._line_starts[line - 1] + column, raw, href))

    handle_startendtag = handle_starttag


def _replace_href(raw_tag: str, new_url: str) -> str:
    for match in _ATTRIBUTE.finditer(raw_tag):
        if match.group(1).lower() == "href" and match.group(2):
            # Always double-quoted and escaped: the new URL may hold & or quotes.
            value = f'"{html.escape(new_url, quote=True)}"'
            return raw_tag[: match.start(3)] + value + raw_tag[match.end(3) :]
    return raw_tag


def rewrite_links(
    html_source: str,
    make_url: Callable[[str], str],
    *,
    keep: Callable[[str], bool] | None = None,
) -> str:
    """``html_source`` with the ``href`` of every ``<a>`` that points at an http(s) URL
    replaced by ``make_url(url)``.

    ``mailto:``, ``tel:``, ``#anchors``, relative and other links are left as they are, and
    so is any link for which ``keep(url)`` is true (the unsubscribe link, links that are
    already tracked). Everything else in the document is kept byte for byte.
    """
    finder = _LinkFinder(html_source)
    finder.feed(html_source)
    finder.close()
    pieces: list[str] = []
    done = 0
    for offset, raw_tag, href in finder.links:
        url = href.strip()
        if not url.lower().startswith(("http://", "https://")):
            continue
        if keep is not None and keep(url):
            continue
        new_url = make_url(url)
        if new_url == url or html_source[offset : offset + len(raw_tag)] != raw_tag:
            continue
        pieces.append(html_source[done:offset])
        pieces.append(_replace_href(raw_tag, new_url))
        done = offset + len(raw_tag)
    pieces.append(html_source[done:])
    return "".join(pieces)


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def add_open_pixel(html_source: str, pixel_url: str) -> str:
    """``html_source`` with a 1x1 image loading ``pixel_url`` before ``</body>``, or at the
    end when there is no ``</body>``."""
    pixel = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0">'
    )
    ends = list(_BODY_END.finditer(html_source))
    if not ends:
        return html_source + pixel
    at = ends[-1].start()
    return html_source[:at] + pixel + html_source[at:]
