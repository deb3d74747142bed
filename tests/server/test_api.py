"""The REST API end to end: the real app under uvicorn, the Temporal dev server, the real
worker, and a real SMTP server for the emails runs send."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dee.plans.loader import plan_from_document
from dee.plans.registry import PlanRegistry
from dee.settings import Settings
from tests.helpers.server import RunningServer, running_server, server_with_worker
from tests.helpers.smtp import SmtpServer, free_port
from tests.helpers.temporal import executable

KEY = "key-for-tests"
OTHER_KEY = "another-key"

#: Email, wait two seconds, then end by whether the email was opened meanwhile.
NUDGE: dict[str, Any] = {
    "id": "api-nudge",
    "name": "Nudge",
    "metadata": {"createdBy": "tests@example.com"},
    "steps": [
        {
            "type": "sendEmail",
            "id": "hello",
            "templateId": "hello",
            "subject": "Hi {{ contact.firstName }}",
        },
        {"type": "wait", "id": "pause", "duration": {"seconds": 2}},
        {
            "type": "branch",
            "id": "check",
            "conditions": [
                {"when": 'events.hasOpen("hello")', "goto": "opened"},
                {"when": "default", "goto": "quiet"},
            ],
        },
        {"type": "end", "id": "opened", "outcome": "opened"},
        {"type": "end", "id": "quiet", "outcome": "quiet"},
    ],
    "transitions": [{"from": "hello", "to": "pause"}, {"from": "pause", "to": "check"}],
}
NUDGE_CONTENT = {
    "templates": {"hello": {"html": "<p>Hi {{ contact.firstName }}, {{ product }}</p>"}}
}

#: Waits an hour: a run that stays active while a test looks at it.
SLOW: dict[str, Any] = {
    "id": "api-slow",
    "name": "Slow",
    "metadata": {"createdBy": "tests@example.com"},
    "steps": [
        {"type": "wait", "id": "pause", "duration": {"hours": 1}},
        {"type": "end", "id": "done", "outcome": "finished"},
    ],
    "transitions": "linear",
}


def authorized(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def api_server(
    env: WorkflowEnvironment, database: Path, **settings: Any
) -> AsyncIterator[RunningServer]:
    """The app with its own SQLite registry; requests carry :data:`KEY` unless replaced."""
    url = f"sqlite:///{database}"
    options: dict[str, Any] = {"database_url": url, "api_keys": (KEY, OTHER_KEY), **settings}
    with PlanRegistry(url) as registry:
        async with running_server(Settings(**options), client=env.client, registry=registry) as up:
            up.http.headers.update(authorized())
            yield up


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine_api(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, SmtpServer]]:
    """One server and worker for the run tests of this module (each uses its own contacts),
    sending to a real SMTP server."""
    folder = tmp_path_factory.mktemp("api")
    async with server_with_worker(dev_env.client, folder, api_key=KEY) as (up, smtp):
        for plan, content in ((NUDGE, NUDGE_CONTENT), (SLOW, {})):
            created = await up.http.post("/v1/plans", json={"plan": plan, "content": content})
            assert created.status_code == 201, created.text
        yield up, smtp


async def until(
    read: Callable[[], Awaitable[httpx.Response]],
    holds: Callable[[Any], bool],
    *,
    timeout: float = 30,
) -> Any:
    """The JSON of ``read()`` once ``holds`` it, polling; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = await read()
        assert response.status_code == 200, response.text
        body = response.json()
        if holds(body):
            return body
        assert time.monotonic() < deadline, f"still {body}"
        await asyncio.sleep(0.2)


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) <= {"code", "message", "problems"} and body["message"], body
    return response.status_code, body["code"]


# Authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param(authorized("wrong"), id="wrong-key"),
        pytest.param(authorized(KEY + "x"), id="key-with-a-suffix"),
        pytest.param(authorized(KEY[:-1]), id="key-prefix"),
        pytest.param({"Authorization": "Bearer"}, id="no-credentials"),
        pytest.param({"Authorization": f"Basic {KEY}"}, id="other-scheme"),
        pytest.param({"Authorization": f"Token {KEY}"}, id="token-scheme"),
    ],
)
async def test_requests_without_a_known_key_are_401(
    dev_env: WorkflowEnvironment, tmp_path: Path, headers: dict[str, str]
) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        async with httpx.AsyncClient(base_url=up.url, headers=headers) as anonymous:
            response = await anonymous.get("/v1/plans")
        assert error(response) == (401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        # Both configured keys work.
        assert (await up.http.get("/v1/plans")).status_code == 200
        assert (await up.http.get("/v1/plans", headers=authorized(OTHER_KEY))).status_code == 200


async def test_every_api_route_needs_a_key(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        schema = up.app.openapi()
        routes = [
            (method, path)
            for path, operations in schema["paths"].items()
            for method in operations
            if path.startswith("/v1/")
        ]
        # The /v1 routes, hits, unmatched inbound, the bulk start and the suppression list.
        assert len(routes) == 17
        async with httpx.AsyncClient(base_url=up.url) as anonymous:
            for method, path in routes:
                url = path.replace("{plan_id}", "p").replace("{version}", "1")
                url = url.replace("{run_id}", "r").replace("{value}", "ana@example.com")
                response = await anonymous.request(method, url, json={})
                assert error(response) == (401, "unauthorized"), (method, path)
                assert schema["paths"][path][method]["security"] == [{"ApiKey": []}]
        assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
        # The documentation itself is public.
        assert (await up.http.get("/docs", headers={"Authorization": ""})).status_code == 200


async def test_without_configured_keys_the_api_refuses_everything(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with api_server(dev_env, tmp_path / "dee.db", api_keys=()) as up:
        response = await up.http.get("/v1/plans")
        assert error(response) == (401, "unauthorized")
        assert "DEE_API_KEYS" in response.json()["message"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


# Plans ----------------------------------------------------------------------------------


async def test_create_list_and_show_plans(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        assert (await up.http.get("/v1/plans")).json() == []
        body = {"plan": NUDGE, "content": NUDGE_CONTENT}

        first = await up.http.post("/v1/plans", json=body)
        assert first.status_code == 201
        assert first.json() == {
            "id": "api-nudge",
            "version": 1,
            "digest": first.json()["digest"],
            "created": True,
        }
        again = await up.http.post("/v1/plans", json=body)
        assert again.status_code == 200
        assert again.json() == {**first.json(), "created": False}

        changed = copy.deepcopy(body)
        changed["content"]["templates"]["hello"]["text"] = "Hi {{ contact.firstName }}"
        second = await up.http.post("/v1/plans", json=changed)
        assert (second.status_code, second.json()["version"]) == (201, 2)
        assert second.json()["digest"] != first.json()["digest"]

        [summary] = (await up.http.get("/v1/plans")).json()
        assert summary == {
            "id": "api-nudge",
            "name": "Nudge",
            "latestVersion": 2,
            "versions": 2,
            "updatedAt": summary["updatedAt"],
        }

        latest = (await up.http.get("/v1/plans/api-nudge")).json()
        created_at = latest["createdAt"]
        assert latest == {
            "id": "api-nudge",
            "version": 2,
            "name": "Nudge",
            "digest": second.json()["digest"],
            "createdAt": created_at,
            "createdBy": "tests@example.com",
            "plan": {
                # The document as `dee plans show --json` prints it, defaults filled in.
                **plan_from_document(NUDGE).to_document(),
                "version": 2,
                "metadata": {
                    **NUDGE["metadata"],
                    "createdAt": latest["plan"]["metadata"]["createdAt"],
                },
            },
            "contentDigests": {
                "templates/hello.html": latest["contentDigests"]["templates/hello.html"],
                "templates/hello.txt": latest["contentDigests"]["templates/hello.txt"],
            },
        }
        # The document answered is one `POST /v1/plans` takes back, unchanged.
        back = await up.http.post("/v1/plans", json={**changed, "plan": latest["plan"]})
        assert (back.status_code, back.json()["version"]) == (200, 2)

        versions = (await up.http.get("/v1/plans/api-nudge/versions")).json()
        assert [(version["version"], version["digest"]) for version in versions] == [
            (1, first.json()["digest"]),
            (2, second.json()["digest"]),
        ]
        old = (await up.http.get("/v1/plans/api-nudge/versions/1")).json()
        assert (old["version"], old["plan"]["version"]) == (1, 1)
        assert list(old["contentDigests"]) == ["templates/hello.html"]


async def test_a_plan_without_metadata_is_created_by_the_api_keys_name(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    named = "crm-sync:s3cret-for-the-crm"
    async with api_server(dev_env, tmp_path / "dee.db", api_keys=(KEY, named)) as up:
        anonymous = {key: value for key, value in SLOW.items() if key != "metadata"}
        # The part before the colon is the key's name, never sent: the secret alone is.
        assert (
            await up.http.post("/v1/plans", json={"plan": anonymous}, headers=authorized(named))
        ).status_code == 401
        created = await up.http.post(
            "/v1/plans", json={"plan": anonymous}, headers=authorized("s3cret-for-the-crm")
        )
        assert created.status_code == 201, created.text
        shown = (await up.http.get("/v1/plans/api-slow")).json()
        assert shown["createdBy"] == "crm-sync"
        # A key without a name is named by a hash of it, never by the key itself.
        other = await up.http.post("/v1/plans", json={"plan": {**anonymous, "id": "api-slow-2"}})
        assert other.status_code == 201, other.text
        by = (await up.http.get("/v1/plans/api-slow-2")).json()["createdBy"]
        assert by.startswith("key-") and len(by) == 12 and KEY not in by


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # An unknown plan, its versions, and a version it does not have.
        ("/v1/plans/nobody", "plan 'nobody' does not exist: see `dee plans list`"),
        ("/v1/plans/nobody/versions", "plan 'nobody' does not exist: see `dee plans list`"),
        (
            "/v1/plans/api-slow/versions/7",
            "plan 'api-slow' v7 does not exist: see `dee plans list`",
        ),
    ],
)
async def test_unknown_plans_are_404(
    dev_env: WorkflowEnvironment, tmp_path: Path, path: str, expected: str
) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        assert (await up.http.post("/v1/plans", json={"plan": SLOW})).status_code == 201
        response = await up.http.get(path)
        assert error(response) == (404, "plan-not-found")
        assert response.json()["message"] == expected


def _without_duration_and_teleporting() -> dict[str, Any]:
    plan = copy.deepcopy(SLOW)
    plan["steps"] = [{"type": "wait", "id": "pause"}, {"type": "teleport", "id": "x"}]
    return plan


@pytest.mark.parametrize(
    ("plan", "content", "problems"),
    [
        # Data problems (the document's shape), each with the step and where it is.
        (
            _without_duration_and_teleporting(),
            {},
            [
                {
                    "stepId": "pause",
                    "code": "missing-field",
                    "message": "steps[0].duration is required",
                    "location": "steps[0].duration",
                },
                {
                    "stepId": "x",
                    "code": "unknown-step-type",
                    "message": "steps[1]: step type 'teleport' does not exist; expected one of "
                    "sendEmail, sendVoice, wait, branch, end",
                    "location": "steps[1]",
                },
            ],
        ),
        # A plan problem: well-formed, but its template is not in the content.
        (
            NUDGE,
            {},
            [
                {
                    "stepId": "hello",
                    "code": "missing-template",
                    "message": "template 'hello' not found: expected templates/hello.html in "
                    "the content folder",
                    "location": None,
                }
            ],
        ),
        # Not a plan document at all.
        (
            {},
            {},
            [
                {
                    "stepId": None,
                    "code": "missing-field",
                    "message": f"{field} is required",
                    "location": field,
                }
                for field in ("id", "name", "steps", "metadata")
            ],
        ),
    ],
)
async def test_invalid_plans_are_422_with_every_problem(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    plan: dict[str, Any],
    content: dict[str, Any],
    problems: list[dict[str, Any]],
) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        response = await up.http.post("/v1/plans", json={"plan": plan, "content": content})
        count = len(problems)
        assert response.status_code == 422
        assert response.json() == {
            "code": "invalid-plan",
            "message": f"the plan has {count} problem{'s' if count != 1 else ''}",
            "problems": problems,
        }
        assert (await up.http.get("/v1/plans")).json() == []


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        # Not JSON.
        (b'{"plan": ', "application/json", "JSON decode error"),
        # JSON, but not the shape of the request.
        (b'{"content": {}}', "application/json", "body.plan: Field required"),
        (b'{"plan": {}, "extra": 1}', "application/json", "body.extra: Extra inputs"),
    ],
)
async def test_malformed_requests_are_422_in_the_error_shape(
    dev_env: WorkflowEnvironment, tmp_path: Path, body: bytes, content_type: str, message: str
) -> None:
    async with api_server(dev_env, tmp_path / "dee.db") as up:
        response = await up.http.post(
            "/v1/plans", content=body, headers={"Content-Type": content_type}
        )
        assert error(response) == (422, "invalid-request")
        assert message in response.json()["message"]


@pytest.mark.parametrize(
    "chunked",
    [
        pytest.param(False, id="content-length"),
        pytest.param(True, id="chunked"),
    ],
)
async def test_oversized_bodies_are_413(
    dev_env: WorkflowEnvironment, tmp_path: Path, chunked: bool
) -> None:
    big = b'{"plan": {"name": "' + b"x" * (1024 * 1024) + b'"}}'

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with api_server(dev_env, tmp_path / "dee.db") as up:
        response = await up.http.post(
            "/v1/plans",
            content=stream() if chunked else big,
            headers={"Content-Type": "application/json"},
        )
        assert error(response) == (413, "body-too-large")


# Runs -----------------------------------------------------------------------------------


async def test_runs_follow_the_events_posted_to_them(
    engine_api: tuple[RunningServer, SmtpServer],
) -> None:
    up, smtp = engine_api

    async def start(name: str) -> str:
        contact = {"email": f"{name}@example.com", "firstName": name.title()}
        started = await up.http.post(
            "/v1/runs",
            json={"planId": "api-nudge", "contact": contact, "variables": {"product": "DEE"}},
        )
        assert started.status_code == 201, started.text
        run_id: str = started.json()["runId"]
        return run_id

    opener, quiet = await asyncio.gather(start("olga"), start("quinn"))
    # Contact ids default to a keyed hash of the address: no address in a run id.
    for run_id in (opener, quiet):
        assert re.fullmatch(r"api-nudge:c-[a-z2-7]{24}", run_id), run_id

    event = await up.http.post(
        f"/v1/runs/{opener}/events",
        json={"type": "open", "stepId": "hello", "eventId": "open-1", "details": {"ip": "x"}},
    )
    assert event.status_code == 202
    assert event.json() == {
        "eventId": "open-1",
        "type": "open",
        "stepId": "hello",
        "at": event.json()["at"],
        "details": {"ip": "x"},
        "execution": None,
    }

    def ended(run: dict[str, Any]) -> bool:
        return bool(run["status"] == "completed")

    opened = await until(lambda: up.http.get(f"/v1/runs/{opener}"), ended)
    assert opened["outcome"] == "opened"
    assert (opened["runId"], opened["planId"], opened["planVersion"]) == (opener, "api-nudge", 1)
    assert opened["contactId"] == opener.partition(":")[2]
    assert [visit["stepId"] for visit in opened["history"]] == [
        "hello",
        "pause",
        "check",
        "opened",
    ]
    assert [received["eventId"] for received in opened["events"]] == ["open-1"]
    assert opened["eventCount"] == 1 and opened["execution"]
    assert opened["counts"] == [{"type": "open", "stepId": "hello", "count": 1}]
    assert (await until(lambda: up.http.get(f"/v1/runs/{quiet}"), ended))["outcome"] == "quiet"
    recipients = sorted(received.rcpt_tos for received in smtp.handler.messages)
    assert recipients == [("olga@example.com",), ("quinn@example.com",)]

    runs = await until(
        lambda: up.http.get("/v1/runs", params={"planId": "api-nudge"}),
        lambda found: {run["outcome"] for run in found} == {"opened", "quiet"},
    )
    assert {run["runId"] for run in runs} == {opener, quiet}
    assert {run["status"] for run in runs} == {"completed"}
    assert (await up.http.get("/v1/runs", params={"planId": "no such plan"})).json() == []
    # A contact's runs, by the address it was started with (however spelt) or by its id.
    for contact in ("OLGA@example.com", opener.partition(":")[2]):
        mine = await up.http.get("/v1/runs", params={"contact": contact})
        assert [run["runId"] for run in mine.json()] == [opener], contact
    nobody = await up.http.get("/v1/runs", params={"contact": "nobody@example.com"})
    assert (nobody.status_code, nobody.json()) == (200, [])


async def test_starting_runs_is_refused_with_reasons(
    engine_api: tuple[RunningServer, SmtpServer],
) -> None:
    up, _ = engine_api
    ana = {"email": "ana@example.com", "firstName": "Ana"}

    async def start(**body: Any) -> httpx.Response:
        return await up.http.post("/v1/runs", json=body)

    started = await start(planId="api-slow", contact=ana, runId="api-slow-ana")
    assert (started.status_code, started.json()) == (201, {"runId": "api-slow-ana"})
    again = await start(planId="api-slow", contact=ana, runId="api-slow-ana")
    assert error(again) == (409, "run-already-started")
    assert "'api-slow-ana' is already active" in again.json()["message"]

    missing = await start(planId="api-nudge", contact={"email": "bo@example.com"})
    assert error(missing) == (422, "missing-variables")
    assert missing.json()["message"] == (
        "missing variables contact.firstName, product: give them in the contact or as run variables"
    )
    assert error(await start(planId="nobody", contact=ana)) == (404, "plan-not-found")
    assert error(await start(planId="api-slow", version=9, contact=ana)) == (404, "plan-not-found")
    no_id = await start(planId="api-slow", contact={"firstName": "Ana"})
    assert error(no_id) == (422, "invalid-contact")
    bad_sender = await start(planId="api-slow", contact=ana, sender="not an address")
    assert error(bad_sender) == (422, "invalid-request")
    reserved = await start(planId="api-slow", contact=ana, variables={"contact": "x"})
    assert error(reserved) == (422, "invalid-request")
    assert "`contact` is reserved" in reserved.json()["message"]

    cancelled = await up.http.post("/v1/runs/api-slow-ana/cancel")
    assert (cancelled.status_code, cancelled.json()) == (
        202,
        {"runId": "api-slow-ana", "cancelRequested": True},
    )
    state = await until(
        lambda: up.http.get("/v1/runs/api-slow-ana"), lambda run: run["status"] == "completed"
    )
    assert (state["outcome"], state["currentStep"]) == ("cancelled", "pause")
    closed = await up.http.post("/v1/runs/api-slow-ana/cancel")
    assert error(closed) == (409, "run-closed")
    late = await up.http.post("/v1/runs/api-slow-ana/events", json={"type": "reply"})
    assert error(late) == (409, "run-closed")
    # A finished run's id may start again.
    restarted = await start(planId="api-slow", contact=ana, runId="api-slow-ana")
    assert restarted.status_code == 201
    assert (await up.http.post("/v1/runs/api-slow-ana/cancel")).status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # Reading, signalling and cancelling a run that never existed.
        ("GET", "/v1/runs/nobody:nowhere", None),
        ("POST", "/v1/runs/nobody:nowhere/events", {"type": "open"}),
        ("POST", "/v1/runs/nobody:nowhere/cancel", None),
    ],
)
async def test_unknown_runs_are_404_not_500(
    engine_api: tuple[RunningServer, SmtpServer], method: str, path: str, body: Any
) -> None:
    up, _ = engine_api
    response = await up.http.request(method, path, json=body)
    assert error(response) == (404, "run-not-found")
    assert "'nobody:nowhere' does not exist" in response.json()["message"]


async def test_events_must_be_known_types(engine_api: tuple[RunningServer, SmtpServer]) -> None:
    up, _ = engine_api
    response = await up.http.post("/v1/runs/anything/events", json={"type": "teleported"})
    assert error(response) == (422, "invalid-request")
    assert "expected one of auto-reply, bounce" in response.json()["message"]


# dee serve ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        # uvloop and httptools, installed with DEE.
        [],
        # The standard library's loop and uvicorn's pure-Python parser.
        ["--loop", "asyncio", "--http", "h11"],
        ["--loop", "uvloop", "--http", "httptools"],
    ],
)
async def test_dee_serve_answers_with_keys_from_the_environment(
    options: list[str], dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "DEE_DATABASE_URL": f"sqlite:///{tmp_path / 'dee.db'}",
        "DEE_API_KEYS": f" {KEY} , {OTHER_KEY}",
    }
    process = await asyncio.create_subprocess_exec(
        executable("dee"),
        "serve",
        "--port",
        str(port),
        *options,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=authorized(OTHER_KEY)
        ) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = await http.get("/v1/plans")
                    break
                except httpx.TransportError:
                    assert process.returncode is None and time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            assert (response.status_code, response.json()) == (200, [])
            created = await http.post("/v1/plans", json={"plan": SLOW})
            assert created.status_code == 201
            anonymous = await http.get("/v1/plans", headers={"Authorization": ""})
            assert anonymous.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
