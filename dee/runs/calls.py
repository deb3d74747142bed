"""Twilio, as both sides of a call use it: the voice activity places calls and the server's
callbacks update them. One client factory, so both point at the same API and keep the
contact's number and the message out of INFO logs."""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from dee.settings import Settings

__all__ = ["CALL_SID_PATTERN", "TWILIO_API_URL", "twilio_client"]

#: Twilio's own API; ``DEE_TWILIO_API_URL`` points DEE elsewhere (a test double, a proxy).
TWILIO_API_URL: Final = "https://api.twilio.com"
#: What a call SID looks like: anything else from a callback or a run is refused.
CALL_SID_PATTERN: Final = re.compile(r"^CA[0-9a-fA-F]{32}$")


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """twilio's HTTP client logs each request at INFO, with its query string (the calls list
    query holds the contact's phone number) and its form (TwiML: the message): keep all of
    it at DEBUG."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(min(level, logging.DEBUG), msg, *args, **kwargs)


_HTTP_LOGGER: Final = _QuietLogger(logging.getLogger(f"{__name__}.twilio"))


def twilio_client(settings: Settings, *, timeout: float) -> tuple[Client, TwilioHttpClient]:
    """A Twilio client for ``settings``' account and API URL, and its HTTP client (close its
    ``session`` when done). Requests time out after ``timeout`` seconds."""
    http = TwilioHttpClient(timeout=timeout, logger=_HTTP_LOGGER)
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)
    base_url = settings.twilio_api_url.rstrip("/")
    if base_url != TWILIO_API_URL:
        # Every resource URL is the Api domain's base_url plus a path, so this is the one
        # place to point the client elsewhere. TWILIO_REGION / TWILIO_EDGE would rewrite
        # that host as if it were *.twilio.com, so they do not apply here.
        client.api.base_url = base_url
        client.region = None
        client.edge = None
    return client, http
