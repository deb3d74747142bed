"""``dee runs start PLAN --contacts FILE``, run as real processes against the Temporal dev
server, with DEE's worker running in the test and a real SMTP server catching its emails."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.cli.test_runs import EXAMPLES, Cli, cli  # noqa: F401  (the fixture)
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import executable

#: The intro email, then an hour's wait: the runs stay active while the test looks.
EMAIL_PLAN = """\
id: PLAN_ID
name: Bulk intro
metadata: {createdBy: tests}
steps:
  - {type: sendEmail, id: intro-email, templateId: tmpl_intro, subject: "Introducing {{product}}"}
  - {type: wait, id: pause, duration: {hours: 1}}
  - {type: end, id: done, outcome: waited}
transitions: linear
"""
#: Only the wait: nothing to send, so thousands of runs cost the worker little.
WAIT_PLAN = """\
id: PLAN_ID
name: Bulk wait
metadata: {createdBy: tests}
steps:
  - {type: wait, id: pause, duration: {hours: 1}}
  - {type: end, id: done, outcome: waited}
transitions: linear
"""


async def create_plan(cli: Cli, folder: Path, text: str) -> str:  # noqa: F811
    plan_id = f"bulk-{uuid.uuid4().hex[:8]}"
    path = folder / f"{plan_id}.yaml"
    path.write_text(text.replace("PLAN_ID", plan_id), encoding="utf-8")
    await cli("plans", "create", path, "--content", EXAMPLES / "content")
    return plan_id


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


async def test_a_csv_of_contacts_is_started_row_by_row_and_again_safely(
    cli: Cli,  # noqa: F811
    smtp: SmtpServer,
    tmp_path: Path,
) -> None:
    plan_id = await create_plan(cli, tmp_path, EMAIL_PLAN)
    tag = uuid.uuid4().hex[:6]
    await cli("suppressions", "add", f"eve-{tag}@example.com", "--reason", "bounce")
    contacts = write_csv(
        tmp_path / "contacts.csv",
        ["email", "firstName", "var.product"],
        [
            [f"ana-{tag}@example.com", "Ana", ""],  # row 2
            [f"bo-{tag}@example.com", "Bo", "Other"],  # its own product
            [f"cy-{tag}@example.com", "", ""],  # no first name
            [f"dee-{tag}@example.com\r\nBcc: all@evil.test", "Dee", ""],
            [f"eve-{tag}@example.com", "Eve", ""],  # suppressed
            [f"ANA-{tag}@Example.com", "Ana", ""],  # row 2, spelt otherwise
            [f"fay-{tag}@example.com", "Fay", "", "extra"],
            [f"gus-{tag}@example.com", "Gus", ""],
        ],
    )
    start = ("runs", "start", plan_id, "--contacts", contacts, "--var", "product=DEE")

    first = await cli(*start, "--concurrency", "3", status=1)
    summary, *refused = first.stdout.splitlines()
    assert re.fullmatch(
        r"8 rows: started 3, duplicate 1, suppressed 1, invalid 3 in \d+\.\d s", summary
    ), summary
    assert refused[1].startswith("row 5: invalid: contact: id: String should match pattern")
    assert refused[1].endswith("(invalid-contact)")
    assert refused[:1] + refused[2:] == [
        "row 4: invalid: missing variables contact.firstName (missing-variables)",
        "row 6: suppressed: the contact's email address is suppressed (bounce, from cli) "
        "(contact-suppressed)",
        "row 8: invalid: 4 cells, the header names 3 (invalid-row)",
    ]
    # Without a terminal, progress is plain lines on stderr, the last one at the end.
    assert first.stderr.splitlines()[-1] == "8/8 rows: 3 started, 1 already, 4 refused"
    assert "example.com" not in first.stdout + first.stderr
    assert "evil" not in first.stdout + first.stderr
    # The worker runs them: the three started contacts get their email, once each.
    wanted = {f"{name}-{tag}@example.com" for name in ("ana", "bo", "gus")}
    deadline = time.monotonic() + 30
    while {to for m in smtp.handler.messages for to in m.rcpt_tos} != wanted:
        assert time.monotonic() < deadline, smtp.handler.messages
        await asyncio.sleep(0.2)
    subjects = sorted(m.message["Subject"] for m in smtp.handler.messages)
    assert subjects == ["Introducing DEE", "Introducing DEE", "Introducing Other"]

    again = await cli(*start, status=1)
    assert re.fullmatch(
        r"8 rows: already running 3, duplicate 1, suppressed 1, invalid 3 in \d+\.\d s",
        again.stdout.splitlines()[0],
    ), again.stdout
    assert again.stdout.splitlines()[1:] == refused
    await asyncio.sleep(0.5)
    assert len(smtp.handler.messages) == 3

    # Only good rows: status 0; JSON Lines rows too.
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"contact": {"email": f"hal-{tag}@example.com", "firstName": "Hal"}})
        + "\n"
        + json.dumps({"contact": {"email": f"bo-{tag}@example.com", "firstName": "Bo"}})
        + "\n",
        encoding="utf-8",
    )
    done = await cli("runs", "start", plan_id, "--contacts", good, "--var", "product=DEE")
    assert re.fullmatch(r"2 rows: started 1, already running 1 in \d+\.\d s\n", done.stdout)


async def test_files_it_cannot_read_and_options_that_clash(
    cli: Cli,  # noqa: F811
    tmp_path: Path,
) -> None:
    plan_id = await create_plan(cli, tmp_path, WAIT_PLAN)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"contact": {"id": "a"}}\n{"contact": \n', encoding="utf-8")
    unnamed = tmp_path / "contacts.txt"
    unnamed.write_text("id\na\n", encoding="utf-8")
    start = ("runs", "start", plan_id)
    missing, not_json, no_format, both, neither = await asyncio.gather(
        cli(*start, "--contacts", tmp_path / "missing.csv", status=2),
        cli(*start, "--contacts", broken, status=2),
        cli(*start, "--contacts", unnamed, status=2),
        cli(*start, "--contacts", broken, "--contact", '{"id": "a"}', status=2),
        cli(*start, status=2),
    )
    assert "Invalid value for --contacts: cannot read" in missing.stderr
    assert (
        "Invalid value for --contacts: line 2 is not JSON: Expecting value (column 13)"
        in not_json.stderr
    )
    assert "name it .csv, .jsonl or .json" in no_format.stderr
    assert "give either --contact JSON or --contacts FILE" in both.stderr
    assert "give either --contact JSON or --contacts FILE" in neither.stderr
    # Nothing started from the file that could not be read.
    assert "started" not in not_json.stdout + not_json.stderr


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGKILL], ids=["int", "kill"])
async def test_an_interrupted_start_runs_again_without_starting_anything_twice(
    cli: Cli,  # noqa: F811
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    interrupt: signal.Signals,
) -> None:
    plan_id = await create_plan(cli, tmp_path, WAIT_PLAN)
    count = 600
    ids = [f"crm-{number:04d}" for number in range(count)]
    contacts = write_csv(tmp_path / "many.csv", ["id", "firstName"], [[i, "X"] for i in ids])
    process = await asyncio.create_subprocess_exec(
        executable("dee"),
        *map(str, ("runs", "start", plan_id, "--contacts", contacts, "--concurrency", "2")),
        env=cli.env,
        cwd=cli.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None and process.stdout is not None
    started_before = 0
    async with asyncio.timeout(60):
        while started_before == 0:
            line = (await process.stderr.readline()).decode()
            assert line, "the command ended before showing progress"
            found = re.fullmatch(r"(\d+)/600 rows: (\d+) started, .*\n", line)
            if found:
                started_before = int(found.group(2))
    process.send_signal(interrupt)
    rest = (await process.stderr.read()).decode()
    out = (await process.stdout.read()).decode()
    status = await process.wait()
    # The positive control: some rows had started, and the command did not get to the end.
    assert 0 < started_before < count
    assert "600 rows:" not in out
    if interrupt == signal.SIGINT:
        assert status == 130, rest
        assert "interrupted: " in rest and "run the same command again" in rest
    else:
        assert status == -signal.SIGKILL

    again = await cli("runs", "start", plan_id, "--contacts", contacts, "--concurrency", "8")
    found = re.fullmatch(
        r"600 rows: started (\d+), already running (\d+) in \d+\.\d s\n", again.stdout
    )
    assert found, again.stdout
    started, already = int(found.group(1)), int(found.group(2))
    assert started + already == count
    assert already >= started_before
    # Every row has exactly one run: one execution per id, none missing, none twice.
    query = f"DeePlanId = '{plan_id}'"
    deadline = time.monotonic() + 30
    while True:
        runs = [execution.id async for execution in dev_env.client.list_workflows(query)]
        if len(runs) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert sorted(runs) == sorted(f"{plan_id}:{i}" for i in ids)
