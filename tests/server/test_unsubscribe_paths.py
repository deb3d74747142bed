"""Every way a contact leaves: the List-Unsubscribe mail, SendGrid's events, bounces mailed
back by a plain SMTP server, the API's event and the suppression API. The real app under
uvicorn, DEE's real worker on the Temporal dev server, the real SMTP server, and the real
twilio client against the loopback Calls API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.client import run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import CONTACT_ID_ATTRIBUTE, WORKFLOW_NAME, RunEvent, RunInput
from dee.runs.suppressions import Suppressions
from dee.settings import Settings
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import run_result, running_worker
from tests.helpers.twilio_api import twilio_api
from tests.server.test_sendgrid import PUBLIC_KEY, sign
from tests.server.test_tracking_routes import tampered, waiting_plan

_T = TypeVar("_T")

SECRET = "unsubscribe-test-secret"
INBOUND = "unsubscribe-test-inbound"
KEY = "unsubscribe-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def mail_then_wait(plan_id: str) -> ExecutionPlan:
    """An email, then an hour's wait: the run is still there when the contact leaves."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Mail then wait",
            "metadata": {"createdBy": "tests"},
            # Bounces reach the run for its branches rather than end it (exitOn's default).
            "exitOn": ["unsubscribe"],
            "steps": [
                {"type": "sendEmail", "id": "intro", "templateId": "intro", "subject": "Hi"},
                {"type": "wait", "id": "pause", "duration": {"hours": 1}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


CONTENT = PlanContent(templates={"intro": EmailTemplate(html="<p>Hi {{ contact.firstName }}</p>")})


@dataclass
class Stack:
    env: WorkflowEnvironment
    server: RunningServer
    smtp: SmtpServer
    registry: PlanRegistry
    suppressions: Suppressions
    task_queue: str

    @property
    def client(self) -> Client:
        return self.env.client

    def version(self, make: Callable[[str], ExecutionPlan] = mail_then_wait) -> PlanVersion:
        content = CONTENT if make is mail_then_wait else PlanContent()
        return self.registry.create(make(f"unsub-{uuid.uuid4().hex[:8]}"), content)

    async def start(self, contact: dict[str, str], make: Callable[[str], ExecutionPlan]) -> str:
        return await start_run(
            self.client, self.version(make), contact=contact, task_queue=self.task_queue
        )

    async def mailed(self, contact: dict[str, str]) -> tuple[str, EmailMessage]:
        """A run that mailed ``contact`` and now waits, and the email it sent."""
        run_id = await self.start(contact, mail_then_wait)
        address = contact["email"]
        found = await eventually(
            lambda: _messages(self.smtp, address), lambda messages: bool(messages)
        )
        assert found, f"no email reached {address}"
        return run_id, found[0]

    async def inbound(self, message: EmailMessage | bytes) -> dict[str, Any]:
        raw = message if isinstance(message, bytes) else message.as_bytes()
        answer = await self.server.http.post(
            f"/webhooks/inbound/raw?key={INBOUND}",
            content=raw,
            headers={"content-type": "message/rfc822"},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


async def _messages(smtp: SmtpServer, address: str) -> list[EmailMessage]:
    return [r.message for r in smtp.handler.messages if str(r.message["To"]) == address]


async def eventually(
    read: Callable[[], Awaitable[_T]], holds: Callable[[_T], bool], *, timeout: float = 20
) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if holds(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def new_contact() -> dict[str, str]:
    name = f"c-{uuid.uuid4().hex[:8]}"
    return {"email": f"{name}@example.com", "firstName": "Ana", "phone": "+15557654321"}


async def outcome(env: WorkflowEnvironment, run_id: str) -> str:
    return (await run_result(env, run_id, timeout=30)).outcome


async def events_of(client: Client, run_id: str) -> list[RunEvent]:
    return list((await run_state(client, run_id)).events)


async def running(client: Client, run_id: str) -> bool:
    described = await client.get_workflow_handle(run_id).describe()
    return described.status == WorkflowExecutionStatus.RUNNING


@pytest_asyncio.fixture
async def stack(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        secret_key=SECRET,
        task_queue=task_queue,
        api_keys=(KEY,),
        inbound_secret=INBOUND,
        sendgrid_webhook_public_key=PUBLIC_KEY,
    )
    with twilio_api() as twilio:
        async with running_server(settings, client=dev_env.client) as server:
            worker_settings = dataclasses.replace(
                settings,
                smtp_url=smtp.url,
                from_address="sales@example.com",
                public_url=server.url,
                twilio_account_sid=twilio.account_sid,
                twilio_auth_token=twilio.auth_token,
                twilio_api_url=twilio.url,
            )
            with (
                PlanRegistry(database) as registry,
                SendLedger(database) as ledger,
                Suppressions(database) as suppressions,
            ):
                async with running_worker(
                    dev_env.client, task_queue=task_queue, settings=worker_settings, ledger=ledger
                ):
                    yield Stack(dev_env, server, smtp, registry, suppressions, task_queue)


def mailto_subject(sent: EmailMessage) -> str:
    """The subject the ``mailto:`` of ``List-Unsubscribe`` asks the client to send."""
    mailto = str(sent["List-Unsubscribe"]).split(",")[1].strip().strip("<>")
    assert mailto.startswith("mailto:sales@example.com?subject="), mailto
    return unquote(mailto.split("?subject=", 1)[1])


def mail(*, to: str, sender: str, subject: str, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@client.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("please stop")
    return message


# -- the mailto: of List-Unsubscribe ------------------------------------------------------------


async def test_the_unsubscribe_mail_suppresses_and_ends_the_contacts_runs(stack: Stack) -> None:
    contact = new_contact()
    address = contact["email"]
    other = await stack.start(contact, waiting_plan)
    run_id, sent = await stack.mailed(contact)
    subject = mailto_subject(sent)
    verb, token = subject.split(" ")
    assert verb == "unsubscribe"

    # Forged: the token altered to name another address, or its signature changed. Matched
    # like any mail (it answers nothing), they unsubscribe nobody.
    forged = [
        tampered(token, e="bob@example.com"),
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
    ]
    answers = [
        await stack.inbound(
            mail(to="sales@example.com", sender=address, subject=f"unsubscribe {bad}")
        )
        for bad in forged
    ]
    assert [answer["status"] for answer in answers] == ["unmatched", "unmatched"]

    # The genuine one, as a client may send it: another case, more spaces, a "Re:".
    genuine = mail(
        to="sales@example.com",
        sender="someone-else@example.net",
        subject=f"Re:  UNSUBSCRIBE  {token}",
    )
    answer = await stack.inbound(genuine)
    assert (answer["status"], answer["run_id"]) == (
        "unsubscribe",
        run_id,
    )
    assert answer["delivery"] == "signalled"
    assert await outcome(stack.env, run_id) == "unsubscribed"
    assert await outcome(stack.env, other) == "unsubscribed"
    found = stack.suppressions.suppression(address)
    assert found is not None
    assert (found.reason, found.source, found.run_id) == ("unsubscribe", "mailto", run_id)
    # The token's address, never the mail's From; and nothing from the forged ones.
    assert not stack.suppressions.is_suppressed("someone-else@example.net")
    assert not stack.suppressions.is_suppressed("bob@example.com")
    # Delivered again: the same answer, nothing new.
    again = await stack.inbound(genuine)
    assert again["status"] == "duplicate"


# -- SendGrid -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        # The recipient unsubscribed through SendGrid's own link, from everything or a group.
        ("unsubscribe", "unsubscribe"),
        ("group_unsubscribe", "unsubscribe"),
        # A spam report is the strongest way to say stop.
        ("spamreport", "spamreport"),
    ],
)
async def test_sendgrid_unsubscribes_and_spam_reports_end_the_contacts_runs(
    stack: Stack, event: str, reason: str
) -> None:
    contact = new_contact()
    other = await stack.start(contact, waiting_plan)
    run_id, sent = await stack.mailed(contact)
    body = json.dumps(
        [
            {
                "email": contact["email"].upper(),
                "event": event,
                "sg_event_id": f"{event}-{run_id}",
                "smtp-id": str(sent["Message-ID"]),
                "timestamp": int(time.time()),
            }
        ]
    ).encode()
    answer = await stack.server.http.post(
        "/webhooks/sendgrid/events", content=body, headers=sign(body)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["suppressed"] == 1
    # The run whose email was reported as spam gets the complaint and the unsubscribe the
    # server makes of it, in either order: it ends as whichever it took first (exitOn's
    # default has both); every other run of the contact as an unsubscribe.
    expected = {"complained", "unsubscribed"} if event == "spamreport" else {"unsubscribed"}
    assert await outcome(stack.env, run_id) in expected
    assert await outcome(stack.env, other) == "unsubscribed"
    found = stack.suppressions.suppression(contact["email"])
    assert found is not None and (found.reason, found.source) == (reason, "sendgrid")


async def test_a_sendgrid_hard_bounce_suppresses_and_the_run_goes_on(stack: Stack) -> None:
    contact = new_contact()
    run_id, sent = await stack.mailed(contact)
    body = json.dumps(
        [
            {
                "email": contact["email"],
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "sg_event_id": f"b-{run_id}",
                "smtp-id": str(sent["Message-ID"]),
                "timestamp": int(time.time()),
            }
        ]
    ).encode()
    answer = await stack.server.http.post(
        "/webhooks/sendgrid/events", content=body, headers=sign(body)
    )
    assert answer.status_code == 200, answer.text
    got = await eventually(
        lambda: events_of(stack.client, run_id),
        lambda found: any(e.type == "bounce" for e in found),
    )
    assert [e.type for e in got] == ["bounce"]
    found = stack.suppressions.suppression(contact["email"])
    assert found is not None and (found.reason, found.source) == ("bounce", "sendgrid")
    # The bounce reached the run for its branches; it is no unsubscribe.
    assert await running(stack.client, run_id)


# -- bounces mailed back (RFC 3464) --------------------------------------------------------------


def dsn(sent: EmailMessage, *, recipient: str, status: str, action: str = "failed") -> bytes:
    """A delivery status notification as Postfix writes one, returning ``sent``'s headers."""
    returned = "".join(
        f"{name}: {value}\r\n" for name, value in sent.items() if name != "List-Unsubscribe"
    )
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        "To: sales@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mx.example.com>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n"
        "--B\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Diagnostic-Code: smtp; 550 user unknown\r\n"
        "\r\n"
        "--B\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{returned}"
        "--B--\r\n"
    ).encode()


async def test_a_hard_bounce_mailed_back_is_a_bounce_and_suppresses(stack: Stack) -> None:
    contact = new_contact()
    run_id, sent = await stack.mailed(contact)
    # Someone else's address in a DSN for this run's message suppresses nobody.
    forged = await stack.inbound(dsn(sent, recipient="victim@example.org", status="5.1.1"))
    assert forged["status"] == "bounce"
    answer = await stack.inbound(
        dsn(sent, recipient=f" <{contact['email'].upper()}>", status="5.1.1")
    )
    assert answer["status"] == "bounce"
    got = await eventually(
        lambda: events_of(stack.client, run_id),
        lambda found: len([e for e in found if e.type == "bounce"]) == 2,
    )
    bounces = [e for e in got if e.type == "bounce"]
    assert len(bounces) == 2
    assert bounces[1].step_id == "intro"
    assert bounces[1].details["bounceType"] == "hard"
    assert bounces[1].details["status"] == "5.1.1"
    assert bounces[1].details["matchedBy"] == "original-message"
    found = stack.suppressions.suppression(contact["email"])
    assert found is not None
    assert (found.reason, found.source, found.run_id) == ("bounce", "inbound-bounce", run_id)
    assert not stack.suppressions.is_suppressed("victim@example.org")
    # A bounce is not an auto-reply, and not an unsubscribe.
    assert not any(e.type in {"auto-reply", "reply"} for e in got)
    assert await running(stack.client, run_id)


async def test_a_soft_bounce_mailed_back_is_a_bounce_and_suppresses_nothing(stack: Stack) -> None:
    contact = new_contact()
    run_id, sent = await stack.mailed(contact)
    answer = await stack.inbound(dsn(sent, recipient=contact["email"], status="4.2.2"))
    assert answer["status"] == "bounce"
    got = await eventually(
        lambda: events_of(stack.client, run_id),
        lambda found: any(e.type == "bounce" for e in found),
    )
    [bounce] = got
    assert (bounce.type, bounce.details["bounceType"], bounce.details["status"]) == (
        "bounce",
        "soft",
        "4.2.2",
    )
    assert not stack.suppressions.is_suppressed(contact["email"])
    # A delay warning is no bounce: it signals nothing, and is kept as unmatched.
    delayed = await stack.inbound(
        dsn(sent, recipient=contact["email"], status="4.4.1", action="delayed")
    )
    assert delayed["status"] == "unmatched"
    assert len(await events_of(stack.client, run_id)) == 1


# -- the API --------------------------------------------------------------------------------------


async def test_an_unsubscribe_event_through_the_api_suppresses_email_and_phone(
    stack: Stack,
) -> None:
    contact = new_contact()
    other = await stack.start(contact, waiting_plan)
    run_id, _sent = await stack.mailed(contact)
    answer = await stack.server.http.post(
        f"/v1/runs/{run_id}/events", json={"type": "unsubscribe"}, headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    assert await outcome(stack.env, run_id) == "unsubscribed"
    assert await outcome(stack.env, other) == "unsubscribed"
    for value in (contact["email"], contact["phone"]):
        found = stack.suppressions.suppression(value)
        assert found is not None and (found.reason, found.source) == ("unsubscribe", "api"), value


async def test_suppressing_by_hand_ends_runs_and_refuses_new_ones(stack: Stack) -> None:
    contact = new_contact()
    address = contact["email"]
    http = stack.server.http
    # Positive control: the contact can be started while nothing is suppressed.
    plan = stack.version()
    started = await http.post(
        "/v1/runs",
        json={"planId": plan.plan.id, "contact": contact, "variables": {}},
        headers=AUTH,
    )
    assert started.status_code == 201, started.text
    run_id = started.json()["runId"]

    added = await http.post(
        "/v1/suppressions", json={"value": f"  {address.upper()} "}, headers=AUTH
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert (body["address"], body["channel"], body["reason"], body["source"]) == (
        address,
        "email",
        "manual",
        "api",
    )
    assert body["runsEnded"] == [run_id]
    assert await outcome(stack.env, run_id) == "unsubscribed"
    again = await http.post("/v1/suppressions", json={"value": address}, headers=AUTH)
    assert (again.status_code, again.json()["created"]) == (200, False)

    refused = await http.post(
        "/v1/runs", json={"planId": plan.plan.id, "contact": contact}, headers=AUTH
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "contact-suppressed"
    assert address in refused.json()["message"]
    assert f"DELETE /v1/suppressions/{address}" in refused.json()["message"]

    listed = await http.get("/v1/suppressions", params={"channel": "email"}, headers=AUTH)
    assert [entry["address"] for entry in listed.json()] == [address]
    lifted = await http.delete(f"/v1/suppressions/{address}", headers=AUTH)
    assert lifted.status_code == 204
    assert (await http.delete(f"/v1/suppressions/{address}", headers=AUTH)).status_code == 404
    restarted = await http.post(
        "/v1/runs", json={"planId": plan.plan.id, "contact": contact}, headers=AUTH
    )
    assert restarted.status_code == 201, restarted.text


@pytest.mark.parametrize(
    ("value", "status", "address"),
    [
        # A phone number as people write it becomes E.164.
        ("+1 (555) 765-4321", 201, "+15557654321"),
        ("0044 20 7946 0958", 201, "+442079460958"),
        # No country code: not guessed.
        ("555 765 4321", 422, None),
        # A line break could start another header or another value: refused, never cleaned.
        ("ana@example.com\r\nBcc: all@example.com", 422, None),
        ("ana@exa mple.com", 422, None),
    ],
)
async def test_values_are_normalised_or_refused(
    stack: Stack, value: str, status: int, address: str | None
) -> None:
    answer = await stack.server.http.post("/v1/suppressions", json={"value": value}, headers=AUTH)
    assert answer.status_code == status, answer.text
    if address is None:
        assert answer.json()["code"] == "invalid-value"
        assert stack.suppressions.entries() == []
    else:
        assert (answer.json()["address"], answer.json()["channel"]) == (address, "phone")
        shown = await stack.server.http.get(f"/v1/suppressions/{value}", headers=AUTH)
        assert shown.json()["address"] == address


async def test_a_run_a_plain_temporal_client_started_is_found_by_its_contact(
    stack: Stack,
) -> None:
    contact = new_contact()
    version = stack.version(waiting_plan)
    run_input = RunInput(
        plan=version.plan, content=version.content, digest=version.digest, contact=contact
    )
    run_id = f"{version.plan.id}:{contact['email']}"
    # No search attributes: the workflow records its contact itself.
    await stack.client.start_workflow(
        WORKFLOW_NAME, run_input, id=run_id, task_queue=stack.task_queue
    )

    async def contact_id() -> str | None:
        described = await stack.client.get_workflow_handle(run_id).describe()
        return described.typed_search_attributes.get(CONTACT_ID_ATTRIBUTE)

    assert await eventually(contact_id, lambda found: found is not None) == contact["email"]

    async def listed() -> list[str]:
        query = (
            f"{CONTACT_ID_ATTRIBUTE.name} = '{contact['email']}' AND ExecutionStatus = 'Running'"
        )
        return [execution.id async for execution in stack.client.list_workflows(query)]

    assert await eventually(listed, lambda found: found == [run_id]) == [run_id]
    added = await stack.server.http.post(
        "/v1/suppressions", json={"value": contact["email"]}, headers=AUTH
    )
    assert added.status_code == 201, added.text
    assert added.json()["runsEnded"] == [run_id]
    assert await outcome(stack.env, run_id) == "unsubscribed"


async def test_a_contact_is_found_under_its_hashed_id_and_its_address(stack: Stack) -> None:
    contact = new_contact()
    address = contact["email"]
    # Through the API the contact gets the keyed hash of its address as its id...
    version = stack.version(waiting_plan)
    started = await stack.server.http.post(
        "/v1/runs", json={"planId": version.plan.id, "contact": contact}, headers=AUTH
    )
    assert started.status_code == 201, started.text
    hashed: str = started.json()["runId"]
    assert address not in hashed and hashed.startswith(f"{version.plan.id}:c-")
    # ...while a run from before (start_run without ContactIds) carries the address itself.
    legacy = await stack.start(contact, waiting_plan)
    assert legacy.endswith(f":{address}")

    async def found() -> set[str]:
        answer = await stack.server.http.get(
            "/v1/runs", params={"contact": address.upper()}, headers=AUTH
        )
        return {run["runId"] for run in answer.json() if run["status"] == "running"}

    assert await eventually(found, lambda runs: runs == {hashed, legacy}) == {hashed, legacy}
    added = await stack.server.http.post("/v1/suppressions", json={"value": address}, headers=AUTH)
    assert added.status_code == 201, added.text
    assert sorted(added.json()["runsEnded"]) == sorted([hashed, legacy])
    assert await outcome(stack.env, hashed) == await outcome(stack.env, legacy) == "unsubscribed"
