"""Keys rotate without breaking what is already out there: with ``DEE_SECRET_KEY`` set to
``new,old`` an unsubscribe link signed with the old key (in an inbox since before the
rotation) still unsubscribes, and with ``DEE_INBOUND_SECRET`` set to ``new,old`` a provider
still posting with the old key is still heard. A real server on the dev server."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from dee.runs.suppressions import Suppressions
from dee.runs.tracking import unsubscribe_url
from dee.settings import Settings
from tests.helpers.server import running_server

PUBLIC_URL = "https://dee.example.com"


def _link(secret: str, email: str) -> str:
    url = unsubscribe_url(PUBLIC_URL, secret=secret, run_id=f"p:{email}", email=email)
    return url.removeprefix(PUBLIC_URL)


async def test_links_and_webhook_keys_from_before_a_rotation_keep_working(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        public_url=PUBLIC_URL,
        secret_key="new-signing-key,old-signing-key",
        inbound_secret="new-inbound-key,old-inbound-key",
    )
    mail = EmailMessage()
    mail["From"] = "someone@example.org"
    mail["Subject"] = "hello"
    mail.set_content("hi")
    async with running_server(settings, client=dev_env.client) as server:
        one_click = {"List-Unsubscribe": "One-Click"}
        old = await server.http.post(_link("old-signing-key", "ana@example.com"), data=one_click)
        new = await server.http.post(_link("new-signing-key", "bo@example.com"), data=one_click)
        # A key that was never DEE's is still refused, and suppresses nobody.
        stranger = await server.http.post(_link("stranger-key", "cy@example.com"), data=one_click)
        webhook = "/webhooks/inbound/raw"
        headers = {"content-type": "message/rfc822"}
        inbound = [
            await server.http.post(
                webhook, params={"key": key}, content=bytes(mail), headers=headers
            )
            for key in ("old-inbound-key", "new-inbound-key", "stranger-key")
        ]
    assert (old.status_code, new.status_code, stranger.status_code) == (200, 200, 404)
    with Suppressions(database) as suppressions:
        assert suppressions.is_suppressed("ana@example.com")
        assert suppressions.is_suppressed("bo@example.com")
        assert not suppressions.is_suppressed("cy@example.com")
    assert [answer.status_code for answer in inbound] == [200, 200, 403]
