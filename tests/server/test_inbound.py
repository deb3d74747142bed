"""Inbound mail: parsing, auto-reply rules, matching and the store on SQLite and PostgreSQL,
and the webhooks end to end: the real app under uvicorn, a real worker on the Temporal dev
server, and the real SMTP server that received the email being answered."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import email.utils
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.runs.client import cancel_run, run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import RunState
from dee.runs.tracking import reply_address, reply_token
from dee.server.inbound_mail import (
    InboundError,
    InboundMail,
    auto_reply_reason,
    parse_message,
    parse_sendgrid_form,
)
from dee.server.inbound_match import Match, match_message
from dee.server.inbound_store import MAX_KEPT_BYTES, InboundStore
from dee.settings import Settings
from dee.storage.database import alembic_config, make_engine, resolve_url
from tests.helpers.db import drop_table
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import run_result, running_worker

SECRET = "test-secret-key"
INBOUND_SECRET = "inbound-secret"
KEY = "0123456789abcdef0123456789abcdef.intro-email"


def message(
    *,
    subject: str = "Re: Introducing DEE",
    in_reply_to: str | None = None,
    references: str | None = None,
    to: str = "sales@example.com",
    headers: dict[str, str] | None = None,
    body: str = "Sounds good, let's talk.",
) -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = "Ana <ana@example.org>"
    reply["To"] = to
    reply["Subject"] = subject
    reply["Message-ID"] = email.utils.make_msgid(domain="example.org")
    if in_reply_to is not None:
        reply["In-Reply-To"] = in_reply_to
    if references is not None:
        reply["References"] = references
    for name, value in (headers or {}).items():
        reply[name] = value
    reply.set_content(body)
    return reply


def headers_only(text: str) -> Message:
    return email.message_from_string(text + "\n\n", policy=email.policy.compat32)


# -- automatic replies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # RFC 3834: anything but "no" is automatic, parameters ignored.
        ("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied"),
        (
            "Auto-Submitted: Auto-Generated; owner-email=x@example.org",
            "Auto-Submitted: auto-generated",
        ),
        ("Auto-Submitted: no", None),
        # The vendors' own headers.
        ("X-Autoreply: yes", "X-Autoreply"),
        ("X-Autorespond: Out of office", "X-Autorespond"),
        ("X-Autoreply: no", None),
        ("Precedence: bulk", "Precedence: bulk"),
        ("Precedence: auto_reply", "Precedence: auto_reply"),
        ("Precedence: junk", "Precedence: junk"),
        ("Precedence: list", None),
        # Null sender and delivery reports.
        ("Return-Path: <>", "Return-Path: <>"),
        ("Content-Type: multipart/report; report-type=delivery-status", "multipart/report"),
        # Outlook puts it on mail people write: not a sign.
        ("X-Auto-Response-Suppress: All", None),
        # Subjects, from the start only.
        ("Subject: Out of Office: Introducing DEE", "subject"),
        ("Subject: Automatic reply: Introducing DEE", "subject"),
        ("Subject: Auto: Introducing DEE", "subject"),
        ("Subject: Abwesenheitsnotiz: Introducing DEE", "subject"),
        ("Subject: =?utf-8?q?R=C3=A9ponse_automatique_:_Introducing_DEE?=", "subject"),
        ("Subject: Respuesta automática: Introducing DEE", "subject"),
        ("Subject: Autosvar: Introducing DEE", "subject"),
        ("Subject: Re: Introducing DEE", None),
        ("Subject: Re: out of office next week?", None),
        ("Subject: Automation ideas", None),
    ],
)
def test_auto_reply_rules(headers: str, expected: str | None) -> None:
    assert auto_reply_reason(headers_only(f"From: a@example.org\n{headers}")) == expected


# -- parsing --------------------------------------------------------------------------------


def test_parents_are_newest_first_and_recipients_gathered() -> None:
    raw = (
        b"From: Ana <ana@Example.ORG>\r\n"
        b"To: sales@example.com, Bo <bo+tag@example.com>\r\n"
        b"Cc: c@example.net\r\n"
        b"Delivered-To: replies+x.y@reply.example.com\r\n"
        b"Message-ID: <own@example.org>\r\n"
        b"In-Reply-To: <c@x>\r\n"
        b"References: <a@x> <b@x>\r\n <c@x>\r\n"
        b"Subject: =?utf-8?q?Re=3A_caf=C3=A9?=\r\n"
        b"\r\n"
        b"Hello\r\n"
    )
    mail = parse_message(raw, envelope_recipients=["env@reply.example.com"])
    assert mail.message_id == "own@example.org"
    assert mail.parents == ("c@x", "b@x", "a@x")
    assert mail.in_reply_to == ("c@x",)
    assert mail.recipients == (
        "sales@example.com",
        "bo+tag@example.com",
        "c@example.net",
        "replies+x.y@reply.example.com",
        "env@reply.example.com",
    )
    assert mail.from_domain == "example.org"
    assert mail.subject == "Re: café"
    assert mail.auto_reason is None
    assert mail.event_id == "inbound:own@example.org"


def test_event_ids_without_or_with_long_message_ids() -> None:
    bare = parse_message(b"From: a@example.org\r\n\r\nhi\r\n")
    assert bare.message_id is None
    assert bare.event_id.startswith("inbound:raw-sha256:")
    assert parse_message(b"From: a@example.org\r\n\r\nhi\r\n").event_id == bare.event_id
    long = parse_message(b"From: a@example.org\r\nMessage-ID: <" + b"x" * 300 + b"@y>\r\n\r\n")
    assert long.event_id.startswith("inbound:sha256:") and len(long.event_id) <= 200


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        # Nothing at all.
        (b"", "the message is empty"),
        (b" \r\n", "the message is empty"),
        # Text without a header section.
        (b"hello there\r\nhow are you", "it has no header fields"),
        (b"\x00\x01\x02\xff", "it has no header fields"),
        # Headers, but nobody sent it; JSON reads as a header named '{"json"'.
        (b"Subject: hi\r\n\r\nbody", "the message has no From header"),
        (b'{"json": true}', "the message has no From header"),
    ],
)
def test_malformed_messages(raw: bytes, error: str) -> None:
    with pytest.raises(InboundError, match=error):
        parse_message(raw)


def form(fields: dict[str, bytes]) -> tuple[str, bytes]:
    """A multipart/form-data body as httpx encodes it, with its content type."""
    request = httpx.Request(
        "POST", "http://x/", files={name: (None, value) for name, value in fields.items()}
    )
    return request.headers["content-type"], request.read()


def test_sendgrid_form_raw_and_parsed() -> None:
    original = message(in_reply_to=f"<{KEY}@example.com>", body="Grüße, Ana")
    raw = original.as_bytes(policy=email.policy.SMTP.clone(cte_type="8bit"))
    content_type, body = form({"email": raw, "to": b"sales@example.com"})
    parsed = parse_sendgrid_form(content_type, body)
    # The exact bytes, 8-bit body and all.
    assert parsed.raw == raw
    assert parsed.parents == (f"{KEY}@example.com",)

    header_block = raw.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n")
    content_type, body = form(
        {
            "headers": header_block,
            "text": "Grüße, Ana".encode(),
            "envelope": b'{"to": ["replies+t.s@reply.example.com"], "from": "ana@example.org"}',
        }
    )
    parsed = parse_sendgrid_form(content_type, body)
    assert parsed.parents == (f"{KEY}@example.com",)
    assert parsed.recipients[-1] == "replies+t.s@reply.example.com"
    assert parsed.raw.endswith("\r\n\r\nGrüße, Ana".encode())


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        # Not a form at all.
        ("application/json", b"{}", "expected a multipart/form-data body"),
        # A form without the message.
        (*form({"to": b"sales@example.com"}), "neither an 'email' nor a 'headers' field"),
        # A boundary that is never there.
        ("multipart/form-data; boundary=zzz", b"garbage", "no parts between its boundaries"),
    ],
)
def test_malformed_sendgrid_forms(content_type: str, body: bytes, error: str) -> None:
    with pytest.raises(InboundError, match=error):
        parse_sendgrid_form(content_type, body)


# -- matching and the store, on SQLite and PostgreSQL ---------------------------------------


@pytest.fixture
def ledger(database_url: str) -> Iterator[SendLedger]:
    with SendLedger(database_url) as opened:
        yield opened


@pytest.fixture
def store(database_url: str) -> Iterator[InboundStore]:
    with InboundStore(database_url) as opened:
        yield opened


def parsed(reply: EmailMessage) -> InboundMail:
    return parse_message(reply.as_bytes())


def test_matching_through_the_ledger(ledger: SendLedger) -> None:
    ledger.claim(KEY, run_id="plan:ana", step_id="intro-email", channel="email")
    other = "fedcba9876543210fedcba9876543210.call"
    ledger.claim(other, run_id="plan:ana", step_id="call", channel="voice")

    def match(reply: EmailMessage) -> Match | None:
        return match_message(parsed(reply), lookup=ledger.get, secret=SECRET)

    ours = f"<{KEY}@example.com>"
    assert match(message(in_reply_to=ours)) == Match("plan:ana", "intro-email", "in-reply-to")
    # A client that only keeps References; ids that are not ledger keys are skipped.
    assert match(message(references=f"<x@y> {ours} <z@example.org>")) == Match(
        "plan:ana", "intro-email", "references"
    )
    # Only emails are answered by mail; unknown keys and foreign ids match nothing.
    assert match(message(in_reply_to=f"<{other}@example.com>")) is None
    assert match(message(in_reply_to=f"<{'0' * 32}@example.com>")) is None
    assert match(message(in_reply_to="<CAF=abc@mail.gmail.com>")) is None


def test_matching_through_a_signed_reply_address(ledger: SendLedger) -> None:
    address = reply_address(
        "replies@reply.example.com", secret=SECRET, run_id="plan:ana", step_id="intro", visit=2
    )
    local, _, domain = address.partition("@")
    assert local.startswith("replies+") and domain == "reply.example.com"

    def match(to: str, secret: str | None = SECRET) -> Match | None:
        return match_message(parsed(message(to=to)), lookup=ledger.get, secret=secret)

    assert match(f"Sales <{address}>") == Match("plan:ana", "intro", "reply-address")
    # Forged, altered, case-folded by an MTA, or without the key to check it: no match.
    forged = reply_token(secret="other", run_id="plan:ana", step_id="intro", visit=2)
    assert match(f"replies+{forged}@reply.example.com") is None
    assert match(address.lower()) is None
    assert match(address.replace(".", "x", 1)) is None
    assert match(address, secret=None) is None


def test_store_keeps_rows_and_raw_only_for_unmatched(store: InboundStore) -> None:
    reply = parsed(message(in_reply_to=f"<{KEY}@example.com>"))
    record, created = store.record(
        reply,
        source="raw",
        kind="reply",
        match=Match("plan:ana", "intro-email", "in-reply-to"),
        delivery="signalled",
    )
    assert created
    assert (record.kind, record.run_id, record.step_id, record.matched_by) == (
        "reply",
        "plan:ana",
        "intro-email",
        "in-reply-to",
    )
    assert (record.from_domain, record.subject, record.size) == (
        "example.org",
        "Re: Introducing DEE",
        len(reply.raw),
    )
    assert not record.raw_kept and store.raw(record.id) is None
    assert record.received_at.tzinfo is not None
    assert store.find(reply.event_id) == record

    # The same message again: the first row stands.
    again, created = store.record(
        reply, source="raw", kind="unmatched", match=None, delivery="none"
    )
    assert not created and again == record

    stray = parsed(message(in_reply_to="<nobody@example.net>"))
    kept, _ = store.record(stray, source="raw", kind="unmatched", match=None, delivery="none")
    assert kept.raw_kept and not kept.raw_truncated
    assert store.raw(kept.id) == stray.raw

    huge = parsed(message(body="x" * (MAX_KEPT_BYTES + 10_000)))
    cut, _ = store.record(huge, source="raw", kind="unmatched", match=None, delivery="none")
    assert cut.raw_truncated and cut.size == len(huge.raw)
    assert store.raw(cut.id) == huge.raw[:MAX_KEPT_BYTES]

    assert [row.id for row in store.unmatched()] == [cut.id, kept.id]
    assert [row.id for row in store.unmatched(limit=1)] == [cut.id]
    assert store.get(kept.id) == kept and store.get(10_000) is None


def test_store_records_provider_events_once(store: InboundStore) -> None:
    assert not store.seen_event("sendgrid:abc")
    assert store.record_event("sendgrid:abc", provider="sendgrid", type="bounce", run_id="r")
    assert store.seen_event("sendgrid:abc")
    assert not store.record_event("sendgrid:abc", provider="sendgrid", type="bounce")


def test_migration_0004_goes_both_ways(database_url: str) -> None:
    InboundStore(database_url).close()
    revision = ScriptDirectory.from_config(alembic_config()).get_revision("0004")
    assert revision is not None and revision.down_revision == "0003"
    engine = make_engine(resolve_url(database_url))
    tables = {"inbound_messages", "provider_events"}
    try:
        assert tables <= set(inspect(engine).get_table_names())
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0003")
        assert not tables & set(inspect(engine).get_table_names())
        assert "suppressions" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    with InboundStore(database_url) as store:
        assert store.record_event("sendgrid:a", provider="sendgrid", type="open")


def test_database_failure_is_an_inbound_error(store: InboundStore, database_url: str) -> None:
    drop_table(database_url, "inbound_messages")
    with pytest.raises(InboundError, match="the inbound message store .* failed"):
        store.unmatched()


# -- the webhooks, end to end ---------------------------------------------------------------


def reply_plan(plan_id: str, *, wait_seconds: int) -> ExecutionPlan:
    """Email, a short wait, then replied or no-response."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Reply test",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "intro-email",
                    "templateId": "intro",
                    "subject": "Introducing {{ product }}",
                },
                {"type": "wait", "id": "wait-for-reply", "duration": {"seconds": wait_seconds}},
                {
                    "type": "branch",
                    "id": "check-response",
                    "conditions": [
                        {"when": 'events.hasReply("intro-email")', "goto": "end-replied"},
                        {"when": "default", "goto": "end-silent"},
                    ],
                },
                {"type": "end", "id": "end-replied", "outcome": "replied"},
                {"type": "end", "id": "end-silent", "outcome": "no-response"},
            ],
            "transitions": "linear",
        }
    )


CONTENT = PlanContent(templates={"intro": EmailTemplate(html="<p>Hi {{ contact.firstName }}</p>")})


@dataclass
class Stack:
    env: WorkflowEnvironment
    server: RunningServer
    registry: PlanRegistry
    smtp: SmtpServer
    task_queue: str
    database: str

    @property
    def http(self) -> httpx.AsyncClient:
        return self.server.http

    async def start(self, *, wait_seconds: int = 3) -> tuple[str, EmailMessage]:
        """Start a run; returns its id and the email it sent, as received."""
        version = self.registry.create(
            reply_plan(f"inbound-{uuid.uuid4().hex[:8]}", wait_seconds=wait_seconds), CONTENT
        )
        before = len(self.smtp.handler.messages)
        run_id = await start_run(
            self.env.client,
            version,
            contact={"email": "ana@example.org", "firstName": "Ana"},
            variables={"product": "DEE"},
            task_queue=self.task_queue,
        )
        deadline = time.monotonic() + 15
        while len(self.smtp.handler.messages) <= before:
            assert time.monotonic() < deadline, "the run sent no email"
            await asyncio.sleep(0.05)
        return run_id, self.smtp.handler.messages[before].message

    async def post_raw(self, raw: bytes, *, key: str | None = INBOUND_SECRET) -> httpx.Response:
        return await self.http.post(
            "/webhooks/inbound/raw",
            params={"key": key} if key is not None else {},
            content=raw,
            headers={"content-type": "message/rfc822"},
        )


@pytest_asyncio.fixture
async def stack(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        smtp_url=smtp.url,
        secret_key=SECRET,
        from_address="sales@example.com",
        task_queue=task_queue,
        inbound_secret=INBOUND_SECRET,
    )
    with PlanRegistry(database) as registry, SendLedger(database) as ledger:
        async with (
            running_worker(dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger),
            running_server(settings, client=dev_env.client, registry=registry) as server,
        ):
            yield Stack(dev_env, server, registry, smtp, task_queue, database)


def answering(received: EmailMessage, *, body: str | None = None, **options: str) -> EmailMessage:
    """A reply to ``received`` as a mail client writes one."""
    return message(
        subject=options.pop("subject", f"Re: {received['Subject']}"),
        in_reply_to=str(received["Message-ID"]),
        references=str(received["Message-ID"]),
        to=str(received["From"]),
        headers=options,
        **({} if body is None else {"body": body}),
    )


async def signals(client: Client, run_id: str) -> int:
    """How many signals the run's history holds: what the webhook actually sent."""
    count = 0
    async for event in client.get_workflow_handle(run_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            count += 1
    return count


async def test_a_reply_ends_the_run_replied_and_counts_once(stack: Stack) -> None:
    run_id, sent = await stack.start()
    reply = answering(sent)
    first = await stack.post_raw(reply.as_bytes())
    assert first.status_code == 200, first.text
    answer = first.json()
    assert (answer["status"], answer["run_id"], answer["step_id"], answer["delivery"]) == (
        "reply",
        run_id,
        "intro-email",
        "signalled",
    )
    # The provider retries: acknowledged, not signalled again.
    second = await stack.post_raw(reply.as_bytes())
    assert second.status_code == 200
    assert (second.json()["status"], second.json()["inbound_id"]) == (
        "duplicate",
        answer["inbound_id"],
    )

    result = await run_result(stack.env, run_id)
    assert (result.outcome, result.step_id) == ("replied", "end-replied")
    state = await run_state(stack.env.client, run_id)
    [event] = state.events
    reply_id = str(reply["Message-ID"]).strip("<>")
    assert (event.type, event.step_id, event.event_id) == (
        "reply",
        "intro-email",
        f"inbound:{reply_id}",
    )
    assert event.details == {"source": "raw", "matchedBy": "in-reply-to"}
    assert await signals(stack.env.client, run_id) == 1

    with InboundStore(stack.database) as store:
        record = store.find(f"inbound:{reply_id}")
    assert record is not None
    assert (record.kind, record.run_id, record.from_domain, record.raw_kept) == (
        "reply",
        run_id,
        "example.org",
        False,
    )


async def test_an_out_of_office_reply_does_not_end_the_sequence(stack: Stack) -> None:
    run_id, sent = await stack.start()
    back = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=10)
    notice = answering(
        sent,
        subject=f"Automatic reply: {sent['Subject']}",
        body=f"I am out of the office until {back:%B} {back.day}, {back.year}.",
        **{"Auto-Submitted": "auto-replied"},
    )
    response = await stack.post_raw(notice.as_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "auto-reply"

    result = await run_result(stack.env, run_id)
    assert result.outcome == "no-response"
    state = await run_state(stack.env.client, run_id)
    [event] = state.events
    assert (event.type, event.step_id) == ("auto-reply", "intro-email")
    assert event.details["autoReason"] == "Auto-Submitted: auto-replied"
    # The return date it names, for pauseOnAutoReply.
    assert event.details["returnDate"] == back.isoformat()


async def test_an_unmatched_message_is_kept_and_reported(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dee")
    stray = message(in_reply_to="<somewhere@else.example.net>", to="Sales <sales@example.com>")
    response = await stack.post_raw(stray.as_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["status"], answer["run_id"], answer["delivery"]) == ("unmatched", None, "none")

    with InboundStore(stack.database) as store:
        [kept] = store.unmatched()
        assert kept.id == answer["inbound_id"]
        assert store.raw(kept.id) == stray.as_bytes()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["inbound message matched no run"]
    # Domains at most, never addresses, in the logs.
    assert not any("ana@" in r.getMessage() or "sales@" in r.getMessage() for r in caplog.records)


async def test_sendgrid_inbound_parse_raw_parsed_and_plus_address(stack: Stack) -> None:
    run_id, sent = await stack.start(wait_seconds=4)
    sent_id = str(sent["Message-ID"])
    url = "/webhooks/inbound/sendgrid"
    params = {"key": INBOUND_SECRET}

    # "POST the raw, full MIME message": the message in field "email".
    raw_reply = answering(sent)
    response = await stack.http.post(
        url,
        params=params,
        files={"email": (None, raw_reply.as_bytes()), "to": (None, b"sales@example.com")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "reply"

    # Parsed: the header block in "headers", a client that keeps only References.
    parsed_reply = message(references=f"<other@example.org> {sent_id}")
    header_block = parsed_reply.as_bytes().split(b"\n\n")[0]
    response = await stack.http.post(
        url,
        params=params,
        files={"headers": (None, header_block), "text": (None, b"Yes please")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "reply"

    # No threading headers at all, but sent to a signed reply address.
    address = reply_address(
        "replies@reply.example.com", secret=SECRET, run_id=run_id, step_id="intro-email", visit=1
    )
    response = await stack.post_raw(message(to=address).as_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "reply"

    assert (await run_result(stack.env, run_id)).outcome == "replied"
    state: RunState = await run_state(stack.env.client, run_id)
    assert [(e.type, e.step_id, e.details) for e in state.events] == [
        ("reply", "intro-email", {"source": "sendgrid-parse", "matchedBy": "in-reply-to"}),
        ("reply", "intro-email", {"source": "sendgrid-parse", "matchedBy": "references"}),
        ("reply", "intro-email", {"source": "raw", "matchedBy": "reply-address"}),
    ]


async def test_a_reply_to_an_ended_run_is_acknowledged(stack: Stack) -> None:
    run_id, sent = await stack.start(wait_seconds=1)
    assert (await run_result(stack.env, run_id)).outcome == "no-response"
    response = await stack.post_raw(answering(sent).as_bytes())
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["delivery"]) == ("reply", "run-closed")


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        # No key in the URL.
        (None, 401, "missing-key"),
        (" ", 401, "missing-key"),
        # A wrong one.
        ("wrong", 403, "bad-key"),
        (INBOUND_SECRET + "x", 403, "bad-key"),
    ],
)
async def test_the_key_is_required(stack: Stack, key: str | None, status: int, code: str) -> None:
    run_id, sent = await stack.start(wait_seconds=30)
    reply = answering(sent).as_bytes()
    params = {"key": key.strip()} if key is not None else {}
    raw = await stack.post_raw(reply, key=key.strip() if key is not None else None)
    parse = await stack.http.post(
        "/webhooks/inbound/sendgrid", params=params, files={"email": (None, reply)}
    )
    for response in (raw, parse):
        assert (response.status_code, response.json()["code"]) == (status, code)
    # Nothing signalled, nothing kept.
    assert await signals(stack.env.client, run_id) == 0
    with InboundStore(stack.database) as store:
        assert store.find(f"inbound:{str(answering(sent)['Message-ID'])}") is None
        assert store.unmatched() == []
    await cancel_run(stack.env.client, run_id)


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        # Larger than the app takes, with or without a declared length.
        ("raw", b"From: a@example.org\r\n\r\n" + b"x" * (1024 * 1024), {}, 413, "body-too-large"),
        # Not a message.
        ("raw", b"", {}, 400, "bad-message"),
        ("raw", b"just some text", {}, 400, "bad-message"),
        ("raw", b"Subject: no sender\r\n\r\nhi", {}, 400, "bad-message"),
        # Not the raw message's media type.
        ("raw", b'{"a": 1}', {"content-type": "application/json"}, 415, "unsupported-media-type"),
        # A form that is no form, or lacks the message.
        ("sendgrid", b"email=x", {"content-type": "application/x-www-form-urlencoded"}, 400, None),
        ("sendgrid", *form({"to": b"sales@example.com"})[::-1], 400, None),
    ],
)
async def test_bad_bodies(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    path: str,
    content: bytes,
    headers: dict[str, str] | str,
    status: int,
    code: str | None,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'dee.db'}",
        secret_key=SECRET,
        inbound_secret=INBOUND_SECRET,
    )
    if isinstance(headers, str):
        headers = {"content-type": headers}
    headers = {"content-type": "message/rfc822", **headers}
    async with running_server(settings, client=dev_env.client) as server:
        response = await server.http.post(
            f"/webhooks/inbound/{path}",
            params={"key": INBOUND_SECRET},
            content=content,
            headers=headers,
        )
    assert response.status_code == status, response.text
    assert response.json()["code"] == (code or "bad-message")


async def test_a_chunked_body_over_the_limit_is_refused(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'dee.db'}", inbound_secret="k")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"From: a@example.org\r\n\r\n"
        for _ in range(20):
            yield b"x" * 65536

    async with running_server(settings, client=dev_env.client) as server:
        response = await server.http.post(
            "/webhooks/inbound/raw", params={"key": "k"}, content=chunks()
        )
    assert (response.status_code, response.json()["code"]) == (413, "body-too-large")


async def test_the_webhook_is_off_without_a_secret(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'dee.db'}")
    async with running_server(settings, client=dev_env.client) as server:
        response = await server.http.post(
            "/webhooks/inbound/raw", params={"key": ""}, content=message().as_bytes()
        )
    assert (response.status_code, response.json()["code"]) == (503, "not-configured")


async def test_a_database_failure_is_a_503_the_provider_retries(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(database_url=database, secret_key=SECRET, inbound_secret=INBOUND_SECRET)
    async with running_server(settings, client=dev_env.client) as server:

        async def deliver(message_id: str) -> httpx.Response:
            mail = message()
            mail.replace_header("Message-ID", message_id)
            return await server.http.post(
                "/webhooks/inbound/raw",
                params={"key": INBOUND_SECRET},
                content=mail.as_bytes(),
                headers={"content-type": "message/rfc822"},
            )

        # Positive control: the webhook takes a message while its database works.
        assert (await deliver("<first@example.org>")).status_code == 200
        drop_table(database, "inbound_messages")
        response = await deliver("<second@example.org>")
    # A 4xx would make the provider drop the reply for good; a 503 makes it try again.
    assert (response.status_code, response.json()["code"]) == (503, "storage-unavailable")
    assert response.headers["retry-after"] == "5"
    # The log names the route as declared (as the access log does), never the path.
    assert "request POST /webhooks/inbound/raw failed: " in caplog.text
