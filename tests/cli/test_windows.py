"""Send windows end to end on the Temporal dev server, through the ``dee`` command: of two
contacts started at the same moment, the one whose local time is inside the window gets its
email at once, the other's run holds it, and ``dee runs show`` and the Temporal UI's timer
say until when. The zones are picked from the current UTC time, so the test works at any
hour."""

from __future__ import annotations

import datetime
import json
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from tests.cli.test_runs import Cli, _until, cli  # noqa: F401  (the fixture)
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import run_result
from tests.server.test_api import api_server

PLAN = """\
id: PLAN_ID
name: Windowed intro
metadata: {createdBy: tests}
schedule:
  timezone: contact
  sendWindow: {from: "09:00", to: "17:00"}
steps:
  - {type: sendEmail, id: intro-email, templateId: tmpl, subject: "Hello {{ contact.firstName }}"}
  - {type: end, id: done, outcome: sent}
"""


def _zone_where(now: datetime.datetime, hours: range) -> str:
    """A zone whose local hour is now in ``hours`` (whole-hour offsets cover every hour)."""
    for zone in sorted(available_timezones()):
        if zone.startswith(("Etc/", "SystemV/")) or "/" not in zone:
            continue
        if now.astimezone(ZoneInfo(zone)).hour in hours:
            return zone
    raise AssertionError(f"no zone has an hour in {hours} at {now}")


async def test_one_contact_inside_the_window_one_outside(
    cli: Cli,  # noqa: F811
    dev_env: WorkflowEnvironment,
    smtp: SmtpServer,
    tmp_path: Path,
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    # Hours away from the window's edges, so a slow machine does not cross one.
    inside = _zone_where(now, range(10, 16))
    outside = _zone_where(now, range(19, 24))
    plan_id = f"windows-{uuid.uuid4().hex[:8]}"
    (tmp_path / "plan.yaml").write_text(PLAN.replace("PLAN_ID", plan_id))
    (tmp_path / "content" / "templates").mkdir(parents=True)
    (tmp_path / "content" / "templates" / "tmpl.html").write_text("<p>Hi</p>")
    await cli("plans", "create", tmp_path / "plan.yaml")

    async def start(name: str, zone: str) -> str:
        contact = {"email": f"{name}@example.com", "firstName": name, "timezone": zone}
        started = await cli("runs", "start", plan_id, "--contact", json.dumps(contact))
        return started.stdout.strip()

    sent, held = await start("inez", inside), await start("otto", outside)
    try:
        # Sent at once: the run is over, and the server has the message.
        assert (await run_result(dev_env, sent, timeout=60)).outcome == "sent"
        assert [str(m.message["To"]) for m in smtp.handler.messages] == ["inez@example.com"]

        state = await _until(cli, held, lambda state: state["holding"] is not None, timeout=60)
        local = now.astimezone(ZoneInfo(outside))
        opens = datetime.datetime.combine(
            local.date() + datetime.timedelta(days=1), datetime.time(9), tzinfo=ZoneInfo(outside)
        )
        reason = f"send window of intro-email opens {opens:%Y-%m-%d} 09:00 {outside}"
        assert state["holding"] == {
            "step_id": "intro-email",
            "until": f"{opens.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}",
            "reason": reason,
        }
        shown = (await cli("runs", "show", held)).stdout.splitlines()
        until = f"{opens.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
        assert f"holding:      {until} ({reason})" in shown
        assert "current step: intro-email" in shown
        # And the API says the same.
        async with api_server(dev_env, tmp_path / "api.db") as up:
            answer = await up.http.get(f"/v1/runs/{held}")
        assert answer.json()["holding"] == {
            "stepId": "intro-email",
            "until": until,
            "reason": reason,
        }

        # The Temporal UI shows the hold's timer with the same words.
        history = await dev_env.client.get_workflow_handle(held).fetch_history()
        converter = dev_env.client.data_converter.payload_converter
        timers = [
            converter.from_payload(event.user_metadata.summary, str)
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED
        ]
        assert timers == [reason]
        assert len(smtp.handler.messages) == 1
    finally:
        await cli("runs", "cancel", held)
    with pytest.raises(WorkflowFailureError):
        await run_result(dev_env, held, timeout=30)
