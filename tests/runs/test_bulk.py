"""Starting runs in bulk (:mod:`dee.runs.bulk`) against the Temporal dev server, with the
suppression list and contact id key in a real SQLite database; and the readers of contact
files (:mod:`dee.runs.contact_files`)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.bulk import BulkSummary, ContactRow, RowResult, start_runs
from dee.runs.contact_files import (
    ContactFileError,
    read_contacts,
    rows_from_csv,
    rows_from_json_array,
    rows_from_json_lines,
)
from dee.runs.contacts import ContactIds
from dee.runs.model import MAX_CONTACT_AND_VARIABLES_BYTES
from dee.runs.suppressions import Suppressions
from dee.runs.temporal import data_converter
from tests.helpers.temporal import start_dev_env


def waiting_plan(plan_id: str) -> ExecutionPlan:
    """Email, then wait an hour: runs stay active while the test looks at them (no worker
    runs here, so none gets past its first task anyway)."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Bulk",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {"type": "sendEmail", "id": "hello", "templateId": "hello", "subject": "Hi"},
                {"type": "wait", "id": "pause", "duration": {"hours": 1}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


CONTENT = PlanContent(
    templates={"hello": EmailTemplate(html="<p>{{ contact.firstName }}, {{ product }}</p>")}
)


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dee.db'}"


@pytest.fixture
def version(database: str) -> Iterator[PlanVersion]:
    with PlanRegistry(database) as registry:
        yield registry.create(waiting_plan(f"bulk-{uuid.uuid4().hex[:8]}"), CONTENT)


def person(number: int, **extra: Any) -> dict[str, Any]:
    return {"email": f"person{number}@example.com", "firstName": f"P{number}", **extra}


def by_row(results: tuple[RowResult, ...]) -> dict[int, tuple[str, str | None]]:
    return {result.row: (result.status, result.code) for result in results}


async def test_each_row_ends_one_way_and_a_rerun_starts_nothing_twice(
    dev_env: WorkflowEnvironment, database: str, version: PlanVersion, task_queue: str
) -> None:
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    rows = [
        ContactRow(1, person(1)),
        ContactRow(2, person(2), {"product": "Other"}),  # its own value over the shared one
        ContactRow(3, {"email": "person3@example.com"}),  # no firstName
        ContactRow(4, {"email": "person4@example.com\r\nBcc: x@evil.test", "firstName": "X"}),
        ContactRow(5, person(5)),  # suppressed below
        ContactRow(6, person(1)),  # row 1 again
        ContactRow(7, person(7, history=deep)),
        ContactRow(8, person(8, notes="x" * MAX_CONTACT_AND_VARIABLES_BYTES)),
        ContactRow(9, person(9), run_id="has spaces"),
        ContactRow(10, {}, problem="expected an object with `contact`"),
        ContactRow(11, person(11, id="crm-11")),
    ]
    with ContactIds(database) as contact_ids, Suppressions(database) as suppressions:
        suppressions.suppress("PERSON5@example.com", reason="bounce")
        seen: list[RowResult] = []
        common: dict[str, Any] = {
            "variables": {"product": "DEE"},
            "task_queue": task_queue,
            "contact_ids": contact_ids,
            "suppressions": suppressions,
        }
        first = await start_runs(
            dev_env.client, version, rows, concurrency=4, on_result=seen.append, **common
        )
        plan_id = version.plan.id
        assert by_row(first.rows) == {
            1: ("started", None),
            2: ("started", None),
            3: ("invalid", "missing-variables"),
            4: ("invalid", "invalid-contact"),
            5: ("suppressed", "contact-suppressed"),
            6: ("duplicate", "duplicate-row"),
            7: ("invalid", "invalid-run-input"),
            8: ("invalid", "run-input-too-large"),
            9: ("invalid", "invalid-run-input"),
            10: ("invalid", "invalid-row"),
            11: ("started", None),
        }
        assert sorted(result.row for result in seen) == list(range(1, 12))
        assert first.summary == BulkSummary(
            total=11, started=3, duplicate=1, suppressed=1, invalid=6
        )
        assert [result.row for result in first.refused] == [3, 4, 5, 7, 8, 9, 10]
        reasons = {result.row: result.reason for result in first.rows}
        assert reasons[3] == "missing variables contact.firstName"
        assert reasons[5] == "the contact's email address is suppressed (bounce, from manual)"
        assert reasons[6] == "the same run as row 1"
        assert reasons[7] == "the contact nests deeper than 32 levels of lists and objects"
        # No reason repeats what the row said about the contact.
        assert not any("example.com" in (reason or "") for reason in reasons.values())
        assert not any("evil" in (reason or "") for reason in reasons.values())
        # Default run ids carry the keyed hash, never the address; a given id is kept.
        run_ids = {result.row: result.run_id for result in first.rows if result.run_id}
        assert run_ids[1] == run_ids[6] == f"{plan_id}:{contact_ids.id_for('person1@example.com')}"
        assert re.fullmatch(rf"{plan_id}:c-[a-z2-7]{{24}}", run_ids[2])
        assert run_ids[11] == f"{plan_id}:crm-11"
        executions = {}
        for row in (1, 2, 11):
            description = await dev_env.client.get_workflow_handle(run_ids[row]).describe()
            assert description.status == WorkflowExecutionStatus.RUNNING
            executions[row] = description.run_id

        again = await start_runs(dev_env.client, version, rows, **common)
    assert {row: status for row, (status, _) in by_row(again.rows).items()} == {
        **{row: status for row, (status, _) in by_row(first.rows).items()},
        1: "already-running",
        2: "already-running",
        11: "already-running",
    }
    assert again.summary.started == 0 and again.summary.already_running == 3
    # Each started run is still the one execution its id has.
    for row in (1, 2, 11):
        description = await dev_env.client.get_workflow_handle(run_ids[row]).describe()
        assert description.run_id == executions[row]


async def test_an_ended_run_is_reported_not_restarted_unless_asked(
    dev_env: WorkflowEnvironment, database: str, version: PlanVersion, task_queue: str
) -> None:
    rows = [ContactRow(1, person(1, id=f"ended-{uuid.uuid4().hex[:6]}"))]
    common: dict[str, Any] = {"variables": {"product": "DEE"}, "task_queue": task_queue}
    first = await start_runs(dev_env.client, version, rows, **common)
    [started] = first.rows
    assert started.status == "started" and started.run_id is not None
    handle = dev_env.client.get_workflow_handle(started.run_id)
    await handle.terminate("the test ends it")
    kept = await start_runs(dev_env.client, version, rows, **common)
    assert [(row.status, row.run_id) for row in kept.rows] == [("already-ended", started.run_id)]
    assert kept.refused == ()
    restarted = await start_runs(dev_env.client, version, rows, restart_ended=True, **common)
    assert [row.status for row in restarted.rows] == ["started"]
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING


async def test_temporal_not_answering_fails_rows_after_the_retries(
    database: str, version: PlanVersion
) -> None:
    env = await start_dev_env()
    config = env.client.service_client.config
    client = await Client.connect(
        config.target_host,
        namespace=env.client.namespace,
        data_converter=data_converter,
        retry_config=RetryConfig(initial_interval_millis=10, max_retries=1),
    )
    await env.shutdown()  # the client stays, the server is gone
    rows = [ContactRow(number, person(number)) for number in (1, 2, 3)]
    result = await start_runs(
        client, version, rows, variables={"product": "DEE"}, concurrency=1, retries=2, backoff=0.01
    )
    assert [(row.status, row.code) for row in result.rows] == [
        ("failed", "temporal-unavailable")
    ] * 3
    assert result.rows[0].reason == "Temporal did not answer (UNAVAILABLE) in 3 tries"
    # The rows after it are not tried against a server that is gone: a re-run starts them.
    assert [row.reason for row in result.rows[1:]] == [f"not tried: {result.rows[0].reason}"] * 2
    assert result.summary.failed == 3


# Contact files ------------------------------------------------------------------------


def test_csv_columns_are_contact_fields_variables_and_run_ids() -> None:
    text = (
        "email,firstName,var.product,runId,id\n"
        "ana@example.com,Ana,DEE,,\n"
        "\n"
        'bo@example.com,"Bo\nB",X,r-1,crm-2\n'
        "cy@example.com,Cy,Y,,,extra\n"
    )
    rows = rows_from_csv(text)
    assert [(row.row, dict(row.contact), dict(row.variables), row.run_id) for row in rows] == [
        (2, {"email": "ana@example.com", "firstName": "Ana"}, {"product": "DEE"}, None),
        # A quoted cell across lines is one record: row 4, as a spreadsheet shows it.
        (
            4,
            {"email": "bo@example.com", "firstName": "Bo\nB", "id": "crm-2"},
            {"product": "X"},
            "r-1",
        ),
        (5, {}, {}, None),
    ]
    assert rows[2].problem == "6 cells, the header names 5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Nothing to name the columns.
        ("", "the CSV has no header line naming its columns"),
        # Two columns of one name.
        ("email,email\na,b\n", "the header repeats column 'email'"),
        # A variable column without a name.
        (
            "email,var.\na,b\n",
            "the header has a column `var.` without a name, or `var.contact` (reserved)",
        ),
    ],
)
def test_csv_that_cannot_be_read(text: str, message: str) -> None:
    with pytest.raises(ContactFileError) as caught:
        rows_from_csv(text)
    assert str(caught.value) == message and caught.value.line == 1


def test_json_lines_are_numbered_by_line_and_bad_lines_named() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    text = '{"contact": {"email": "a@example.com"}}\n\n[1]\n{"contact": {}, "x": 1}\n' + deep
    rows = rows_from_json_lines(text)
    assert [(row.row, row.problem) for row in rows] == [
        (1, None),
        (3, "expected an object with `contact`"),
        (4, "unknown fields: a row has `contact`, `variables`, `runId`"),
        (5, "nests too deep to read"),
    ]
    with pytest.raises(ContactFileError) as caught:
        rows_from_json_lines('{"contact": {}}\n{"contact": {"email": "secret@example.com"')
    assert caught.value.line == 2
    assert str(caught.value) == "line 2 is not JSON: Expecting ',' delimiter (column 43)"


def test_json_array_rows_and_refusals() -> None:
    rows = rows_from_json_array(json.dumps([{"contact": {"id": "a"}, "runId": 5}, "x"]))
    assert [(row.row, row.problem) for row in rows] == [
        (1, "`runId` must be a string"),
        (2, "expected an object with `contact`"),
    ]
    with pytest.raises(ContactFileError, match="expected a JSON array of rows"):
        rows_from_json_array('{"contact": {}}')
    with pytest.raises(ContactFileError, match="^line 3 is not JSON"):
        rows_from_json_array('[\n{"contact": {}},\n}')


def test_read_contacts_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("\ufeffemail\nana@example.com\n", encoding="utf-8")
    assert [dict(row.contact) for row in read_contacts(tmp_path / "c.csv")] == [
        {"email": "ana@example.com"}
    ]
    (tmp_path / "c.txt").write_text("email\n", encoding="utf-8")
    with pytest.raises(ContactFileError, match="name it .csv, .jsonl or .json"):
        read_contacts(tmp_path / "c.txt")
    (tmp_path / "bad.csv").write_bytes(b"email\n\xff\n")
    with pytest.raises(ContactFileError, match="is not UTF-8 text"):
        read_contacts(tmp_path / "bad.csv")
    with pytest.raises(ContactFileError, match="cannot read"):
        read_contacts(tmp_path / "missing.jsonl")
