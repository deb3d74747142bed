"""Hostile contact data through the real app, worker and SMTP server: an RFC 2047 encoded
word that decodes to a line break, in a run variable or a contact field, never reaches the
wire as a header; the run fails at once naming the step. Dev server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dee.runs.client import run_state
from dee.runs.model import RunState
from dee.settings import Settings
from tests.helpers.engine import engine
from tests.helpers.plans import email_content, email_plan
from tests.helpers.server import running_server
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api

API_KEY = "hostile-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REPLY_TO = "=?utf-8?q?DEE=0D=0AReply-To=3A_attacker@evil.example.net?="
BODY = "=?utf-8?q?Ana=0D=0AContent-Type=3A_text/html=0D=0A=0D=0A<h1>owned</h1>?="


def _api_settings(tmp_path: Path, task_queue: str) -> Settings:
    """The server's settings: the engine's database, and the API open to :data:`API_KEY`."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'dee.db'}", api_keys=(API_KEY,), task_queue=task_queue
    )


async def _ended(client: Client, run_id: str) -> RunState:
    async with asyncio.timeout(60):
        while (state := await run_state(client, run_id)).status != "completed":
            await asyncio.sleep(0.2)
    return state


async def test_encoded_line_breaks_in_data_fail_the_run_and_send_nothing(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            plan = email_plan("hostile", template_id="intro")
            step = plan.steps[0].model_copy(
                update={"subject": "Introducing {{ product }} to {{ contact.firstName }}"}
            )
            e.registry.create(
                plan.model_copy(update={"steps": (step, *plan.steps[1:])}),
                email_content("<p>Hi {{ contact.firstName }}, {{ product }}</p>"),
            )
            settings = _api_settings(tmp_path, task_queue)
            async with running_server(settings, client=e.client, registry=e.registry) as up:

                async def start(name: str, first_name: str, product: str) -> str:
                    contact = {"email": f"{name}@example.com", "firstName": first_name}
                    body = {
                        "planId": "hostile",
                        "contact": contact,
                        "variables": {"product": product},
                    }
                    started = await up.http.post("/v1/runs", json=body, headers=AUTH)
                    assert started.status_code == 201, started.text
                    run_id: str = started.json()["runId"]
                    return run_id

                # Positive control: plain data is sent.
                control = await _ended(e.client, await start("cleo", "Cleo", "DEE"))
                assert control.outcome == "sent"
                assert len(smtp.handler.messages) == 1
                runs = [await start("vic", "Vic", REPLY_TO), await start("ana", BODY, "DEE")]
                states = [await _ended(e.client, run_id) for run_id in runs]
    for state in states:
        assert state.outcome == "failed", state
        assert state.failure is not None and state.failure.kind == "InvalidHeader"
        assert state.failure.step_id == "send"
    assert [r.rcpt_tos for r in smtp.handler.messages] == [("cleo@example.com",)]


async def test_a_template_that_fails_to_render_fails_the_run_at_once(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            version = e.registry.create(
                email_plan("averages", template_id="intro"),
                email_content("<p>{{ total / count }} per order, {{ 'x' * repeat }}</p>"),
            )
            settings = _api_settings(tmp_path, task_queue)
            async with running_server(settings, client=e.client, registry=e.registry) as up:

                async def run(name: str, variables: dict[str, int]) -> RunState:
                    body = {
                        "planId": version.plan.id,
                        "contact": {"email": f"{name}@example.com", "firstName": name},
                        "variables": variables,
                    }
                    started = await up.http.post("/v1/runs", json=body, headers=AUTH)
                    assert started.status_code == 201, started.text
                    return await _ended(e.client, started.json()["runId"])

                # Positive control: the same template renders with sound data.
                assert (await run("sam", {"total": 10, "count": 2, "repeat": 3})).outcome == "sent"
                # Each would be retried for 20 minutes if it counted as a passing failure;
                # _ended gives the run a minute.
                broken = [
                    await run("zed", {"total": 10, "count": 0, "repeat": 3}),
                    await run("rex", {"total": 10, "count": 2, "repeat": 10**8}),
                ]
    reasons = []
    for state in broken:
        assert state.outcome == "failed", state
        assert state.failure is not None and state.failure.kind == "TemplateError"
        assert state.failure.step_id == "send"
        reasons.append(state.failure.reason)
    assert "ZeroDivisionError" in reasons[0] and "repetition" in reasons[1], reasons
    assert [r.rcpt_tos for r in smtp.handler.messages] == [("sam@example.com",)]


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


async def test_run_ids_and_nesting_are_bounded_with_a_422_naming_the_field(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            e.registry.create(email_plan("shapes", template_id="intro"), email_content())
            settings = _api_settings(tmp_path, task_queue)
            async with running_server(settings, client=e.client, registry=e.registry) as up:

                async def start(**changes: object) -> tuple[int, str]:
                    body: dict[str, object] = {
                        "planId": "shapes",
                        "contact": {"email": "ana@example.com", "firstName": "Ana"},
                        **changes,
                    }
                    answer = await up.http.post("/v1/runs", json=body, headers=AUTH)
                    return answer.status_code, answer.text

                # Positive control: a run id of the documented shape, and 32 levels.
                ok = await start(runId="custom-run.1:ana@example.com", variables=_nested(32))
                assert ok[0] == 201, ok
                for run_id in ["../../etc/passwd", "a\x00b", "a\r\nb", " ", "a b", "/abs"]:
                    status, text = await start(runId=run_id)
                    assert status == 422, (run_id, status, text)
                status, text = await start(variables={"deep": _nested(33)})
                assert (status, "variables.deep" in text, "32 levels" in text) == (422, True, True)
                contact = {"email": "bo@example.com", "firstName": "Bo", "crm": _nested(200)}
                status, text = await start(contact=contact)
                assert (status, "contact.crm" in text) == (422, True), text
                # Deeper than the JSON decoder goes: refused too, never a 500.
                status, text = await start(variables=_nested(400))
                assert status in {400, 422}, (status, text)
