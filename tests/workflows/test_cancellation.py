"""A cancelled run never sends after it reports cancelled: it waits for the send in flight
to stop or finish first, and then ends (a send that finished does not carry the run on).
Dev server, real worker, real SMTP server that holds the recipient a few seconds, so the
cancel lands while the email activity is mid-transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from tests.helpers.engine import engine
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api

#: Longer than the activity's 2-second heartbeat, which is how it hears of the cancel.
RCPT_DELAY = 4.0


async def test_a_run_cancelled_mid_send_reports_cancelled_only_after_the_send_stopped(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    smtp.handler.rcpt_delay = RCPT_DELAY
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            handle = await e.start(e.spec_version())
            async with asyncio.timeout(30):
                while not smtp.handler.rcpt_attempts:
                    await asyncio.sleep(0.02)
            # The email activity is waiting for the server's answer to RCPT.
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as caught:
                # Bounded: a run the cancel did not end would wait days.
                async with asyncio.timeout(60):
                    await handle.result()
            sent_when_cancelled = len(smtp.handler.messages)
            events = [event async for event in handle.fetch_history_events()]
    assert isinstance(caught.value.cause, CancelledError)
    types = [event.event_type for event in events]
    closed = types.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED)
    # The send was over (it stopped, or finished: Temporal tells an activity of a cancel
    # only at a heartbeat, so it may have sent first) before the run said it ended...
    over = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    }
    assert over & set(types[:closed]), types
    # ... and the run went no further: no wait began after the send.
    assert EventType.EVENT_TYPE_TIMER_STARTED not in types, types
    assert smtp.handler.rcpt_attempts == ["ana@example.com"]
    # Whatever the send did, it did before the run reported cancelled: at most one email.
    assert len(smtp.handler.messages) == sent_when_cancelled <= 1
