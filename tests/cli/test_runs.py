"""``dee runs``, run as real processes against the Temporal dev server, with DEE's worker
running in the test and a real SMTP server catching what it sends."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from dee.runs.ledger import SendLedger
from dee.settings import Settings
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import executable, run_result, running_worker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPEC_PLAN = EXAMPLES / "spec-plan.yaml"
ANA = '{"email": "ana@example.com", "firstName": "Ana"}'

# The spec plan's shape, waiting ten seconds instead of three and a half days: long enough
# for the event commands (each a new Python process) to land first on a loaded 2-core machine.
QUICK_PLAN = """\
id: PLAN_ID
name: Quick intro
metadata: {createdBy: tests}
steps:
  - {type: sendEmail, id: intro-email, templateId: tmpl_intro, subject: "Introducing {{product}}"}
  - {type: wait, id: wait-for-reply, duration: {seconds: 10}}
  - type: branch
    id: check-response
    conditions:
      - {when: 'events.hasReply("intro-email")', goto: end-replied}
      - {when: 'events.hasOpen("intro-email")', goto: warm-follow-up}
      - {when: default, goto: cold-follow-up}
  - type: sendEmail
    id: warm-follow-up
    templateId: tmpl_warm_follow_up
    subject: "Following up on {{product}}"
  - type: sendEmail
    id: cold-follow-up
    templateId: tmpl_cold_follow_up
    subject: "Did you see my note about {{product}}?"
  - {type: end, id: end-replied, outcome: replied}
  - {type: end, id: end-warm, outcome: warm}
  - {type: end, id: end-cold, outcome: cold}
transitions:
  - {from: intro-email, to: wait-for-reply}
  - {from: wait-for-reply, to: check-response}
  - {from: warm-follow-up, to: end-warm}
  - {from: cold-follow-up, to: end-cold}
"""


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Cli:
    """Runs the installed ``dee`` command with the test's environment."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str | Path, status: int | None = 0) -> Result:
        process = await asyncio.create_subprocess_exec(
            executable("dee"),
            *map(str, args),
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        result = Result(process.returncode, out.decode(), err.decode())
        if status is not None:
            assert result.status == status, result
        return result


def cli_env(dev_env: WorkflowEnvironment, folder: Path, database: str) -> dict[str, str]:
    """This process's environment pointed at the dev server (and no profile file) and at
    ``database``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEMPORAL_")}
    env.update(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=dev_env.client.namespace,
        TEMPORAL_CONFIG_FILE=str(folder / "no-temporal-profiles.toml"),
        DEE_DATABASE_URL=database,
    )
    return env


@pytest_asyncio.fixture
async def cli(
    dev_env: WorkflowEnvironment, smtp: SmtpServer, tmp_path: Path, task_queue: str
) -> AsyncIterator[Cli]:
    """The ``dee`` command pointed at the dev server, with a worker running for it."""
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    env = cli_env(dev_env, tmp_path, database)
    env.update(
        DEE_SECRET_KEY="test-secret",
        DEE_SMTP_URL=smtp.url,
        DEE_TASK_QUEUE=task_queue,
    )
    settings = Settings.from_env(env)
    with SendLedger(database) as ledger:
        async with running_worker(
            dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
        ):
            yield Cli(env=env, cwd=tmp_path)


async def test_spec_plan_through_the_cli(
    cli: Cli, dev_env: WorkflowEnvironment, smtp: SmtpServer
) -> None:
    assert (await cli("plans", "create", SPEC_PLAN)).stdout == "outbound-intro v1\n"

    refused = await cli(
        "runs", "start", "outbound-intro", "--contact", '{"email": "ana@example.com"}', status=1
    )
    assert refused.stdout == ""
    assert refused.stderr == (
        "error: missing variables contact.firstName, product: "
        "give them in the contact or as run variables\n"
    )

    started = await cli("runs", "start", "outbound-intro", "--contact", ANA, "--var", "product=DEE")
    run_id = started.stdout.strip()
    # The contact id is a keyed hash of the address: the run id carries no address.
    assert re.fullmatch(r"outbound-intro:c-[a-z2-7]{24}", run_id), run_id
    contact_id = run_id.partition(":")[2]
    try:
        again = await cli(
            "runs", "start", "outbound-intro", "--contact", ANA, "--var", "product=DEE", status=1
        )
        assert again.stderr == (
            f"error: run {run_id} is already active: cancel it first with "
            f"`dee runs cancel {run_id}` or pass --run-id\n"
        )

        event = await cli("runs", "event", run_id, "reply", "--step", "intro-email", "--id", "r1")
        assert event.stdout == "r1\n"

        # The intro email goes out, then the run waits three and a half days.
        state = await _until(cli, run_id, lambda state: state["current_step"] == "wait-for-reply")
        assert [visit["step_id"] for visit in state["history"]] == ["intro-email", "wait-for-reply"]
        [message] = smtp.handler.messages
        assert message.message["Subject"] == "Introducing DEE"

        shown = (await cli("runs", "show", run_id)).stdout.splitlines()
        assert shown[:6] == [
            f"run:          {run_id}",
            "plan:         outbound-intro v1",
            f"contact:      {contact_id}",
            "status:       running",
            "current step: wait-for-reply",
            "",
        ]
        assert shown[6] == "history (2 steps):"
        assert shown[7].split() == ["STARTED", "FINISHED", "STEP", "TYPE", "RESULT"]
        assert shown[8].split()[2:4] == ["intro-email", "sendEmail"]
        assert shown[8].split()[4] == "sent"
        assert shown[9].split()[1:] == ["-", "wait-for-reply", "wait", "(in", "progress)"]
        assert shown[10:12] == ["", "events (1 event):"]
        assert len(shown) == 14
        assert shown[12].split() == ["AT", "TYPE", "STEP", "EVENT", "ID"]
        assert shown[13].split()[1:] == ["reply", "intro-email", "r1"]

        listed = await _listed(cli, ["--plan", "outbound-intro"], lambda rows: len(rows) == 1)
        assert listed[0]["run_id"] == run_id
        # Found by the address it was started with, however it is spelt, and by its id.
        # (The session's dev server also holds other tests' runs for this address, under
        # the address itself or ids of their own choosing: only the id filter is exact.)
        mine = await _listed(cli, ["--contact", contact_id], lambda rows: len(rows) == 1)
        assert [row["run_id"] for row in mine] == [run_id]
        by_address = await _listed(
            cli,
            ["--contact", " Ana@Example.COM", "--limit", "1000"],
            lambda rows: run_id in [row["run_id"] for row in rows],
        )
        assert run_id in [row["run_id"] for row in by_address]
        assert {row["contact_id"] for row in by_address} <= {contact_id, "ana@example.com"}
        assert (
            await _listed(cli, ["--contact", "bob@example.com"], lambda rows: False, timeout=0)
            == []
        )
        assert (listed[0]["status"], listed[0]["current_step"]) == ("running", "wait-for-reply")
    finally:
        cancelled = await cli("runs", "cancel", run_id)
    assert cancelled.stdout == f"cancel requested: {run_id}\n"
    with pytest.raises(WorkflowFailureError):
        await run_result(dev_env, run_id, timeout=30)
    state = json.loads((await cli("runs", "show", run_id, "--json")).stdout)
    assert (state["run_id"], state["status"], state["outcome"]) == (
        run_id,
        "completed",
        "cancelled",
    )
    table = await _until_table(cli, "outbound-intro", "cancelled")
    assert table[0].split() == [
        "RUN",
        "ID",
        "STATUS",
        "PLAN",
        "CONTACT",
        "STEP",
        "OUTCOME",
        "STARTED",
        "CLOSED",
    ]
    assert table[1].split()[:7] == [
        run_id,
        "cancelled",
        "outbound-intro",
        "v1",
        contact_id,
        "wait-for-reply",
        "cancelled",
    ]


async def test_reply_open_and_silence_take_their_branches(
    cli: Cli, dev_env: WorkflowEnvironment, smtp: SmtpServer, tmp_path: Path
) -> None:
    plan_id = f"quick-{uuid.uuid4().hex[:8]}"
    plan_file = tmp_path / "quick.yaml"
    plan_file.write_text(QUICK_PLAN.replace("PLAN_ID", plan_id), encoding="utf-8")
    created = await cli("plans", "create", plan_file, "--content", EXAMPLES / "content")
    assert created.stdout == f"{plan_id} v1\n"

    async def start(name: str) -> str:
        contact = json.dumps({"email": f"{name}@example.com", "firstName": name.title()})
        result = await cli("runs", "start", plan_id, "--contact", contact, "--var", "product=DEE")
        return result.stdout.strip()

    # Three processes at once on a new database: they agree on one contact id key.
    replied, opened, silent = await asyncio.gather(start("rita"), start("otto"), start("sam"))
    assert all(
        re.fullmatch(rf"{plan_id}:c-[a-z2-7]{{24}}", run) for run in (replied, opened, silent)
    )
    assert len({replied, opened, silent}) == 3
    await asyncio.gather(
        cli("runs", "event", replied, "reply", "--step", "intro-email"),
        cli("runs", "event", opened, "open", "--step", "intro-email"),
    )
    outcomes = await asyncio.gather(
        *(run_result(dev_env, run_id, timeout=30) for run_id in (replied, opened, silent))
    )
    assert [(result.outcome, result.step_id) for result in outcomes] == [
        ("replied", "end-replied"),
        ("warm", "end-warm"),
        ("cold", "end-cold"),
    ]

    subjects: dict[str, list[str]] = {}
    for message in smtp.handler.messages:
        for recipient in message.rcpt_tos:
            subjects.setdefault(recipient, []).append(str(message.message["Subject"]))
    assert subjects == {
        "rita@example.com": ["Introducing DEE"],
        "otto@example.com": ["Introducing DEE", "Following up on DEE"],
        "sam@example.com": ["Introducing DEE", "Did you see my note about DEE?"],
    }

    shown = (await cli("runs", "show", opened)).stdout.splitlines()
    assert shown[3:6] == [
        "status:       completed",
        "current step: end-warm",
        "outcome:      warm",
    ]
    steps = [line.split()[2] for line in shown[9:14]]
    assert steps == [
        "intro-email",
        "wait-for-reply",
        "check-response",
        "warm-follow-up",
        "end-warm",
    ]
    assert shown[11].split()[4:] == ["->", "warm-follow-up"]
    assert shown[13].split()[4:] == ["outcome", "warm"]

    listed = await _listed(cli, ["--plan", plan_id], lambda rows: len(rows) == 3)
    assert sorted((row["run_id"], row["status"], row["outcome"]) for row in listed) == sorted(
        [
            (opened, "completed", "warm"),
            (replied, "completed", "replied"),
            (silent, "completed", "cold"),
        ]
    )
    assert {row["contact_id"] for row in listed} == {
        run.partition(":")[2] for run in (replied, opened, silent)
    }


async def test_cli_errors(cli: Cli) -> None:
    (
        unknown_event,
        unknown_show,
        unknown_cancel,
        no_plan,
        bad_json,
        bad_contact,
        bad_var,
        bad_type,
        empty,
    ) = await asyncio.gather(
        cli("runs", "event", "no-such-run", "reply", status=1),
        cli("runs", "show", "no-such-run", status=1),
        cli("runs", "cancel", "no-such-run", status=1),
        cli("runs", "start", "no-such-plan", "--contact", ANA, status=1),
        cli("runs", "start", "any", "--contact", "{oops", status=2),
        cli("runs", "start", "any", "--contact", '{"firstName": "Ana"}', status=2),
        cli("runs", "start", "any", "--contact", ANA, "--var", "product", status=2),
        cli("runs", "event", "some-run", "smoke-signal", status=2),
        cli("runs", "list", "--plan", "nothing-here"),
    )
    not_found = "error: run 'no-such-run' does not exist: see `dee runs list`\n"
    assert unknown_event.stderr == unknown_show.stderr == unknown_cancel.stderr == not_found
    assert no_plan.stderr == "error: plan 'no-such-plan' does not exist: see `dee plans list`\n"
    assert "Invalid value for '--contact': not JSON" in bad_json.stderr
    assert "id: Field required" in bad_contact.stderr
    assert "expected KEY=VALUE" in bad_var.stderr
    assert "Invalid value for 'TYPE'" in bad_type.stderr
    assert (empty.stdout, empty.stderr) == (
        "",
        "no runs yet: start one with dee runs start PLAN_ID --contact JSON\n",
    )


async def _until(
    cli: Cli, run_id: str, holds: Callable[[dict[str, Any]], bool], *, timeout: float = 20
) -> dict[str, Any]:
    """``dee runs show --json`` once ``holds`` of it."""
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = json.loads((await cli("runs", "show", run_id, "--json")).stdout)
        if holds(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.3)


async def _listed(
    cli: Cli,
    options: list[str],
    holds: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """``dee runs list OPTIONS --json`` once ``holds``: visibility lags the runs a little."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = json.loads(
            (await cli("runs", "list", *options, "--json")).stdout
        )
        if holds(rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.3)


async def _until_table(cli: Cli, plan_id: str, outcome: str, *, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = (await cli("runs", "list", "--plan", plan_id)).stdout.splitlines()
        if (len(lines) > 1 and outcome in lines[1].split()) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.3)
