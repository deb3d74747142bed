"""The codec endpoint over real HTTP: Temporal's remote codec protocol, who may call it, and
CORS for the Temporal Web UI's origin only."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from dee.runs.codec import EncryptionCodec, parse_payload_keys
from dee.server.codec_routes import SESSION_COOKIE
from dee.settings import Settings
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import free_port

API_KEY = "codec-test-key"
KEY = "2026a:" + base64.b64encode(b"k" * 32).decode()
OLD_KEY = "2025z:" + base64.b64encode(b"o" * 32).decode()
UI = "http://127.0.0.1:8233"
AUTHORIZED = {"Authorization": f"Bearer {API_KEY}", "X-Namespace": "default"}
CONTACT = b'{"email":"ana@example.com","firstName":"Ana"}'


def as_json(*payloads: Payload) -> dict[str, Any]:
    """Payloads as the Web UI sends them: protobuf JSON, bytes in base64."""
    return {"payloads": [json_format.MessageToDict(payload) for payload in payloads]}


def from_json(body: dict[str, Any]) -> list[Payload]:
    return [json_format.ParseDict(item, Payload()) for item in body["payloads"]]


PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=CONTACT)


def settings_for(tmp_path: Path, *, keys: tuple[str, ...] = (KEY,)) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'dee.db'}",
        api_keys=(API_KEY,),
        payload_keys=keys,
        codec_origins=(UI,),
    )


@pytest_asyncio.fixture
async def offline_client() -> Client:
    """A client that never connects: the codec endpoint does not need Temporal."""
    return await Client.connect(f"127.0.0.1:{free_port()}", lazy=True)


@pytest_asyncio.fixture
async def server(tmp_path: Path, offline_client: Client) -> AsyncIterator[RunningServer]:
    async with running_server(settings_for(tmp_path), client=offline_client) as up:
        yield up


async def test_payloads_round_trip_and_the_sdk_reads_what_the_endpoint_encrypts(
    server: RunningServer,
) -> None:
    encoded = await server.http.post("/codec/encode", json=as_json(PLAIN), headers=AUTHORIZED)
    assert encoded.status_code == 200, encoded.text
    [sealed] = from_json(encoded.json())
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert sealed.metadata["encryption-key-id"] == b"2026a"
    assert b"ana@example.com" not in sealed.data
    # What DEE's clients and workers decode, and the other way round.
    codec = EncryptionCodec(parse_payload_keys([KEY]))
    assert await codec.decode([sealed]) == [PLAIN]
    [by_the_sdk] = await codec.encode([PLAIN])
    # The Web UI adds ?preserveStorageRefs=true; payloads not encrypted come back as sent.
    decoded = await server.http.post(
        "/codec/decode?preserveStorageRefs=true",
        json=as_json(sealed, by_the_sdk, PLAIN),
        headers=AUTHORIZED,
    )
    assert decoded.status_code == 200, decoded.text
    assert from_json(decoded.json()) == [PLAIN, PLAIN, PLAIN]
    assert decoded.json()["payloads"][0] == {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(CONTACT).decode(),
    }


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        # No key at all.
        ({}, "send an API key as `Authorization: Bearer <key>`, or sign in at /codec/login"),
        # A key that is not one of DEE_API_KEYS.
        ({"Authorization": "Bearer not-the-key"}, "the API key is not one of DEE_API_KEYS"),
        # A session cookie that was never signed.
        ({"Cookie": f"{SESSION_COOKIE}=99999999999.AAAA"}, "sign in at /codec/login"),
    ],
)
@pytest.mark.parametrize("operation", ["encode", "decode"])
async def test_callers_without_a_key_or_a_sign_in_are_refused(
    server: RunningServer, operation: str, headers: dict[str, str], message: str
) -> None:
    refused = await server.http.post(f"/codec/{operation}", json=as_json(PLAIN), headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"
    assert message in refused.json()["message"]
    assert refused.headers["WWW-Authenticate"] == "Bearer"


async def test_a_browser_signs_in_with_an_api_key_and_then_decodes_with_its_cookie(
    server: RunningServer,
) -> None:
    page = await server.http.get("/codec/login")
    assert page.status_code == 200 and "<form method='post' action='login'>" in page.text
    wrong = await server.http.post("/codec/login", data={"key": "not-the-key"})
    assert wrong.status_code == 401 and "not one of DEE_API_KEYS" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies

    signed_in = await server.http.post("/codec/login", data={"key": API_KEY})
    assert signed_in.status_code == 200, signed_in.text
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "Max-Age=43200", "Path=/codec", "SameSite=strict"):
        assert attribute in cookie, cookie
    # Over plain HTTP (one machine) the cookie cannot be Secure.
    assert "Secure" not in cookie
    token = signed_in.cookies[SESSION_COOKIE]
    assert API_KEY not in token

    [sealed] = await EncryptionCodec(parse_payload_keys([KEY])).encode([PLAIN])
    with_cookie = {"Cookie": f"{SESSION_COOKIE}={token}", "X-Namespace": "default"}
    decoded = await server.http.post("/codec/decode", json=as_json(sealed), headers=with_cookie)
    assert decoded.status_code == 200, decoded.text
    assert from_json(decoded.json()) == [PLAIN]
    # A cookie changed by a character is no sign-in: in its MAC, at its end (where base64
    # has unused bits: another spelling of the same bytes is refused too), in its expiry.
    expires, _, mac = token.partition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bytes = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]
    for changed in (
        f"{expires}.{mac[:5]}{'A' if mac[5] != 'A' else 'B'}{mac[6:]}",
        f"{expires}.{same_bytes}",
        f"{int(expires) + 1}.{mac}",
    ):
        forged = {"Cookie": f"{SESSION_COOKIE}={changed}"}
        answer = await server.http.post("/codec/decode", json=as_json(sealed), headers=forged)
        assert answer.status_code == 401, changed

    signed_out = await server.http.post("/codec/logout")
    assert signed_out.status_code == 200
    assert signed_out.headers["set-cookie"].startswith(f'{SESSION_COOKIE}=""')


async def test_a_sign_in_ends_when_its_api_key_is_removed(
    tmp_path: Path, offline_client: Client
) -> None:
    async with running_server(settings_for(tmp_path), client=offline_client) as before:
        token = (await before.http.post("/codec/login", data={"key": API_KEY})).cookies[
            SESSION_COOKIE
        ]
    rotated = dataclasses.replace(settings_for(tmp_path), api_keys=("another-key",))
    async with running_server(rotated, client=offline_client) as after:
        answer = await after.http.post(
            "/codec/decode",
            json=as_json(PLAIN),
            headers={"Cookie": f"{SESSION_COOKIE}={token}"},
        )
    assert answer.status_code == 401


async def test_the_web_uis_origin_gets_cors_and_no_other_origin_does(
    server: RunningServer,
) -> None:
    # The preflight the Web UI's fetch makes: JSON, X-Namespace, maybe its access token.
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    allowed = await server.http.options("/codec/decode", headers={"Origin": UI, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == UI
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    allowed_headers = allowed.headers["Access-Control-Allow-Headers"].lower()
    for header in ("content-type", "x-namespace", "authorization"):
        assert header in allowed_headers

    other = await server.http.options(
        "/codec/decode", headers={"Origin": "https://evil.example.net", **preflight}
    )
    assert other.status_code == 400
    assert "Access-Control-Allow-Origin" not in other.headers

    # The call itself, and its refusals, carry the header the browser needs to read them.
    called = await server.http.post(
        "/codec/decode", json=as_json(PLAIN), headers={"Origin": UI, **AUTHORIZED}
    )
    assert called.status_code == 200 and called.headers["Access-Control-Allow-Origin"] == UI
    refused = await server.http.post("/codec/decode", json=as_json(PLAIN), headers={"Origin": UI})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == UI
    # The rest of the server answers no other origin.
    api = await server.http.options("/v1/plans", headers={"Origin": UI, **preflight})
    assert "Access-Control-Allow-Origin" not in api.headers
    assert (
        "Access-Control-Allow-Origin"
        not in (await server.http.get("/v1/plans", headers={"Origin": UI, **AUTHORIZED})).headers
    )


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        # A payload under a key that is no longer listed names the key.
        ("old-key", "unknown-payload-key", "key id '2025z', which is not in DEE_PAYLOAD_KEYS"),
        # A payload that was altered.
        ("altered", "undecryptable-payload", "does not decrypt"),
        # Not base64 where protobuf JSON has bytes.
        (
            {"payloads": [{"metadata": {}, "data": "***"}]},
            "invalid-request",
            "payloads.0.data",
        ),
        # Not the shape of Payloads at all.
        ({"payloads": "none"}, "invalid-request", "payloads"),
    ],
)
async def test_what_cannot_be_decoded_is_a_422_naming_why(
    server: RunningServer, body: Any, code: str, says: str
) -> None:
    if body == "old-key":
        [sealed] = await EncryptionCodec(parse_payload_keys([OLD_KEY])).encode([PLAIN])
        body = as_json(sealed)
    elif body == "altered":
        [sealed] = await EncryptionCodec(parse_payload_keys([KEY])).encode([PLAIN])
        sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
        body = as_json(sealed)
    answer = await server.http.post("/codec/decode", json=body, headers=AUTHORIZED)
    assert answer.status_code == 422
    assert answer.json()["code"] == code
    assert says in answer.json()["message"]


async def test_a_form_or_text_body_is_not_decoded(server: RunningServer) -> None:
    """A cross-site form can post text with the browser's cookie; only JSON is read."""
    [sealed] = await EncryptionCodec(parse_payload_keys([KEY])).encode([PLAIN])
    text = json.dumps(as_json(sealed))
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        answer = await server.http.post(
            "/codec/decode", content=text, headers={**AUTHORIZED, "Content-Type": content_type}
        )
        assert answer.status_code == 422, (content_type, answer.text)
        assert "ana@example.com" not in answer.text


async def test_payloads_up_to_temporals_limit_are_taken(server: RunningServer) -> None:
    # 2 MiB, Temporal's largest payload: more than the rest of the API takes.
    big = Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"x" * (2 * 1024 * 1024) + b'"')
    answer = await server.http.post("/codec/encode", json=as_json(big), headers=AUTHORIZED)
    assert answer.status_code == 200, answer.text[:200]
    assert (
        await server.http.post("/v1/plans", content=b"x" * (2 * 1024 * 1024), headers=AUTHORIZED)
    ).status_code == 413


async def test_without_payload_keys_the_endpoint_says_so(
    tmp_path: Path, offline_client: Client
) -> None:
    async with running_server(settings_for(tmp_path, keys=()), client=offline_client) as up:
        for path in ("/codec/encode", "/codec/decode"):
            answer = await up.http.post(path, json=as_json(PLAIN), headers=AUTHORIZED)
            assert answer.status_code == 404
            assert answer.json() == {
                "code": "codec-not-configured",
                "message": "payloads are not encrypted on this server (DEE_PAYLOAD_KEYS is "
                "not set), so there is nothing to encode or decode",
            }
        assert (await up.http.get("/codec/login")).status_code == 404
        # Still behind the keys: nobody learns even that much without one.
        assert (await up.http.post("/codec/decode", json=as_json(PLAIN))).status_code == 401
