"""Signed tracking tokens, tracking URLs, link rewriting and the open pixel."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from dee.errors import DeeError
from dee.runs.tracking import (
    CLICK,
    MAX_TOKEN_LENGTH,
    OPEN,
    UNSUBSCRIBE,
    TokenError,
    add_open_pixel,
    click_url,
    key_id,
    open_pixel_url,
    rewrite_links,
    sign_token,
    unsubscribe_address,
    unsubscribe_url,
    verify_token,
)

SECRET = "test-secret-key"
OPEN_PAYLOAD: dict[str, Any] = {"k": "o", "r": "welcome:ana", "s": "intro-email", "v": 1}


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- tokens ---------------------------------------------------------------------------------


def signed(payload: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """``payload`` as it reads back: with the id of the key that signed it."""
    return {**payload, "i": key_id(secret)}


def test_round_trip() -> None:
    token = sign_token(OPEN_PAYLOAD, secret=SECRET)
    assert verify_token(token, secret=SECRET, kind=OPEN) == signed(OPEN_PAYLOAD)
    # The key id is a hash of the key: it tells nothing of the key.
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", key_id(SECRET)) and SECRET not in token
    assert key_id("another-key") != key_id(SECRET)


def test_tokens_from_before_key_ids_still_verify() -> None:
    # A token as DEE made them before it named its key: no "i", every key is tried.
    encoded = encode(json.dumps(OPEN_PAYLOAD, separators=(",", ":")).encode())
    mac = hmac.new(b"old-key", b"dee-token-v1." + encoded.encode(), hashlib.sha256).digest()
    token = f"{encoded}.{encode(mac)}"
    assert verify_token(token, secret="new-key,old-key", kind=OPEN) == OPEN_PAYLOAD
    with pytest.raises(TokenError, match="signature does not match"):
        verify_token(token, secret="new-key", kind=OPEN)


def test_tokens_are_url_safe_without_padding() -> None:
    token = sign_token({**OPEN_PAYLOAD, "r": "plan:contact/with?odd&chars=é"}, secret=SECRET)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert "=" not in token
    assert verify_token(token, secret=SECRET, kind=OPEN)["r"] == "plan:contact/with?odd&chars=é"


def test_signing_is_deterministic() -> None:
    assert sign_token(OPEN_PAYLOAD, secret=SECRET) == sign_token(OPEN_PAYLOAD, secret=SECRET)


def test_token_error_is_a_dee_error() -> None:
    assert issubclass(TokenError, DeeError)


def altered_payload() -> str:
    payload, signature = sign_token(OPEN_PAYLOAD, secret=SECRET).split(".")
    changed = json.loads(decode(payload)) | {"r": "someone-else:bob"}
    return f"{encode(json.dumps(changed, separators=(',', ':')).encode())}.{signature}"


def altered_signature() -> str:
    payload, signature = sign_token(OPEN_PAYLOAD, secret=SECRET).split(".")
    flipped = bytearray(decode(signature))
    flipped[0] ^= 1
    return f"{payload}.{encode(bytes(flipped))}"


def other_spelling_of_signature() -> str:
    # 32 bytes take 43 base64 characters with 2 spare bits; setting them decodes to the
    # same bytes, and must still be refused.
    payload, signature = sign_token(OPEN_PAYLOAD, secret=SECRET).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    assert decode(signature[:-1] + last) == decode(signature)
    return f"{payload}.{signature[:-1]}{last}"


def unsigned_forgery() -> str:
    payload = encode(json.dumps(OPEN_PAYLOAD).encode())
    return f"{payload}.{encode(b'x' * 32)}"


@pytest.mark.parametrize(
    ("make_token", "kind", "secret", "message"),
    [
        # The payload changed after signing.
        (altered_payload, OPEN, SECRET, "signature does not match"),
        # The signature changed.
        (altered_signature, OPEN, SECRET, "signature does not match"),
        # Same signature bytes, different text: one valid spelling per token.
        (other_spelling_of_signature, OPEN, SECRET, "signature does not match"),
        # Made by someone without the key.
        (unsigned_forgery, OPEN, SECRET, "signature does not match"),
        # Signed with another key: its key id names no configured key.
        (lambda: sign_token(OPEN_PAYLOAD, secret="another-key"), OPEN, SECRET, "no longer holds"),
        # An open token offered as a click token.
        (lambda: sign_token(OPEN_PAYLOAD, secret=SECRET), CLICK, SECRET, "kind 'o'"),
        # An open token offered as an unsubscribe token.
        (lambda: sign_token(OPEN_PAYLOAD, secret=SECRET), UNSUBSCRIBE, SECRET, "kind 'o'"),
        # Signed, of the right kind, but without the fields the kind needs.
        (lambda: sign_token({"k": "c", "r": "x"}, secret=SECRET), CLICK, SECRET, "lacks 's'"),
        # A visit that is not an integer.
        (lambda: sign_token({**OPEN_PAYLOAD, "v": True}, secret=SECRET), OPEN, SECRET, "'v'"),
        # An open token without its run.
        (lambda: sign_token({"k": "o"}, secret=SECRET), OPEN, SECRET, "lacks 'r'"),
        # No separator.
        (lambda: "bm90IGEgdG9rZW4", OPEN, SECRET, "malformed"),
        # Empty parts.
        (lambda: ".", OPEN, SECRET, "malformed"),
        # Characters outside base64url.
        (lambda: "abc+/=.def", OPEN, SECRET, "malformed"),
        # Three parts.
        (lambda: sign_token(OPEN_PAYLOAD, secret=SECRET) + ".x", OPEN, SECRET, "malformed"),
        # Empty.
        (lambda: "", OPEN, SECRET, "malformed"),
        # Longer than any token DEE makes.
        (lambda: "a" * (MAX_TOKEN_LENGTH + 1) + ".b", OPEN, SECRET, "too long"),
        # No key to check against.
        (lambda: sign_token(OPEN_PAYLOAD, secret=SECRET), OPEN, "", "DEE_SECRET_KEY"),
    ],
)
def test_bad_tokens_are_refused(make_token: Any, kind: str, secret: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        verify_token(make_token(), secret=secret, kind=kind)


def test_signed_non_object_payload_is_refused() -> None:
    # Only reachable with the key, so built by hand with the module's own signature.
    from dee.runs.tracking import _signature

    payload = encode(b"[1, 2]")
    token = f"{payload}.{_signature(payload, SECRET)}"
    with pytest.raises(TokenError, match="not an object"):
        verify_token(token, secret=SECRET, kind=OPEN)


def test_signing_needs_a_kind_and_a_key() -> None:
    with pytest.raises(TokenError, match='"k"'):
        sign_token({"r": "x"}, secret=SECRET)
    with pytest.raises(TokenError, match="DEE_SECRET_KEY"):
        sign_token(OPEN_PAYLOAD, secret="")


def test_overlong_tokens_are_not_made() -> None:
    with pytest.raises(TokenError, match="the most is 2,048"):
        sign_token({"k": "c", "u": "https://example.com/" + "a" * 2000}, secret=SECRET)


# -- URLs -----------------------------------------------------------------------------------


def token_of(url: str, prefix: str) -> str:
    assert url.startswith(prefix), url
    return url.removeprefix(prefix)


def test_open_pixel_url() -> None:
    url = open_pixel_url(
        "https://dee.example/", secret=SECRET, run_id="welcome:ana", step_id="hello", visit=2
    )
    token = token_of(url, "https://dee.example/t/o/")
    assert verify_token(token, secret=SECRET, kind=OPEN) == signed(
        {
            "k": "o",
            "r": "welcome:ana",
            "s": "hello",
            "v": 2,
        }
    )


def test_click_url() -> None:
    target = "https://example.com/pricing?plan=pro&ref=mail#top"
    url = click_url(
        "https://dee.example",
        secret=SECRET,
        run_id="welcome:ana",
        step_id="hello",
        visit=1,
        url=target,
    )
    token = token_of(url, "https://dee.example/t/c/")
    payload = verify_token(token, secret=SECRET, kind=CLICK)
    assert payload == signed({"k": "c", "r": "welcome:ana", "s": "hello", "v": 1, "u": target})


def test_unsubscribe_url() -> None:
    url = unsubscribe_url(
        "http://127.0.0.1:8000", secret=SECRET, run_id="welcome:ana", email="ana@example.com"
    )
    token = token_of(url, "http://127.0.0.1:8000/u/")
    payload = verify_token(token, secret=SECRET, kind=UNSUBSCRIBE)
    assert sorted(payload) == ["a", "i", "k", "r"]
    assert (payload["k"], payload["r"]) == ("u", "welcome:ana")
    # The address is sealed: the link, readable by anyone who holds it, shows none of it.
    readable = decode(token.split(".")[0]).decode()
    assert "ana" not in readable.replace("welcome:ana", "") and "example" not in readable
    assert unsubscribe_address(payload, secret=SECRET) == "ana@example.com"
    # One run and address always give one link (a retried send renders the same email);
    # another run's link for the same address shares nothing with it.
    again = unsubscribe_url(
        "http://127.0.0.1:8000", secret=SECRET, run_id="welcome:ana", email="ana@example.com"
    )
    other = unsubscribe_url(
        "http://127.0.0.1:8000", secret=SECRET, run_id="welcome:bo", email="ana@example.com"
    )
    sealed = verify_token(token_of(other, "http://127.0.0.1:8000/u/"), secret=SECRET, kind="u")
    assert again == url and sealed["a"] != payload["a"]


def test_unsubscribe_links_from_before_and_broken_seals() -> None:
    # A link from before sealing carries the address readable; it still unsubscribes.
    legacy = sign_token({"k": "u", "r": "p:c", "e": "ana@example.com"}, secret=SECRET)
    payload = verify_token(legacy, secret=SECRET, kind=UNSUBSCRIBE)
    assert unsubscribe_address(payload, secret=SECRET) == "ana@example.com"
    # Signed, but the seal is not one: refused, as is a link with no address at all.
    broken = verify_token(
        sign_token({"k": "u", "r": "p:c", "a": encode(b"x" * 40)}, secret=SECRET),
        secret=SECRET,
        kind=UNSUBSCRIBE,
    )
    with pytest.raises(TokenError, match="cannot be unsealed"):
        unsubscribe_address(broken, secret=SECRET)
    with pytest.raises(TokenError, match="lacks the address"):
        verify_token(sign_token({"k": "u", "r": "p:c"}, secret=SECRET), secret=SECRET, kind="u")


# -- link rewriting -------------------------------------------------------------------------


def wrap(url: str) -> str:
    return f"https://t.example/c?u={url}"


class Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href"))


def hrefs(html: str) -> list[str | None]:
    parser = Hrefs()
    parser.feed(html)
    parser.close()
    return parser.hrefs


@pytest.mark.parametrize(
    "link",
    [
        # Mail and phone links are not web pages.
        '<a href="mailto:sales@example.com">mail</a>',
        '<a href="tel:+15551234567">call</a>',
        # In-page anchors and relative links have nowhere to redirect to.
        '<a href="#pricing">below</a>',
        '<a href="/relative/path">relative</a>',
        # Not a link at all.
        '<a name="top">top</a>',
        '<link href="https://example.com/style.css" rel="stylesheet">',
        # Other schemes.
        '<a href="javascript:alert(1)">js</a>',
        '<a href="ftp://example.com/file">ftp</a>',
    ],
)
def test_links_that_stay(link: str) -> None:
    html = f"<p>{link}</p>"
    assert rewrite_links(html, wrap) == html


def test_http_links_are_rewritten_and_everything_else_kept() -> None:
    html = (
        "<html><body>\n"
        '<p class="x">Hi <a href="https://example.com/a">A</a>,\n'
        "<A HREF='http://example.com/b' target=_blank>B</A>\n"
        '<a title="href=https://not.this" href=https://example.com/c>C</a>\n'
        '<a href="mailto:x@example.com">M</a></p>\n'
        '<!-- <a href="https://example.com/commented">x</a> -->\n'
        "</body></html>"
    )
    rewritten = rewrite_links(html, wrap)
    assert hrefs(rewritten) == [
        wrap("https://example.com/a"),
        wrap("http://example.com/b"),
        wrap("https://example.com/c"),
        "mailto:x@example.com",
    ]
    assert 'title="href=https://not.this"' in rewritten
    assert "target=_blank" in rewritten
    assert '<a href="https://example.com/commented">' in rewritten
    assert rewritten.startswith('<html><body>\n<p class="x">Hi <a href="')
    assert rewritten.endswith("</body></html>")


def test_entities_in_urls_are_decoded_then_escaped_again() -> None:
    html = '<a href="https://example.com/?a=1&amp;b=2">x</a>'
    seen: list[str] = []

    def make(url: str) -> str:
        seen.append(url)
        return f"https://t.example/c?u=1&next={url}"

    rewritten = rewrite_links(html, make)
    assert seen == ["https://example.com/?a=1&b=2"]
    assert hrefs(rewritten) == ["https://t.example/c?u=1&next=https://example.com/?a=1&b=2"]
    assert "&amp;next=" in rewritten


def test_keep_leaves_chosen_links() -> None:
    html = (
        '<a href="https://dee.example/u/TOKEN">unsubscribe</a>'
        '<a href="https://example.com/">site</a>'
    )
    rewritten = rewrite_links(html, wrap, keep=lambda url: url.startswith("https://dee.example/"))
    assert hrefs(rewritten) == ["https://dee.example/u/TOKEN", wrap("https://example.com/")]


def test_links_across_lines_and_windows_line_endings() -> None:
    html = 'a\r\nb\r\n<a\r\n  href="https://example.com/x"\r\n>x</a>\r\n<a href="https://e.com/y">y</a>'
    rewritten = rewrite_links(html, wrap)
    assert hrefs(rewritten) == [wrap("https://example.com/x"), wrap("https://e.com/y")]
    assert rewritten.count("\r\n") == html.count("\r\n")


def test_rewritten_links_verify() -> None:
    html = '<a href="https://example.com/offer">offer</a>'
    rewritten = rewrite_links(
        html,
        lambda url: click_url(
            "https://dee.example", secret=SECRET, run_id="r", step_id="s", visit=3, url=url
        ),
    )
    [href] = hrefs(rewritten)
    assert href is not None
    payload = verify_token(token_of(href, "https://dee.example/t/c/"), secret=SECRET, kind=CLICK)
    assert payload["u"] == "https://example.com/offer"
    assert payload["v"] == 3


# -- open pixel -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        # Before the closing body tag, whatever its case and spacing.
        ("<html><body><p>x</p></body></html>", "<p>x</p><img src=PIXEL"),
        ("<HTML><BODY><p>x</p></BODY ></HTML>", "<p>x</p><img src=PIXEL"),
        # A fragment without a body: at the end.
        ("<p>x</p>", "<p>x</p><img src=PIXEL"),
    ],
)
def test_open_pixel(html: str, expected: str) -> None:
    pixel_url = "https://dee.example/t/o/abc.def?x=1&y=2"
    added = add_open_pixel(html, pixel_url)
    assert expected.replace("PIXEL", '"https://dee.example/t/o/abc.def?x=1&amp;y=2"') in added
    assert 'width="1" height="1"' in added
    assert added.count("<img") == 1
    if "</body" in html.lower():
        assert added.lower().index("<img") < added.lower().index("</body")


def test_unchanged_urls_leave_the_document_as_it_was() -> None:
    html = "<a HREF = 'https://example.com/?a=1&amp;b=2' >x</a>"
    assert rewrite_links(html, lambda url: url) == html


def test_a_rotated_key_still_verifies_what_the_previous_one_signed() -> None:
    payload = {"k": OPEN, "r": "p:c", "s": "intro", "v": 1}
    before = sign_token(payload, secret="old-key")
    # During the rotation DEE_SECRET_KEY is "new,old": the new key signs, both verify.
    rotating = "new-key, old-key"
    assert verify_token(before, secret=rotating, kind=OPEN) == signed(payload, "old-key")
    after = sign_token(payload, secret=rotating)
    assert after == sign_token(payload, secret="new-key") != before
    assert verify_token(after, secret="new-key", kind=OPEN) == signed(payload, "new-key")
    # An unsubscribe link sealed under the old key still unseals while it is listed.
    link = unsubscribe_url("https://d.example", secret="old-key", run_id="p:c", email="a@b.example")
    sealed = verify_token(link.rsplit("/", 1)[1], secret=rotating, kind=UNSUBSCRIBE)
    assert unsubscribe_address(sealed, secret=rotating) == "a@b.example"
    # Once the old key is dropped, what it signed no longer verifies; nor does a stranger's.
    with pytest.raises(TokenError, match="no longer holds"):
        verify_token(before, secret="new-key", kind=OPEN)
    with pytest.raises(TokenError, match="no longer holds"):
        verify_token(sign_token(payload, secret="other"), secret=rotating, kind=OPEN)
    with pytest.raises(TokenError, match="no secret key"):
        sign_token(payload, secret=" , ")
