"""Each run is its own: a contact who runs a plan again gets a run with the same run id, and
what the previous run's email and call set off (a pixel, a link, a reply, a call callback)
reaches the new run as that earlier execution's, kept but never counted. Real worker,
real SMTP server, the real twilio client against the loopback Calls API, and real HTTP
requests to the real app, on the dev server."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from twilio.request_validator import RequestValidator

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.versions import PlanVersion
from dee.runs.client import run_state
from dee.runs.model import RunState
from dee.settings import Settings
from tests.helpers.engine import CONTACT, Engine, engine
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import TwilioApi, twilio_api
from tests.helpers.windows import ANY_HOUR

PUBLIC_URL = "https://dee.example.com"
SECRET = "test-secret-key"
CALLER_ID = "+15551234567"
INBOUND_KEY = "executions-inbound-key"
#: Long enough for the test to replay the earlier run's hits while the new run waits.
LISTEN_SECONDS = 8


def engaged_plan() -> tuple[ExecutionPlan, PlanContent]:
    """Email, call, listen a few seconds, then end by what the contact did."""
    plan = ExecutionPlan.model_validate(
        {
            "id": "executions",
            "name": "Executions",
            # Calls at any hour: the test is not about calling hours.
            "schedule": ANY_HOUR,
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "intro",
                    "templateId": "intro",
                    "subject": "Hello",
                    "tracking": {"opens": True, "clicks": True},
                },
                {"type": "sendVoice", "id": "call", "scriptId": "pitch", "callerId": CALLER_ID},
                {"type": "wait", "id": "listen", "duration": {"seconds": LISTEN_SECONDS}},
                {
                    "type": "branch",
                    "id": "route",
                    "conditions": [
                        {"when": "events.hasReply()", "goto": "replied"},
                        {"when": "events.hasClick()", "goto": "clicked"},
                        {"when": "events.hasOpen()", "goto": "opened"},
                        {"when": 'events.has("call-answered")', "goto": "talked"},
                        {"when": "default", "goto": "quiet"},
                    ],
                },
                *(
                    {"type": "end", "id": outcome, "outcome": outcome}
                    for outcome in ("replied", "clicked", "opened", "talked", "quiet")
                ),
            ],
            "transitions": [
                {"from": "intro", "to": "call"},
                {"from": "call", "to": "listen"},
                {"from": "listen", "to": "route"},
                *(
                    {"from": "route", "to": outcome, "condition": outcome}
                    for outcome in ("replied", "clicked", "opened", "talked")
                ),
                {"from": "route", "to": "quiet", "condition": "default"},
            ],
        }
    )
    html = '<p>Hi {{ contact.firstName }}: <a href="https://example.com/book">book</a></p>'
    content = PlanContent(
        templates={"intro": EmailTemplate(html=html)},
        scripts={"pitch": "Hello {{ contact.firstName }}."},
    )
    return plan, content


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


def _link(message: EmailMessage, pattern: str) -> str:
    html = message.get_body(("html",))
    assert html is not None
    match = re.search(pattern, html.get_content())
    assert match, pattern
    return match.group(1).replace("&amp;", "&").removeprefix(PUBLIC_URL)


class _Contact:
    """What one run sent the contact, and how the contact (or Twilio) answers it."""

    def __init__(self, message: EmailMessage, status_callback: str, call_sid: str) -> None:
        self.message = message
        self.pixel = _link(message, r'<img src="([^"]+/t/o/[^"]+)"')
        self.click = _link(message, r'href="([^"]+/t/c/[^"]+)"')
        self.status_callback = status_callback
        self.call_sid = call_sid

    async def open_and_click(self, server: RunningServer) -> None:
        assert (await server.http.get(self.pixel)).status_code == 200
        assert (await server.http.get(self.click)).status_code in {302, 303, 307}

    async def reply(self, server: RunningServer) -> None:
        reply = EmailMessage()
        reply["From"] = str(CONTACT["email"])
        reply["To"] = "sales@example.com"
        reply["Subject"] = "Re: Hello"
        reply["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
        reply["In-Reply-To"] = self.message["Message-ID"]
        reply.set_content("Tell me more.")
        posted = await server.http.post(
            f"/webhooks/inbound/raw?key={INBOUND_KEY}",
            content=bytes(reply),
            headers={"Content-Type": "message/rfc822"},
        )
        assert posted.status_code == 200, posted.text

    async def answer(self, server: RunningServer, twilio: TwilioApi) -> None:
        await self.call_status(server, twilio, "in-progress")

    async def call_status(self, server: RunningServer, twilio: TwilioApi, status: str) -> None:
        """Twilio's status callback for this run's call (``no-answer`` ends the call step)."""
        params = {
            "AccountSid": twilio.account_sid,
            "CallSid": self.call_sid,
            "CallStatus": status,
            "To": str(CONTACT["phone"]),
            "From": CALLER_ID,
        }
        signature = RequestValidator(twilio.auth_token).compute_signature(
            self.status_callback, params
        )
        response = await server.http.post(
            self.status_callback.removeprefix(PUBLIC_URL),
            data=params,
            headers={"X-Twilio-Signature": str(signature)},
        )
        assert response.status_code == 204, response.text


async def _sent(e: Engine, twilio: TwilioApi, count: int) -> _Contact:
    """The ``count``-th email and call, once both went out."""
    async with asyncio.timeout(30):
        while len(e.smtp.handler.messages) < count or len(twilio.creates) < count:
            await asyncio.sleep(0.05)
    message = e.smtp.handler.messages[count - 1].message
    call = twilio.creates[count - 1]
    return _Contact(message, call["StatusCallback"], str(twilio.calls[count - 1]["sid"]))


async def _run(e: Engine, version: PlanVersion) -> str:
    """Start the one contact of these tests on ``version``: every run has the same id."""
    handle = await e.start(version, contact_id="returning")
    return handle.id


async def _finished(e: Engine, run_id: str) -> RunState:
    async with asyncio.timeout(60):
        while (state := await run_state(e.client, run_id)).status != "completed":
            await asyncio.sleep(0.2)
    return state


async def test_the_previous_runs_pixel_link_reply_and_call_never_count_in_the_next(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
        version = e.registry.create(*engaged_plan())
        settings: Settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'dee.db'}",
            public_url=PUBLIC_URL,
            secret_key=SECRET,
            inbound_secret=INBOUND_KEY,
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token,
            twilio_api_url=twilio.url,
            task_queue=task_queue,
        )
        async with running_server(settings, client=e.client, registry=e.registry) as server:
            # The first run: the contact does nothing, and the run ends quiet.
            run_id = await _run(e, version)
            first = await _sent(e, twilio, 1)
            # The call step waits for the call to end (engine 3): nobody answers it.
            await first.call_status(server, twilio, "no-answer")
            first_state = await _finished(e, run_id)
            assert first_state.outcome == "quiet"

            # The contact runs the plan again: the same run id, a new execution.
            assert await _run(e, version) == run_id
            own = await _sent(e, twilio, 2)
            # Everything the first run's email and call can set off, replayed now.
            await first.open_and_click(server)
            await first.reply(server)
            await first.answer(server, twilio)
            await own.call_status(server, twilio, "no-answer")
            second = await _finished(e, run_id)

            # Positive control: a third run, whose own pixel counts.
            assert await _run(e, version) == run_id
            third = await _sent(e, twilio, 3)
            await third.open_and_click(server)
            await third.call_status(server, twilio, "no-answer")
            third_state = await _finished(e, run_id)

    assert second.execution is not None and second.execution != first_state.execution
    # The four events reached the second run, as the first run's, and none counted.
    assert second.foreign == 4, second.events
    replayed = [event for event in second.events if event.execution != second.execution]
    assert sorted(event.type for event in replayed) == [
        "call-answered",
        "click",
        "open",
        "reply",
    ]
    assert {event.execution for event in replayed} == {first_state.execution}
    # What it counted is its own call, which nobody answered.
    own_events = [event for event in second.events if event.execution == second.execution]
    assert sorted(event.type for event in own_events) == ["call-outcome", "no-answer"]
    assert [call.outcome for call in second.calls] == ["no-answer"]
    assert second.outcome == "quiet"
    assert third_state.outcome == "clicked"
    assert third_state.foreign == 0
    assert {event.execution for event in third_state.events} == {third_state.execution}


async def test_an_api_event_with_an_idempotency_key_is_one_event(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
        version = e.registry.create(*engaged_plan())
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'dee.db'}",
            api_keys=("executions-api-key",),
            task_queue=task_queue,
        )
        auth = {"Authorization": "Bearer executions-api-key"}
        async with running_server(settings, client=e.client, registry=e.registry) as server:
            run_id = await _run(e, version)
            events = f"/v1/runs/{run_id}/events"
            reply = {"type": "reply", "stepId": "intro"}
            for _ in range(3):
                posted = await server.http.post(
                    events, json=reply, headers={**auth, "Idempotency-Key": "reply-once"}
                )
                assert posted.status_code == 202, posted.text
                assert posted.json()["eventId"] == "reply-once"
            # Positive control: without a key or an id, a retried request is a new event.
            for _ in range(2):
                posted = await server.http.post(events, json={"type": "open"}, headers=auth)
                assert posted.status_code == 202, posted.text
            conflicting = await server.http.post(
                events, json={**reply, "eventId": "a"}, headers={**auth, "Idempotency-Key": "b"}
            )
            assert conflicting.status_code == 422
            assert conflicting.json()["code"] == "conflicting-event-id"
            # The call step waits for the call to end (engine 3): the API can say how.
            call = await _sent(e, twilio, 1)
            ended = {"CallSid": call.call_sid, "outcome": "no-answer"}
            outcome = {"type": "call-outcome", "stepId": "call", "details": ended}
            posted = await server.http.post(events, json=outcome, headers=auth)
            assert posted.status_code == 202, posted.text
            state = await _finished(e, run_id)
    assert [event.type for event in state.events].count("reply") == 1
    assert [event.type for event in state.events].count("open") == 2
    assert state.event_count == 4
    assert [call.outcome for call in state.calls] == ["no-answer"]
    assert state.outcome == "replied"
