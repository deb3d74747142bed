"""The send ledger's fence, through the email activity, a real SMTP server and a real ledger.

An attempt is held at a chosen point of its SMTP conversation by the server itself (the
point is the server's, not a timing guess) while a second attempt of the same send takes it
over and sends it; then the first is let go. It must reach the commit before the final dot,
find the send taken over, and end DATA without the dot: exactly one message arrives.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from dee.runs.ledger import SendLedger, email_key
from tests.activities.test_email import make_input, settings_for
from tests.helpers.smtp import RecordingHandler, smtp_server


class HoldingHandler(RecordingHandler):
    """Holds the first session that reaches ``point`` until ``release`` is set."""

    def __init__(self, point: str) -> None:
        super().__init__()
        self.point = point
        self.holding = threading.Event()
        self.release = threading.Event()
        self.data_started = 0

    async def _hold(self, point: str) -> None:
        if point == self.point and not self.holding.is_set():
            self.holding.set()
            await asyncio.to_thread(self.release.wait, 30)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        await self._hold("after-claim")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        await self._hold("after-rcpt")
        return reply


async def _attempt(activities: EmailActivities) -> Any:
    return await ActivityEnvironment().run(activities.send_email, make_input())


@pytest.mark.parametrize("point", ["after-claim", "after-rcpt"])
async def test_a_stalled_attempt_cannot_send_after_a_takeover(point: str, tmp_path: Path) -> None:
    handler = HoldingHandler(point)
    with SendLedger(f"sqlite:///{tmp_path / 'dee.db'}") as ledger:
        async with smtp_server(handler) as server:
            activities = EmailActivities(settings_for(server.url), ledger)
            stalled = asyncio.create_task(_attempt(activities))
            assert await asyncio.to_thread(handler.holding.wait, 10)
            retry = await _attempt(activities)
            # Positive control: the retry took the send over and the message went out.
            assert retry.status == "sent" and len(handler.messages) == 1
            handler.release.set()
            with pytest.raises(ApplicationError) as raised:
                await asyncio.wait_for(stalled, 30)
            await asyncio.sleep(0.5)
            record = ledger.get(email_key("test-run", "welcome:ana", "intro-email", 1))
    # The stalled attempt got as far as the commit, and the fence stopped it there.
    assert raised.value.type == "Superseded" and raised.value.non_retryable
    assert len(handler.messages) == 1
    assert record is not None and record.status == "sent"


async def test_a_held_attempt_without_a_takeover_sends_once(tmp_path: Path) -> None:
    # Control: holding a session at RCPT by itself changes nothing.
    handler = HoldingHandler("after-rcpt")
    with SendLedger(f"sqlite:///{tmp_path / 'dee.db'}") as ledger:
        async with smtp_server(handler) as server:
            activities = EmailActivities(settings_for(server.url), ledger)
            held = asyncio.create_task(_attempt(activities))
            assert await asyncio.to_thread(handler.holding.wait, 10)
            handler.release.set()
            result = await asyncio.wait_for(held, 30)
    assert result.status == "sent" and len(handler.messages) == 1
