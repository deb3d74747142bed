"""SendGrid's event webhook: signatures made with a real P-256 key the way SendGrid makes
them, events mapped to runs, and the webhook end to end against the real app, a real worker
on the Temporal dev server and the real SMTP server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.runs.client import cancel_run, run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import RunState
from dee.runs.suppressions import Suppressions
from dee.server.inbound_store import InboundStore
from dee.server.sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridError,
    SignatureError,
    load_public_key,
    parse_events,
    verify_signature,
)
from dee.settings import Settings
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import running_worker

PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
#: As SendGrid shows it: base64 of the DER SubjectPublicKeyInfo.
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def sign(
    body: bytes, *, at: float | None = None, key: ec.EllipticCurvePrivateKey = PRIVATE_KEY
) -> dict[str, str]:
    """The headers SendGrid sends: an ECDSA-SHA256 signature of timestamp + body."""
    timestamp = str(int(time.time() if at is None else at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: timestamp,
        "content-type": "application/json",
    }


def verify(headers: dict[str, str], body: bytes, *, now: datetime.datetime | None = None) -> None:
    verify_signature(
        load_public_key(PUBLIC_KEY),
        signature=headers.get(SIGNATURE_HEADER),
        timestamp=headers.get(TIMESTAMP_HEADER),
        body=body,
        now=now,
    )


# -- signatures -----------------------------------------------------------------------------

BODY = b'[{"email":"ana@example.org","event":"delivered","sg_event_id":"e1","timestamp":1}]'


def parts(headers: dict[str, str]) -> dict[str, Any]:
    return {"signature": headers[SIGNATURE_HEADER], "timestamp": headers[TIMESTAMP_HEADER]}


def test_a_sendgrid_signature_verifies() -> None:
    verify(sign(BODY), BODY)
    # The PEM form of the key works too.
    pem = PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_signature(load_public_key(pem.decode()), **parts(sign(BODY)), body=BODY)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        # No signature, or no timestamp.
        (
            lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b),
            "missing-signature",
        ),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != TIMESTAMP_HEADER}, b),
            "missing-signature",
        ),
        # One byte of the body changed.
        (lambda h, b: (h, b.replace(b"delivered", b"delivereD")), "bad-signature"),
        # Another timestamp than the one signed.
        (
            lambda h, b: ({**h, TIMESTAMP_HEADER: str(int(h[TIMESTAMP_HEADER]) + 1)}, b),
            "bad-signature",
        ),
        # Signed by another key.
        (lambda h, b: (sign(b, key=ec.generate_private_key(ec.SECP256R1())), b), "bad-signature"),
        # Not base64, or not a DER signature.
        (lambda h, b: ({**h, SIGNATURE_HEADER: "not base64!"}, b), "bad-signature"),
        (
            lambda h, b: ({**h, SIGNATURE_HEADER: base64.b64encode(b"x" * 70).decode()}, b),
            "bad-signature",
        ),
        # Genuine, but signed six minutes ago, or six minutes ahead.
        (lambda h, b: (sign(b, at=time.time() - 360), b), "stale-timestamp"),
        (lambda h, b: (sign(b, at=time.time() + 360), b), "stale-timestamp"),
    ],
)
def test_bad_signatures(change: Any, code: str) -> None:
    headers, body = change(sign(BODY), BODY)
    with pytest.raises(SignatureError) as raised:
        verify(headers, body)
    assert raised.value.code == code


def test_four_minutes_old_is_fresh_enough() -> None:
    verify(sign(BODY, at=time.time() - 240), BODY)


@pytest.mark.parametrize(
    "key",
    [
        # Not base64 DER at all.
        "not a key",
        # A key, but not ECDSA P-256.
        base64.b64encode(
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode(),
        base64.b64encode(
            ec.generate_private_key(ec.SECP384R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode(),
    ],
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(SendGridError, match="DEE_SENDGRID_WEBHOOK_PUBLIC_KEY is not"):
        load_public_key(key)


# -- events ---------------------------------------------------------------------------------


def test_events_map_to_dee_types_and_keys() -> None:
    body = json.dumps(
        [
            {
                "email": "ana@example.org",
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "reason": "550 5.1.1 <ana@example.org>: no such user",
                "sg_event_id": "b1",
                "smtp-id": "<0123456789abcdef0123456789abcdef.intro@example.com>",
                "timestamp": 1700000000,
            },
            {"event": "bounce", "type": "blocked", "sg_event_id": "b2", "email": "x@y.z"},
            {"event": "spamreport", "sg_event_id": "s1", "email": "x@y.z"},
            {"event": "group_unsubscribe", "sg_event_id": "u1", "smtp-id": "<CA+x@gmail.com>"},
            {"event": "processed", "sg_event_id": "p1"},
        ]
    ).encode()
    bounce, blocked, spam, unsubscribe, processed = parse_events(body)
    assert (bounce.type, bounce.event_id, bounce.suppression) == ("bounce", "sendgrid:b1", "bounce")
    assert bounce.keys == ("0123456789abcdef0123456789abcdef.intro",)
    assert bounce.at == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    # No address and no free-text reason in the run's history.
    assert bounce.details() == {
        "source": "sendgrid",
        "sendgridEvent": "bounce",
        "bounceType": "bounce",
        "status": "5.1.1",
    }
    assert (blocked.type, blocked.suppression) == ("bounce", None)
    assert (spam.type, spam.suppression) == ("spamreport", "spamreport")
    assert (unsubscribe.type, unsubscribe.keys) == ("unsubscribe", ())
    assert (processed.type, processed.suppression) == (None, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # Not JSON, or JSON of another shape.
        (b"[{", "the body is not JSON"),
        (b'{"event": "open"}', "not a JSON array"),
        (b"[1]", "event 0 is not an object"),
        # Events without their type or id.
        (b'[{"sg_event_id": "a"}]', "event 0 lacks"),
        (b'[{"event": "open", "sg_event_id": "a"}, {"event": "open"}]', "event 1 lacks"),
        (b'[{"event": "open", "sg_event_id": ""}]', "event 0 lacks"),
    ],
)
def test_malformed_event_bodies(body: bytes, error: str) -> None:
    with pytest.raises(SendGridError, match=error):
        parse_events(body)


# -- the webhook, end to end ----------------------------------------------------------------

PLAN = {
    "name": "Bounce test",
    "metadata": {"createdBy": "tests"},
    # Runs that take every event, bounces included (a bounce ends a run by default).
    "exitOn": ["unsubscribe"],
    "steps": [
        {"type": "sendEmail", "id": "intro-email", "templateId": "intro", "subject": "Hello"},
        {"type": "wait", "id": "pause", "duration": {"minutes": 10}},
        {"type": "end", "id": "done", "outcome": "done"},
    ],
    "transitions": "linear",
}
CONTENT = PlanContent(templates={"intro": EmailTemplate(html="<p>Hi</p>")})


@dataclass
class Stack:
    env: WorkflowEnvironment
    server: RunningServer
    registry: PlanRegistry
    smtp: SmtpServer
    task_queue: str
    database: str

    async def start(self) -> tuple[str, EmailMessage]:
        plan = ExecutionPlan.model_validate({**PLAN, "id": f"sg-{uuid.uuid4().hex[:8]}"})
        version = self.registry.create(plan, CONTENT)
        run_id = await start_run(
            self.env.client,
            version,
            contact={"email": "ana@example.org"},
            task_queue=self.task_queue,
        )
        deadline = time.monotonic() + 15
        while not self.smtp.handler.messages:
            assert time.monotonic() < deadline, "the run sent no email"
            await asyncio.sleep(0.05)
        return run_id, self.smtp.handler.messages[-1].message

    async def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.server.http.post(
            "/webhooks/sendgrid/events", content=body, headers=headers
        )


@pytest_asyncio.fixture
async def stack(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        smtp_url=smtp.url,
        secret_key="test-secret",
        from_address="sales@example.com",
        task_queue=task_queue,
        sendgrid_webhook_public_key=PUBLIC_KEY,
    )
    with PlanRegistry(database) as registry, SendLedger(database) as ledger:
        async with (
            running_worker(dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger),
            running_server(settings, client=dev_env.client, registry=registry) as server,
        ):
            yield Stack(dev_env, server, registry, smtp, task_queue, database)


async def signals(client: Client, run_id: str) -> int:
    """How many signals the run's history holds: what the webhook actually sent."""
    count = 0
    async for event in client.get_workflow_handle(run_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            count += 1
    return count


async def state_with(client: Client, run_id: str, count: int) -> RunState:
    """The run's state once it holds ``count`` events (signals are not instant)."""
    deadline = time.monotonic() + 15
    while True:
        state = await run_state(client, run_id)
        if len(state.events) >= count or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


async def test_events_reach_the_run_and_bounces_suppress(stack: Stack) -> None:
    run_id, sent = await stack.start()
    smtp_id = str(sent["Message-ID"])
    now = int(time.time())
    events = [
        {
            "email": "ana@example.org",
            "event": "processed",
            "sg_event_id": "p-" + run_id,
            "smtp-id": smtp_id,
            "timestamp": now,
        },
        {
            "email": "ana@example.org",
            "event": "delivered",
            "sg_event_id": "d-" + run_id,
            "smtp-id": smtp_id,
            "timestamp": now,
        },
        {
            "email": "ana@example.org",
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "sg_event_id": "b-" + run_id,
            "smtp-id": smtp_id,
            "timestamp": now,
        },
        # A spam report also ends the contact's runs (tests/server/test_unsubscribe_paths.py);
        # this one is about a message DEE did not send, so this run goes on.
        {
            "email": "ben@example.org",
            "event": "spamreport",
            "sg_event_id": "s-" + run_id,
            "smtp-id": "<someone@else.example>",
            "timestamp": now,
        },
        {
            "email": "cy@example.org",
            "event": "bounce",
            "type": "blocked",
            "sg_event_id": "k-" + run_id,
            "smtp-id": smtp_id,
            "timestamp": now,
        },
        {
            "email": "dee@example.org",
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": "x-" + run_id,
            "smtp-id": "<someone@else.example>",
            "timestamp": now,
        },
    ]
    body = json.dumps(events).encode()
    response = await stack.post(body, sign(body))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 6,
        "signalled": 3,
        "duplicates": 0,
        "ignored": 1,
        "unmatched": 2,
        "closed": 0,
        "suppressed": 3,
    }

    state = await state_with(stack.env.client, run_id, 3)
    assert [(e.type, e.step_id, e.event_id) for e in state.events] == [
        ("delivered", "intro-email", f"sendgrid:d-{run_id}"),
        ("bounce", "intro-email", f"sendgrid:b-{run_id}"),
        ("bounce", "intro-email", f"sendgrid:k-{run_id}"),
    ]
    assert state.events[1].details == {
        "source": "sendgrid",
        "sendgridEvent": "bounce",
        "bounceType": "bounce",
        "status": "5.1.1",
    }
    assert state.events[1].at == datetime.datetime.fromtimestamp(now, datetime.UTC)
    with SendLedger(stack.database) as ledger:
        suppressions = Suppressions.sharing(ledger)
        ana = suppressions.suppression("ANA@example.org")
        ben = suppressions.suppression("ben@example.org")
        assert ana is not None and (ana.reason, ana.run_id) == ("bounce", run_id)
        assert ben is not None and (ben.reason, ben.run_id) == ("spamreport", None)
        assert (ana.source, ben.source) == ("sendgrid", "sendgrid")
        # A blocked message says nothing about the address; one DEE did not send still bounced.
        assert not suppressions.is_suppressed("cy@example.org")
        assert suppressions.is_suppressed("dee@example.org")
    assert await signals(stack.env.client, run_id) == 3

    # SendGrid retries the batch (signed anew): acknowledged, nothing signalled again.
    again = await stack.post(body, sign(body))
    assert again.status_code == 200
    assert again.json() == {
        "received": 6,
        "signalled": 0,
        "duplicates": 6,
        "ignored": 0,
        "unmatched": 0,
        "closed": 0,
        "suppressed": 0,
    }
    assert await signals(stack.env.client, run_id) == 3
    with InboundStore(stack.database) as store:
        assert store.seen_event(f"sendgrid:p-{run_id}")

    await cancel_run(stack.env.client, run_id)


async def test_unsigned_altered_stale_and_malformed_posts_are_refused(stack: Stack) -> None:
    run_id, sent = await stack.start()
    event = {
        "email": "ana@example.org",
        "event": "bounce",
        "sg_event_id": "b-" + run_id,
        "smtp-id": str(sent["Message-ID"]),
    }
    body = json.dumps([event]).encode()
    headers = sign(body)
    cases = [
        # No signature headers at all.
        (body, {"content-type": "application/json"}, 403, "missing-signature"),
        # The body changed after signing: a different event id.
        (body.replace(b'"b-', b'"c-'), headers, 403, "bad-signature"),
        # Signed with another key.
        (body, sign(body, key=ec.generate_private_key(ec.SECP256R1())), 403, "bad-signature"),
        # A genuine request captured and replayed ten minutes later.
        (body, sign(body, at=time.time() - 600), 403, "stale-timestamp"),
        # Signed, but not SendGrid's shape.
        (b'{"event": "bounce"}', sign(b'{"event": "bounce"}'), 400, "bad-events"),
        (b"not json", sign(b"not json"), 400, "bad-events"),
        # Signed, but nested 100,000 levels deep: refused, not a 500.
        (b"[" * 100_000 + b"]" * 100_000, sign(b"[" * 100_000 + b"]" * 100_000), 400, "bad-events"),
    ]
    for content, case_headers, status, code in cases:
        response = await stack.post(content, case_headers)
        assert (response.status_code, response.json()["code"]) == (status, code), content
    # Nothing reached the run, nobody was suppressed, nothing was recorded.
    assert await signals(stack.env.client, run_id) == 0
    with SendLedger(stack.database) as ledger:
        assert not Suppressions.sharing(ledger).is_suppressed("ana@example.org")
    with InboundStore(stack.database) as store:
        assert not store.seen_event(f"sendgrid:b-{run_id}")
    await cancel_run(stack.env.client, run_id)


async def test_the_webhook_is_off_without_a_key(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'dee.db'}")
    async with running_server(settings, client=dev_env.client) as server:
        response = await server.http.post(
            "/webhooks/sendgrid/events", content=BODY, headers=sign(BODY)
        )
    assert (response.status_code, response.json()["code"]) == (503, "not-configured")
