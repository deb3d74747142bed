"""Twilio's call callbacks as Twilio sends them: the form it posts, signed with
``RequestValidator`` over the public URL, delivered to the real app (:mod:`tests.helpers.server`),
and the callback URLs of a call the real worker placed on the loopback Calls API."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

from dee.settings import Settings
from tests.helpers.engine import CONTACT
from tests.helpers.server import RunningServer
from tests.helpers.twilio_api import TwilioApi

__all__ = [
    "CALLER_ID",
    "PHONE",
    "PUBLIC_URL",
    "SECRET",
    "amd_params",
    "callback",
    "deliver",
    "placed_call",
    "server_settings",
    "signature",
    "status_params",
]

#: What tests.helpers.engine gives the worker; the server must agree.
PUBLIC_URL = "https://dee.example.com"
SECRET = "test-secret-key"
CALLER_ID = "+15551234567"
PHONE = str(CONTACT["phone"])


def server_settings(twilio: TwilioApi, folder: Path, **changes: Any) -> Settings:
    settings = Settings(
        database_url=f"sqlite:///{folder / 'server.db'}",
        public_url=PUBLIC_URL,
        secret_key=SECRET,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_api_url=twilio.url,
    )
    return dataclasses.replace(settings, **changes)


def status_params(twilio: TwilioApi, sid: str, status: str, **extra: str) -> dict[str, str]:
    """A status callback's form as Twilio posts it (empty ``ForwardedFrom`` included)."""
    return {
        "AccountSid": twilio.account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": status,
        "Called": PHONE,
        "Caller": CALLER_ID,
        "CallbackSource": "call-progress-events",
        "Direction": "outbound-api",
        "ForwardedFrom": "",
        "From": CALLER_ID,
        "SequenceNumber": "0",
        "Timestamp": "Mon, 05 May 2025 10:00:00 +0000",
        "To": PHONE,
        **extra,
    }


def amd_params(twilio: TwilioApi, sid: str, answered_by: str) -> dict[str, str]:
    return {
        "AccountSid": twilio.account_sid,
        "AnsweredBy": answered_by,
        "CallSid": sid,
        "MachineDetectionDuration": "2140",
    }


def signature(url: str, params: dict[str, str], auth_token: str) -> str:
    return str(RequestValidator(auth_token).compute_signature(url, params))


async def deliver(
    server: RunningServer, url: str, params: dict[str, str], *, signature: str | None
) -> httpx.Response:
    """POST ``params`` to public ``url`` the way Twilio would, reaching the local server."""
    assert url.startswith(PUBLIC_URL)
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    return await server.http.post(url.removeprefix(PUBLIC_URL), data=params, headers=headers)


async def callback(
    server: RunningServer, twilio: TwilioApi, url: str, params: dict[str, str]
) -> None:
    """Deliver a correctly signed callback; the server must accept it."""
    response = await deliver(
        server, url, params, signature=signature(url, params, twilio.auth_token)
    )
    assert response.status_code == 204, response.text
    assert response.content == b""


async def placed_call(twilio: TwilioApi, before: int, known: set[str]) -> tuple[str, str, str]:
    """The SID, status callback and AMD callback of the call the worker places after
    ``before`` creates, when ``known`` are the calls that existed (polled, bounded); the AMD
    callback is ``""`` when the step does not detect voicemail."""
    for _ in range(1200):
        new = [call["sid"] for call in twilio.calls if call["sid"] not in known]
        if new and len(twilio.creates) > before:
            request = twilio.creates[before]
            return new[0], request["StatusCallback"], request.get("AsyncAmdStatusCallback") or ""
        await asyncio.sleep(0.025)
    raise AssertionError("the run placed no call")
