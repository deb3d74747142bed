"""Pixels, click redirects and unsubscribes: the real app under uvicorn, the Temporal dev
server with DEE's real worker, and the emails it sends to a real SMTP server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.client import run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import CONTACT_ID_ATTRIBUTE, WORKFLOW_NAME, RunEvent
from dee.runs.tracking import click_url, open_pixel_url, sign_token, unsubscribe_url
from dee.server.hits import HitStore, SignalKind, SignalOutcome, SignalStatus
from dee.settings import Settings
from tests.helpers.plans import email_content, email_plan
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer, free_port
from tests.helpers.temporal import run_result, running_worker

_T = TypeVar("_T")

SECRET = "tracking-test-secret"
LINK = "https://example.com/pricing?plan=pro&x=1"
HTML = (
    "<html><body><p>Hi {{ contact.firstName }}</p>"
    '<p><a href="https://example.com/pricing?plan=pro&amp;x=1">Pricing</a></p></body></html>'
)
AGENT = "pytest-mail-client/1.0"


def tracked_plan(plan_id: str) -> ExecutionPlan:
    """A tracked email, then a long wait: the run is still there while the tests click."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Tracked",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "intro",
                    "templateId": "intro",
                    "subject": "Hello {{ contact.firstName }}",
                    "tracking": {"opens": True, "clicks": True},
                },
                {"type": "wait", "id": "pause", "duration": {"hours": 1}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


@dataclass
class Setup:
    env: WorkflowEnvironment
    server: RunningServer
    smtp: SmtpServer
    registry: PlanRegistry
    hits: HitStore
    task_queue: str

    @property
    def client(self) -> Client:
        return self.env.client

    def plan(self, make: Callable[[str], ExecutionPlan] = tracked_plan) -> PlanVersion:
        # Plan ids unique per test: the dev server, and so run ids, are shared.
        return self.registry.create(make(f"track-{uuid.uuid4().hex[:8]}"), email_content(HTML))

    async def start(self, version: PlanVersion, contact: dict[str, str]) -> str:
        return await start_run(self.client, version, contact=contact, task_queue=self.task_queue)


def new_contact() -> dict[str, str]:
    name = f"c-{uuid.uuid4().hex[:8]}"
    return {"id": name, "email": f"{name}@example.com", "firstName": "Ana"}


@pytest_asyncio.fixture
async def setup(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, tmp_path: Path
) -> AsyncIterator[Setup]:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(database_url=database, secret_key=SECRET, task_queue=task_queue)
    async with running_server(settings, client=dev_env.client) as server:
        # The worker's links point at the server, which exists only now.
        worker_settings = dataclasses.replace(
            settings, smtp_url=smtp.url, from_address="sales@example.com", public_url=server.url
        )
        with (
            PlanRegistry(database) as registry,
            SendLedger(database) as ledger,
            HitStore(database) as hits,
        ):
            async with running_worker(
                dev_env.client, task_queue=task_queue, settings=worker_settings, ledger=ledger
            ):
                yield Setup(dev_env, server, smtp, registry, hits, task_queue)


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'dee.db'}", secret_key=SECRET)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img" and values.get("src"):
            self.images.append(str(values["src"]))
        if tag == "a" and values.get("href"):
            self.hrefs.append(str(values["href"]))


async def the_email(smtp: SmtpServer, count: int = 1) -> tuple[str, str, str]:
    """The pixel URL, tracked link and unsubscribe URL of message number ``count``."""
    for _ in range(300):
        if len(smtp.handler.messages) >= count:
            break
        await asyncio.sleep(0.05)
    message = smtp.handler.messages[count - 1].message
    html_part = message.get_body(("html",))
    assert html_part is not None
    links = _Links()
    links.feed(html_part.get_content())
    [pixel] = links.images
    [link] = links.hrefs
    unsubscribe = str(message["List-Unsubscribe"]).split(",")[0].strip().strip("<>")
    return pixel, link, unsubscribe


async def eventually(
    read: Callable[[], Awaitable[_T]], holds: Callable[[_T], bool], *, timeout: float = 20
) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if holds(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def events(client: Client, run_id: str) -> list[RunEvent]:
    return list((await run_state(client, run_id)).events)


async def positive_control(setup: Setup, run_id: str, url: str, kind: str) -> list[RunEvent]:
    """Fetch ``url`` (a genuine tracked link of the run) and wait for its ``kind`` event.

    A hit signals in a background task after its answer, and uvicorn runs one connection's
    requests, background tasks included, one after another; the test's HTTP client sends
    them in turn on its kept-alive connection, and a run takes its signals in order. So once
    the control's event is in, a signal an earlier request sent would be in too: "nothing
    else arrived" is checked after something did, not after a sleep."""
    answer = await setup.server.http.get(path_of(url, setup.server))
    assert answer.status_code in {200, 302}
    found = await eventually(
        lambda: events(setup.client, run_id), lambda got: any(e.type == kind for e in got)
    )
    assert any(e.type == kind for e in found), f"the control {kind} never arrived"
    return found


async def signal_count(client: Client, run_id: str) -> int:
    history = client.get_workflow_handle(run_id).fetch_history_events()
    return len(
        [
            e
            async for e in history
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
    )


async def outcome(
    hits: HitStore, run_id: str, kind: SignalKind, *, execution: str | None = None
) -> SignalOutcome | None:
    """How the signal of the run's first email's ``kind`` ended, once the server says."""

    async def read() -> SignalStatus | None:
        return await asyncio.to_thread(
            hits.signal_status, run_id, step_id="intro", visit=1, kind=kind, execution=execution
        )

    status = await eventually(read, lambda found: found is not None and found.outcome is not None)
    return status.outcome if status is not None else None


def path_of(url: str, server: RunningServer) -> str:
    assert url.startswith(server.url + "/"), url
    return url.removeprefix(server.url)


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    encoded, _, signature = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    payload.update(changes)
    data = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode() + "." + signature


# -- opens and clicks -------------------------------------------------------------------------


async def test_fifty_pixel_fetches_make_fifty_hits_and_one_open(setup: Setup) -> None:
    run_id = await setup.start(setup.plan(), new_contact())
    pixel, link, _unsubscribe = await the_email(setup.smtp)
    http = setup.server.http

    answers = await asyncio.gather(
        *(http.get(path_of(pixel, setup.server), headers={"User-Agent": AGENT}) for _ in range(50))
    )
    assert {answer.status_code for answer in answers} == {200}
    first = answers[0]
    assert first.headers["content-type"] == "image/gif"
    assert first.content.startswith(b"GIF89a") and len(first.content) == 43
    assert "no-store" in first.headers["cache-control"]

    opened = await eventually(
        lambda: events(setup.client, run_id), lambda found: any(e.type == "open" for e in found)
    )
    [event] = opened
    # The event names the execution that sent the email, as the pixel's token does.
    execution = (await setup.client.get_workflow_handle(run_id).describe()).run_id
    assert (event.type, event.step_id, event.execution, event.event_id) == (
        "open",
        "intro",
        execution,
        f"open:{run_id}:intro:1:{execution}",
    )
    found = await positive_control(setup, run_id, link, "click")
    assert [e.type for e in found] == ["open", "click"]
    assert await signal_count(setup.client, run_id) == 2
    # The server recorded that the signal went out: no sweeper sends it again.
    assert await outcome(setup.hits, run_id, "open", execution=execution) == "signalled"

    hits = [hit for hit in setup.hits.hits(run_id) if hit.kind == "open"]
    assert len(hits) == 50
    assert {(hit.kind, hit.step_id, hit.visit, hit.user_agent) for hit in hits} == {
        ("open", "intro", 1, AGENT)
    }


async def test_a_click_redirects_to_the_signed_link_and_signals_once(setup: Setup) -> None:
    run_id = await setup.start(setup.plan(), new_contact())
    pixel, link, _unsubscribe = await the_email(setup.smtp)
    assert link.startswith(f"{setup.server.url}/t/c/")

    for _ in range(3):
        answer = await setup.server.http.get(path_of(link, setup.server))
        assert answer.status_code == 302
        assert answer.headers["location"] == LINK
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "no-store" in answer.headers["cache-control"]

    clicked = await eventually(lambda: events(setup.client, run_id), lambda found: bool(found))
    [event] = clicked
    assert (event.type, event.step_id, event.details) == ("click", "intro", {"url": LINK})
    found = await positive_control(setup, run_id, pixel, "open")
    assert [e.type for e in found] == ["click", "open"]
    assert await signal_count(setup.client, run_id) == 2
    assert [hit.url for hit in setup.hits.hits(run_id) if hit.kind == "click"] == [LINK] * 3


async def test_head_requests_answer_but_are_no_hits(setup: Setup) -> None:
    run_id = await setup.start(setup.plan(), new_contact())
    pixel, link, _unsubscribe = await the_email(setup.smtp)
    http = setup.server.http
    assert (await http.head(path_of(pixel, setup.server))).status_code == 200
    answer = await http.head(path_of(link, setup.server))
    assert (answer.status_code, answer.headers["location"]) == (302, LINK)
    found = await positive_control(setup, run_id, pixel, "open")
    assert [e.type for e in found] == ["open"]
    assert [hit.kind for hit in setup.hits.hits(run_id)] == ["open"]


async def test_forged_and_altered_tokens_signal_nothing(setup: Setup) -> None:
    run_id = await setup.start(setup.plan(), new_contact())
    pixel, link, unsubscribe = await the_email(setup.smtp)
    http = setup.server.http
    pixel_token = pixel.rsplit("/", 1)[1]
    click_token = link.rsplit("/", 1)[1]
    unsubscribe_token = unsubscribe.rsplit("/", 1)[1]
    other_key = open_pixel_url(
        setup.server.url, secret="another-key", run_id=run_id, step_id="intro", visit=1
    )
    bad_paths = [
        # A signature with one character changed.
        f"/t/o/{pixel_token[:-1]}{'A' if pixel_token[-1] != 'A' else 'B'}",
        # Another visit, with the signature of the real one.
        f"/t/o/{tampered(pixel_token, v=2)}",
        # Signed with another key.
        path_of(other_key, setup.server),
        # Not a token at all.
        "/t/o/not-a-token",
        # A click token at the pixel, a pixel token at the redirect.
        f"/t/o/{click_token}",
        f"/t/c/{pixel_token}",
        # An unsubscribe token at either.
        f"/t/o/{unsubscribe_token}",
        f"/t/c/{unsubscribe_token}",
        # The open redirect attempt: the signed click token pointed somewhere else.
        f"/t/c/{tampered(click_token, u='https://evil.example/')}",
        # Far too long.
        "/t/c/" + "a" * 5000 + ".b",
    ]
    for path in bad_paths:
        answer = await http.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["code"] in {"invalid-token", "not-found"}, path
        assert "location" not in answer.headers, path
    for path in [f"/u/{tampered(unsubscribe_token, e='bob@example.com')}", f"/u/{pixel_token}"]:
        assert (await http.get(path)).status_code == 404, path
        answer = await http.post(path, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 404, path

    found = await positive_control(setup, run_id, pixel, "open")
    assert [e.type for e in found] == ["open"]
    assert [hit.kind for hit in setup.hits.hits(run_id)] == ["open"]
    assert not setup.hits.is_suppressed("bob@example.com")


async def test_only_web_links_are_followed_even_when_signed(
    offline_settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    async with running_server(offline_settings, client=dev_env.client) as server:
        for target in ["javascript:alert(1)", "data:text/html,hi", "//evil.example/", "https:"]:
            url = click_url(
                server.url, secret=SECRET, run_id="p:c", step_id="intro", visit=1, url=target
            )
            answer = await server.http.get(path_of(url, server))
            assert answer.status_code == 404, target
            assert "location" not in answer.headers


async def test_a_hit_for_an_ended_run_is_kept_and_still_answered(
    offline_settings: Settings, dev_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dee.server")
    run_id = f"gone-{uuid.uuid4().hex[:8]}:ana@example.com"
    async with running_server(offline_settings, client=dev_env.client) as server:
        pixel = open_pixel_url(server.url, secret=SECRET, run_id=run_id, step_id="intro", visit=1)
        answer = await server.http.get(path_of(pixel, server))
        assert answer.status_code == 200 and answer.content.startswith(b"GIF89a")
        with HitStore(offline_settings.database_url) as hits:
            assert len(hits.hits(run_id)) == 1
            # The signal was tried in the background and found no run; no one to tell,
            # so no retries: the key stays taken.
            async with asyncio.timeout(10):
                while "not signalled: run-not-found (no more tries)" not in caplog.text:
                    await asyncio.sleep(0.05)
            assert hits.is_signalled(run_id, step_id="intro", visit=1, kind="open")
            assert await outcome(hits, run_id, "open") == "run-not-found"


async def test_when_temporal_is_unreachable_the_key_waits_for_the_sweeper(
    offline_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dee.server")
    client = await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, data_converter=pydantic_data_converter
    )
    run_id = "plan:ana@example.com"

    async def failures() -> int:
        return len([r for r in caplog.records if "the sweeper retries them" in r.getMessage()])

    async with running_server(offline_settings, client=client) as server:
        link = click_url(
            server.url, secret=SECRET, run_id=run_id, step_id="intro", visit=1, url=LINK
        )
        started = time.monotonic()
        answer = await server.http.get(path_of(link, server))
        # The contact does not wait for Temporal.
        assert time.monotonic() - started < 2
        assert (answer.status_code, answer.headers["location"]) == (302, LINK)
        assert await eventually(failures, lambda count: count == 1, timeout=30) == 1
        with HitStore(offline_settings.database_url) as hits:
            # Not given back: the key waits, pending, for the sweeper (which signals it once
            # Temporal answers: see test_sweeper.py), and later hits collapse into it.
            status = hits.signal_status(run_id, step_id="intro", visit=1, kind="click")
            assert status is not None and status.outcome is None
            await server.http.get(path_of(link, server))
            assert await eventually(
                lambda: asyncio.to_thread(hits.hits, run_id), lambda h: len(h) == 2
            )
            assert await failures() == 1
    # The warning names the kind and the error's type, never the run (or its address).
    assert all(run_id not in record.getMessage() for record in caplog.records)


# -- unsubscribes -----------------------------------------------------------------------------


async def test_one_click_unsubscribe_ends_the_contacts_runs_and_suppresses(setup: Setup) -> None:
    contact = new_contact()
    address = contact["email"]
    # Another run of the same contact, on another plan, that has sent nothing yet.
    other = await setup.start(setup.plan(waiting_plan), contact)
    run_id = await setup.start(setup.plan(), contact)
    _pixel, _link, unsubscribe = await the_email(setup.smtp)
    path = path_of(unsubscribe, setup.server)
    http = setup.server.http

    async def running() -> set[str]:
        query = (
            f"WorkflowType = '{WORKFLOW_NAME}' AND {CONTACT_ID_ATTRIBUTE.name} = "
            f"'{contact['id']}' AND ExecutionStatus = 'Running'"
        )
        return {execution.id async for execution in setup.client.list_workflows(query)}

    # Visibility lags the runs by a moment; the server finds the contact's runs through it.
    assert await eventually(running, lambda found: found == {run_id, other}) == {run_id, other}

    page = await http.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f"<strong>{address}</strong>" in page.text
    assert '<form method="post">' in page.text and ">Unsubscribe</button>" in page.text
    # Showing the page changes nothing.
    assert not setup.hits.is_suppressed(address)

    answer = await http.post(path, data={"List-Unsubscribe": "One-Click"})
    assert (answer.status_code, answer.content) == (200, b"")
    for ended in (run_id, other):
        result = await run_result_of(setup.env, ended)
        assert result == "unsubscribed", ended
    suppression = setup.hits.suppression(address)
    assert suppression is not None
    assert (suppression.reason, suppression.run_id) == ("unsubscribe", run_id)

    # Again, and through the page's form: nothing changes, the page confirms.
    again = await http.post(path, data={"List-Unsubscribe": "One-Click"})
    assert (again.status_code, again.content) == (200, b"")
    confirmed = await http.post(path, data={"confirm": "yes"})
    assert confirmed.status_code == 200
    assert f"<strong>{address}</strong> is unsubscribed" in confirmed.text
    assert [hit.kind for hit in setup.hits.hits(run_id)] == ["unsubscribe"] * 3

    # A new run for the address sends nothing, and says so.
    sent_before = len(setup.smtp.handler.messages)
    version = setup.registry.create(
        email_plan(f"track-{uuid.uuid4().hex[:8]}"), email_content(HTML)
    )
    later = await setup.start(version, contact)
    assert await run_result_of(setup.env, later) == "sent"
    assert len(setup.smtp.handler.messages) == sent_before
    [send] = [
        visit for visit in (await run_state(setup.client, later)).history if visit.step_id == "send"
    ]
    assert send.result is not None and send.result.startswith("suppressed <")


async def test_one_click_as_multipart_form_data(setup: Setup) -> None:
    contact = new_contact()
    run_id = await setup.start(setup.plan(), contact)
    _pixel, _link, unsubscribe = await the_email(setup.smtp)
    answer = await setup.server.http.post(
        path_of(unsubscribe, setup.server), files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert (answer.status_code, answer.content) == (200, b"")
    assert await run_result_of(setup.env, run_id) == "unsubscribed"
    assert setup.hits.is_suppressed(contact["email"])


async def test_a_post_without_the_one_click_field_changes_nothing(
    offline_settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    async with running_server(offline_settings, client=dev_env.client) as server:
        url = unsubscribe_url(server.url, secret=SECRET, run_id="p:c", email="ana@example.com")
        for body in [{}, {"List-Unsubscribe": "yes"}, {"confirm": "no"}]:
            answer = await server.http.post(path_of(url, server), data=body)
            assert (answer.status_code, answer.json()["code"]) == (400, "bad-request"), body
    with HitStore(offline_settings.database_url) as hits:
        assert not hits.is_suppressed("ana@example.com")


async def test_the_page_escapes_what_it_shows(
    offline_settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    async with running_server(offline_settings, client=dev_env.client) as server:
        token = sign_token({"k": "u", "r": "p:c", "e": "<b>a&b</b>@example.com"}, secret=SECRET)
        page = await server.http.get(f"/u/{token}")
        assert page.status_code == 200
        assert "&lt;b&gt;a&amp;b&lt;/b&gt;@example.com" in page.text
        assert "<b>a" not in page.text


async def test_pixels_and_redirects_answer_only_get_and_head(
    offline_settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    run_id = "p:ana@example.com"
    async with running_server(offline_settings, client=dev_env.client) as server:
        pixel = open_pixel_url(server.url, secret=SECRET, run_id=run_id, step_id="s", visit=1)
        for method in ("POST", "PUT", "DELETE"):
            answer = await server.http.request(method, path_of(pixel, server))
            assert (answer.status_code, answer.json()) == (
                405,
                {"code": "method-not-allowed", "message": "Method Not Allowed"},
            )
            assert answer.headers["allow"] == "GET, HEAD"
        # Under /t/ but no pixel or redirect: the app's own 404.
        for path in ("/t/o/", "/t/o/a/b", "/t/x/token", "/t/o"):
            answer = await server.http.get(path)
            assert (answer.status_code, answer.json()["code"]) == (404, "not-found"), path
        # The control: the same pixel fetched keeps its hit.
        assert (await server.http.get(path_of(pixel, server))).status_code == 200
        with HitStore(offline_settings.database_url) as hits:
            assert [hit.kind for hit in hits.hits(run_id)] == ["open"]


async def test_without_a_secret_key_links_cannot_be_checked(
    tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'dee.db'}")
    async with running_server(settings, client=dev_env.client) as server:
        pixel = open_pixel_url(server.url, secret=SECRET, run_id="p:c", step_id="s", visit=1)
        answer = await server.http.get(path_of(pixel, server))
        assert (answer.status_code, answer.json()["code"]) == (503, "not-configured")


def waiting_plan(plan_id: str) -> ExecutionPlan:
    """Only a long wait: a run that sends nothing before it is unsubscribed."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Waiting",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {"type": "wait", "id": "pause", "duration": {"hours": 1}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


async def run_result_of(env: WorkflowEnvironment, run_id: str) -> str:
    return (await run_result(env, run_id, timeout=30)).outcome
