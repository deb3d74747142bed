"""``POST /v1/runs:bulk`` end to end: the real app under uvicorn, the Temporal dev server, the
real worker sending the runs' emails to a real SMTP server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dee.server._http import MAX_BODY_BYTES
from dee.server.bulk_api import MAX_BULK_BODY_BYTES, MAX_BULK_ROWS
from tests.helpers.server import RunningServer, server_with_worker
from tests.helpers.smtp import SmtpServer

KEY = "bulk-key"
PLAN_ID = "bulk-hello"
#: Email, then wait an hour: the runs stay active while the tests look at them.
PLAN: dict[str, Any] = {
    "id": PLAN_ID,
    "name": "Bulk hello",
    "metadata": {"createdBy": "tests@example.com"},
    "steps": [
        {"type": "sendEmail", "id": "hello", "templateId": "hello", "subject": "Hi"},
        {"type": "wait", "id": "pause", "duration": {"hours": 1}},
        {"type": "end", "id": "done", "outcome": "waited"},
    ],
    "transitions": "linear",
}
CONTENT = {"templates": {"hello": {"html": "<p>Hi {{ contact.firstName }}, {{ product }}</p>"}}}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, SmtpServer]]:
    folder = tmp_path_factory.mktemp("bulk")
    async with server_with_worker(dev_env.client, folder, api_key=KEY) as (up, smtp):
        created = await up.http.post("/v1/plans", json={"plan": PLAN, "content": CONTENT})
        assert created.status_code == 201, created.text
        yield up, smtp


def row(name: str, **contact: Any) -> dict[str, Any]:
    return {
        "contact": {"email": f"{name}@example.com", "firstName": name.title(), **contact},
        "variables": {"product": "DEE"},
    }


def hostile_rows(tag: str) -> list[Any]:
    """Three good rows among rows that must each be refused on their own."""
    deep: Any = "bottom"
    for _ in range(300):
        deep = {"next": deep}
    return [
        row(f"ana-{tag}"),
        row(f"bo-{tag}"),
        {"contact": {"email": f"cy-{tag}@example.com"}, "variables": {"product": "DEE"}},
        row(f"dee-{tag}", email=f"dee-{tag}@example.com\r\nBcc: all@evil.test"),
        row(f"eve-{tag}", history=deep),
        row(f"fay-{tag}", notes="x" * (MAX_BODY_BYTES + 1)),
        row(f"gus-{tag}"),  # suppressed by the test
        row(f"ana-{tag}"),  # row 1 again
        "not a row",
        row(f"hal-{tag}"),
    ]


EXPECTED = {
    1: ("started", None),
    2: ("started", None),
    3: ("invalid", "missing-variables"),
    4: ("invalid", "invalid-contact"),
    5: ("invalid", "invalid-run-input"),
    6: ("invalid", "run-input-too-large"),
    7: ("suppressed", "contact-suppressed"),
    8: ("duplicate", "duplicate-row"),
    9: ("invalid", "invalid-row"),
    10: ("started", None),
}


def outcomes(body: dict[str, Any]) -> dict[int, tuple[str, str | None]]:
    return {item["row"]: (item["status"], item.get("code")) for item in body["rows"]}


async def sent_to(smtp: SmtpServer, addresses: set[str], *, timeout: float = 30) -> list[str]:
    """The recipients of the messages for ``addresses``, once each has one (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        recipients = [
            to for message in smtp.handler.messages for to in message.rcpt_tos if to in addresses
        ]
        if set(recipients) == addresses or time.monotonic() > deadline:
            return sorted(recipients)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("body_format", ["json", "json-lines"])
async def test_each_row_is_answered_on_its_own_and_a_repeat_starts_nothing(
    api: tuple[RunningServer, SmtpServer], body_format: str
) -> None:
    up, smtp = api
    tag = uuid.uuid4().hex[:6]
    rows = hostile_rows(tag)
    added = await up.http.post("/v1/suppressions", json={"value": f"GUS-{tag}@example.com"})
    assert added.status_code == 201, added.text
    if body_format == "json":
        post: dict[str, Any] = {"json": rows}
        numbers = {number: number for number in EXPECTED}
    else:
        # A blank line between rows: rows are numbered by their lines.
        lines = [json.dumps(item) for item in rows]
        text = "\n".join([*lines[:2], "", *lines[2:]]) + "\n"
        post = {"content": text.encode(), "headers": NDJSON}
        numbers = {number: number + (number > 2) for number in EXPECTED}
    # Over the other routes' body limit, within the bulk route's.
    assert MAX_BODY_BYTES < len(json.dumps(rows)) < MAX_BULK_BODY_BYTES

    answer = await up.http.post("/v1/runs:bulk", params={"planId": PLAN_ID}, **post)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert outcomes(body) == {numbers[n]: outcome for n, outcome in EXPECTED.items()}
    assert body["summary"] == {
        "total": 10,
        "started": 3,
        "alreadyRunning": 0,
        "alreadyEnded": 0,
        "duplicate": 1,
        "suppressed": 1,
        "invalid": 5,
        "failed": 0,
    }
    reasons = " ".join(item.get("reason") or "" for item in body["rows"])
    assert "example.com" not in reasons and "evil" not in reasons
    started = [item["runId"] for item in body["rows"] if item["status"] == "started"]
    assert all(run_id.startswith(f"{PLAN_ID}:c-") for run_id in started)
    # The worker runs them: one email each to the started rows, none to the others.
    good = {f"{name}-{tag}@example.com" for name in ("ana", "bo", "hal")}
    everyone = good | {f"{name}-{tag}@example.com" for name in ("cy", "dee", "eve", "fay", "gus")}
    assert await sent_to(smtp, good) == sorted(good)
    assert await sent_to(smtp, everyone, timeout=0) == sorted(good)

    again = await up.http.post("/v1/runs:bulk", params={"planId": PLAN_ID}, **post)
    assert again.status_code == 200, again.text
    repeated = again.json()
    assert repeated["summary"]["started"] == 0
    assert repeated["summary"]["alreadyRunning"] == 3
    assert sorted(
        item["runId"] for item in repeated["rows"] if item["status"] == "already-running"
    ) == sorted(started)
    await asyncio.sleep(0.5)
    assert await sent_to(smtp, everyone, timeout=0) == sorted(good)


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "message"),
    [
        # A line that is not JSON is named, and nothing starts.
        (
            b'{"contact": {"email": "a@example.com"}}\n\n{"contact": ',
            NDJSON,
            422,
            "invalid-body",
            "line 3 is not JSON: Expecting value (column 13)",
        ),
        (b'{"contact": {}}', {}, 422, "invalid-body", "expected a JSON array of rows"),
        (
            b"[1, 2",
            {},
            422,
            "invalid-body",
            "line 1 is not JSON: Expecting ',' delimiter (column 6)",
        ),
        (b"\xff[]", {}, 400, "bad-request", "the body is not UTF-8 text (byte 0)"),
        (
            b"email\na@example.com\n",
            {"Content-Type": "text/csv"},
            415,
            "unsupported-media-type",
            "send the rows as application/json (an array) or application/x-ndjson (a line each)",
        ),
    ],
)
async def test_bodies_that_are_not_rows_are_refused_whole(
    api: tuple[RunningServer, SmtpServer],
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    message: str,
) -> None:
    up, _ = api
    answer = await up.http.post(
        "/v1/runs:bulk",
        params={"planId": PLAN_ID},
        content=content,
        headers={"Content-Type": "application/json", **headers},
    )
    assert (answer.status_code, answer.json()) == (status, {"code": code, "message": message})


async def test_limits_and_unknown_plans(api: tuple[RunningServer, SmtpServer]) -> None:
    up, _ = api
    many = "\n".join('{"contact": {"id": "x"}}' for _ in range(MAX_BULK_ROWS + 1))
    answer = await up.http.post(
        "/v1/runs:bulk", params={"planId": PLAN_ID}, content=many.encode(), headers=NDJSON
    )
    assert answer.status_code == 422
    assert answer.json()["code"] == "too-many-rows"
    huge = b"[" + b" " * MAX_BULK_BODY_BYTES + b"]"
    answer = await up.http.post("/v1/runs:bulk", params={"planId": PLAN_ID}, content=huge)
    assert (answer.status_code, answer.json()["code"]) == (413, "body-too-large")
    answer = await up.http.post("/v1/runs:bulk", params={"planId": "no-such-plan"}, json=[])
    assert (answer.status_code, answer.json()["code"]) == (404, "plan-not-found")
    answer = await up.http.post("/v1/runs:bulk", params={"planId": PLAN_ID}, json=[])
    assert answer.status_code == 200
    assert answer.json() == {
        "summary": dict.fromkeys(
            [
                "total",
                "started",
                "alreadyRunning",
                "alreadyEnded",
                "duplicate",
                "suppressed",
                "invalid",
                "failed",
            ],
            0,
        ),
        "rows": [],
    }
    # Without a key, nothing.
    async with httpx.AsyncClient(base_url=up.url) as anonymous:
        answer = await anonymous.post("/v1/runs:bulk", params={"planId": PLAN_ID}, json=[])
    assert answer.status_code == 401
