"""The whole engine from the outside, on the dev server: a real uvicorn serving the app, the
worker, and an aiosmtpd server. What a contact does reaches the run through the links and
addresses in the emails DEE sent."""

from __future__ import annotations

import asyncio
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.client import run_state, start_run
from dee.runs.ledger import SendLedger
from dee.runs.model import RunResult
from dee.settings import Settings
from tests.helpers.logs import captured_logs
from tests.helpers.server import RunningServer, running_server
from tests.helpers.smtp import SmtpServer, free_port
from tests.helpers.temporal import running_worker
from workflows.execution_plan import ExecutionPlanWorkflow

INBOUND_KEY = "e2e-inbound-key"
PHONES = {"ana": "+15550001111", "bob": "+15550002222", "cora": "+15550003333"}
API_KEY = "e2e-api-key"
HTML = '<p>Hi {{ contact.firstName }}, meet {{ product }}: <a href="https://example.com/book">book</a></p>'


def plan_version(registry: PlanRegistry) -> PlanVersion:
    """The spec's plan, with its 3.5-day wait cut to 3 seconds."""
    document: dict[str, Any] = dee.load_plan(
        Path(__file__).parents[2] / "examples" / "spec-plan.yaml"
    ).to_document()
    document["steps"] = [s for s in document["steps"] if s["type"] != "sendVoice"]
    for step in document["steps"]:
        if step["type"] == "wait":
            step["duration"] = {"seconds": 3}
    document["transitions"] = [
        t for t in document["transitions"] if "follow-up-call" not in (t["from"], t["to"])
    ] + [{"from": "cold-follow-up", "to": "end-sequence"}]
    plan = dee.plan_from_document(document)
    template = EmailTemplate(html=HTML)
    content = PlanContent(
        templates={
            "tmpl_intro": template,
            "tmpl_warm_follow_up": template,
            "tmpl_cold_follow_up": template,
        }
    )
    return registry.create(plan, content)


async def emails_to(smtp: SmtpServer, address: str, count: int) -> list[EmailMessage]:
    async with asyncio.timeout(30):
        while True:
            found = [r.message for r in smtp.handler.messages if r.rcpt_tos == (address,)]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)


def link(message: EmailMessage, pattern: str) -> str:
    html = message.get_body(("html",))
    assert html is not None
    match = re.search(pattern, html.get_content())
    assert match, pattern
    return match.group(1).replace("&amp;", "&")


async def finished(env: WorkflowEnvironment, run_id: str) -> RunResult:
    handle = env.client.get_workflow_handle_for(ExecutionPlanWorkflow.run, run_id)
    async with asyncio.timeout(60):
        return await handle.result()


@pytest.fixture
def port() -> int:
    return free_port()


async def test_pixel_link_reply_and_unsubscribe_steer_real_runs(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer, port: int
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    settings = Settings(
        database_url=database,
        smtp_url=smtp.url,
        from_address="sales@dee.example",
        public_url=f"http://127.0.0.1:{port}",
        secret_key="e2e-secret",
        task_queue=task_queue,
        inbound_secret=INBOUND_KEY,
        api_keys=(API_KEY,),
    )
    client = dev_env.client
    with PlanRegistry(database) as registry, SendLedger(database) as ledger:
        version = plan_version(registry)
        server: RunningServer
        async with (
            running_worker(client, task_queue=task_queue, settings=settings, ledger=ledger),
            running_server(settings, client=client, registry=registry, port=port) as server,
        ):
            with captured_logs() as logs:

                async def start(name: str) -> str:
                    contact = {"email": f"{name}@example.com", "firstName": name.title()}
                    started = await server.http.post(
                        "/v1/runs",
                        json={
                            "planId": version.plan.id,
                            "contact": {**contact, "phone": PHONES[name]},
                            "variables": {"product": "DEE"},
                        },
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    )
                    assert started.status_code == 201, started.text
                    run_id: str = started.json()["runId"]
                    return run_id

                ana, bob, cora = await asyncio.gather(start("ana"), start("bob"), start("cora"))

                # Ana opens the intro email (her mail client fetches the pixel, twice) and
                # follows its link: the run goes to the warm follow-up.
                [intro] = await emails_to(smtp, "ana@example.com", 1)
                pixel = link(intro, r'<img src="(http://127\.0\.0\.1:\d+/t/o/[^"]+)"')
                for _ in range(2):
                    fetched = await server.http.get(pixel)
                    assert fetched.status_code == 200
                    assert fetched.headers["content-type"] == "image/gif"
                clicked = await server.http.get(link(intro, r'href="(http://[^"]+/t/c/[^"]+)"'))
                assert clicked.status_code in {302, 303, 307}
                assert clicked.headers["location"] == "https://example.com/book"

                # Bob replies to the intro email: the run ends as replied, with no follow-up.
                [bobs] = await emails_to(smtp, "bob@example.com", 1)
                reply = EmailMessage()
                reply["From"] = "bob@example.com"
                reply["To"] = "sales@dee.example"
                reply["Subject"] = f"Re: {bobs['Subject']}"
                reply["Message-ID"] = "<reply-1@example.com>"
                reply["In-Reply-To"] = bobs["Message-ID"]
                reply["References"] = bobs["Message-ID"]
                reply.set_content("Yes, let's talk.")
                posted = await server.http.post(
                    f"/webhooks/inbound/raw?key={INBOUND_KEY}",
                    content=bytes(reply),
                    headers={"Content-Type": "message/rfc822"},
                )
                assert posted.status_code == 200, posted.text

                # Cora unsubscribes with one click, as her mail client does from the header.
                [coras] = await emails_to(smtp, "cora@example.com", 1)
                unsubscribe = re.search(r"<(http[^>]+/u/[^>]+)>", str(coras["List-Unsubscribe"]))
                assert unsubscribe
                one_click = await server.http.post(
                    unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"}
                )
                assert one_click.status_code == 200

                ana_result, bob_result, cora_result = await asyncio.gather(
                    finished(dev_env, ana), finished(dev_env, bob), finished(dev_env, cora)
                )
                assert ana_result.outcome == "replied"
                assert [str(m["Subject"]) for m in await emails_to(smtp, "ana@example.com", 2)] == [
                    "Introducing DEE",
                    "Following up on DEE",
                ]
                bob_state = await run_state(client, bob)
                assert bob_result.outcome == "replied"
                assert [v.result for v in bob_state.history if v.step_id == "check-response"] == [
                    "-> end-sequence"
                ]
                assert [e.type for e in bob_state.events] == ["reply"]
                assert cora_result.outcome == "unsubscribed"

                # Starting Cora again is refused: her address is suppressed.
                again = await server.http.post(
                    "/v1/runs",
                    json={
                        "planId": version.plan.id,
                        "contact": {"email": "cora@example.com", "firstName": "Cora"},
                        "variables": {"product": "DEE"},
                    },
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                assert (again.status_code, again.json()["code"]) == (409, "contact-suppressed")

            # Positive control: the capture saw the flow (requests, sends, signals)...
            assert len(logs.containing("POST /webhooks/inbound/raw", "GET /t/o/{token}")) >= 2
            assert logs.containing(ana.partition(":")[2])
            # ...and no line of it holds an address, a phone number, a secret or a token.
            tokens = [pixel.rsplit("/", 1)[1], unsubscribe.group(1).rsplit("/", 1)[1]]
            secrets = [settings.secret_key or "", INBOUND_KEY, API_KEY, *tokens]
            people = [f"{name}@example.com" for name in PHONES] + list(PHONES.values())
            assert logs.containing(*people, *secrets) == []

            # Without the API's check (a plain start_run), a run for Cora sends nothing:
            # the worker reads the suppression list before the send.
            again_id = await start_run(
                client,
                version,
                contact={"id": "cora-again", "email": "cora@example.com", "firstName": "Cora"},
                variables={"product": "DEE"},
                task_queue=task_queue,
            )
            result = await finished(dev_env, again_id)
            state = await run_state(client, again_id)
            assert [v.result or "" for v in state.history][0].startswith("suppressed")
            assert result.outcome == "replied"
            assert (
                len([r for r in smtp.handler.messages if r.rcpt_tos == ("cora@example.com",)]) == 1
            )
