"""The run client against the Temporal dev server, with the real worker and SMTP server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from dee.errors import MissingVariablesError
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs.client import (
    RunSummary,
    cancel_run,
    list_runs,
    run_state,
    send_event,
    start_run,
)
from dee.runs.errors import (
    RunAlreadyStartedError,
    RunClosedError,
    RunNotFoundError,
    RunUnavailableError,
)
from dee.runs.ledger import SendLedger
from dee.settings import Settings
from tests.helpers.plans import simple_plan
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import run_result, running_worker

_T = TypeVar("_T")

CONTACT = {"email": "ana@example.com", "firstName": "Ana"}
VARIABLES = {"product": "DEE"}


def quick_plan(plan_id: str) -> ExecutionPlan:
    """The spec plan's shape with a two-second wait: email, wait, branch, end."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Quick intro",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "intro-email",
                    "templateId": "tmpl_intro",
                    "subject": "Introducing {{ product }}",
                },
                {"type": "wait", "id": "wait-for-reply", "duration": {"seconds": 2}},
                {
                    "type": "branch",
                    "id": "check-response",
                    "conditions": [
                        {"when": 'events.hasReply("intro-email")', "goto": "end-replied"},
                        {"when": "default", "goto": "end-silent"},
                    ],
                },
                {"type": "end", "id": "end-replied", "outcome": "replied"},
                {"type": "end", "id": "end-silent", "outcome": "no-response"},
            ],
            "transitions": "linear",
        }
    )


QUICK_CONTENT = PlanContent(
    templates={
        "tmpl_intro": EmailTemplate(html="<p>Hi {{ contact.firstName }}, meet {{ product }}</p>")
    }
)


@pytest.fixture
def database_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dee.db'}"


@pytest.fixture
def version(database_file: str) -> PlanVersion:
    # Plan ids are unique per test: the dev server, and so run ids, are shared by the session.
    with PlanRegistry(database_file) as registry:
        return registry.create(quick_plan(f"quick-{uuid.uuid4().hex[:8]}"), QUICK_CONTENT)


@pytest_asyncio.fixture
async def worker(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, database_file: str
) -> AsyncIterator[None]:
    settings = Settings(
        database_url=database_file,
        smtp_url=smtp.url,
        secret_key="test-secret",
        from_address="dee@example.com",
        task_queue=task_queue,
    )
    with SendLedger(database_file) as ledger:
        async with running_worker(
            dev_env.client, task_queue=task_queue, settings=settings, ledger=ledger
        ):
            yield


async def eventually(
    read: Callable[[], Awaitable[_T]], holds: Callable[[_T], bool], *, timeout: float = 15
) -> _T:
    """``read()`` once ``holds`` of it: visibility lags the runs by a second or so."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if holds(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_start_refuses_missing_variables_before_anything_starts(
    dev_env: WorkflowEnvironment, version: PlanVersion, task_queue: str
) -> None:
    with pytest.raises(MissingVariablesError) as raised:
        await start_run(
            dev_env.client, version, contact={"email": "ana@example.com"}, task_queue=task_queue
        )
    assert raised.value.missing == ("contact.firstName", "product")
    assert "contact.firstName, product" in str(raised.value)
    # No workflow was started under the run id it would have had.
    with pytest.raises(RunNotFoundError):
        await run_state(dev_env.client, f"{version.plan.id}:ana@example.com")


async def test_a_run_with_a_reply_ends_replied(
    dev_env: WorkflowEnvironment,
    worker: None,
    version: PlanVersion,
    smtp: SmtpServer,
    task_queue: str,
) -> None:
    client = dev_env.client
    plan_id = version.plan.id
    run_id = await start_run(
        client, version, contact=CONTACT, variables=VARIABLES, task_queue=task_queue
    )
    assert run_id == f"{plan_id}:ana@example.com"

    with pytest.raises(RunAlreadyStartedError) as raised:
        await start_run(
            client, version, contact=CONTACT, variables=VARIABLES, task_queue=task_queue
        )
    assert raised.value.run_id == run_id
    assert str(raised.value) == (
        f"run {run_id} is already active: cancel it first with `dee runs cancel {run_id}` "
        "or pass --run-id"
    )

    event = await send_event(client, run_id, type="reply", step_id="intro-email")
    # The same event again (same id) is dropped by the run.
    await send_event(client, run_id, type="reply", step_id="intro-email", event_id=event.event_id)
    result = await run_result(dev_env, run_id)
    assert (result.outcome, result.step_id) == ("replied", "end-replied")

    [message] = smtp.handler.messages
    assert message.rcpt_tos == ("ana@example.com",)
    assert message.message["Subject"] == "Introducing DEE"

    state = await run_state(client, run_id)
    assert (state.plan_id, state.plan_version, state.contact_id) == (plan_id, 1, "ana@example.com")
    assert (state.status, state.outcome, state.failure) == ("completed", "replied", None)
    assert [visit.step_id for visit in state.history] == [
        "intro-email",
        "wait-for-reply",
        "check-response",
        "end-replied",
    ]
    assert [(e.event_id, e.type, e.step_id) for e in state.events] == [
        (event.event_id, "reply", "intro-email")
    ]

    with pytest.raises(RunClosedError):
        await send_event(client, run_id, type="open", step_id="intro-email")
    with pytest.raises(RunClosedError):
        await cancel_run(client, run_id)

    summaries = await eventually(
        lambda: list_runs(client, plan_id=plan_id),
        lambda runs: [run.status for run in runs] == ["completed"],
    )
    assert [summary.model_dump(exclude={"started_at", "closed_at"}) for summary in summaries] == [
        RunSummary(
            run_id=run_id,
            status="completed",
            plan_id=plan_id,
            plan_version=1,
            contact_id="ana@example.com",
            current_step="end-replied",
            outcome="replied",
            started_at=summaries[0].started_at,
        ).model_dump(exclude={"started_at", "closed_at"})
    ]
    assert summaries[0].closed_at is not None


async def test_a_finished_run_id_can_start_again_and_be_cancelled(
    dev_env: WorkflowEnvironment,
    worker: None,
    version: PlanVersion,
    smtp: SmtpServer,
    task_queue: str,
) -> None:
    client = dev_env.client
    run_id = f"custom-{uuid.uuid4().hex[:8]}"
    assert (
        await start_run(
            client,
            version,
            contact=CONTACT,
            variables=VARIABLES,
            run_id=run_id,
            task_queue=task_queue,
        )
        == run_id
    )
    assert (await run_result(dev_env, run_id)).outcome == "no-response"

    await start_run(
        client, version, contact=CONTACT, variables=VARIABLES, run_id=run_id, task_queue=task_queue
    )
    # Cancelled in its wait (a cancel that lands mid-send is the workflow tests' business).
    await eventually(
        lambda: run_state(client, run_id), lambda state: state.current_step == "wait-for-reply"
    )
    await cancel_run(client, run_id)
    with pytest.raises(WorkflowFailureError):
        await run_result(dev_env, run_id)
    state = await run_state(client, run_id)
    assert (state.status, state.outcome) == ("completed", "cancelled")
    assert len(smtp.handler.messages) == 2


async def test_unknown_runs_are_not_found(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    with pytest.raises(RunNotFoundError) as raised:
        await send_event(client, "no-such-run", type="reply")
    assert raised.value.run_id == "no-such-run"
    with pytest.raises(RunNotFoundError):
        await run_state(client, "no-such-run")
    with pytest.raises(RunNotFoundError):
        await cancel_run(client, "no-such-run")


async def test_list_runs_filters_by_plan(
    dev_env: WorkflowEnvironment, database_file: str, task_queue: str
) -> None:
    client = dev_env.client
    suffix = uuid.uuid4().hex[:8]
    with PlanRegistry(database_file) as registry:
        first = registry.create(simple_plan(f"first-{suffix}"))
        second = registry.create(simple_plan(f"second-{suffix}"))
    # No worker polls this task queue: the runs wait, which is all listing needs.
    first_ids = [
        await start_run(client, first, contact={"id": f"c{i}"}, task_queue=task_queue)
        for i in range(2)
    ]
    second_id = await start_run(client, second, contact={"id": "c0"}, task_queue=task_queue)
    try:
        listed = await eventually(
            lambda: list_runs(client, plan_id=first.plan.id),
            lambda runs: len(runs) == 2,
        )
        assert sorted(run.run_id for run in listed) == sorted(first_ids)
        assert {(run.status, run.plan_id, run.plan_version) for run in listed} == {
            ("running", first.plan.id, 1)
        }
        everything = await eventually(
            lambda: list_runs(client), lambda runs: second_id in {run.run_id for run in runs}
        )
        assert {*first_ids, second_id} <= {run.run_id for run in everything}
        assert await list_runs(client, plan_id="it's-not-an-id") == []
        assert len(await list_runs(client, limit=1)) == 1
    finally:
        for run_id in [*first_ids, second_id]:
            await client.get_workflow_handle(run_id).terminate(reason="test over")


async def test_state_without_a_worker(
    dev_env: WorkflowEnvironment, database_file: str, task_queue: str
) -> None:
    client = dev_env.client
    with PlanRegistry(database_file) as registry:
        version = registry.create(simple_plan(f"lonely-{uuid.uuid4().hex[:8]}"))
    run_id = await start_run(client, version, contact={"id": "c1"}, task_queue=task_queue)
    started = time.monotonic()
    # No worker has ever polled the queue: say so at once rather than wait for an answer.
    with pytest.raises(RunUnavailableError, match="no worker has polled task queue"):
        await run_state(client, run_id)
    event = await send_event(client, run_id, type="open", details={"ip": "127.0.0.1"})
    await client.get_workflow_handle(run_id).terminate(reason="operator stopped it")

    # An ended run's state comes from its history.
    state = await run_state(client, run_id)
    assert time.monotonic() - started < 5
    assert (state.plan_id, state.contact_id, state.status) == (version.plan.id, "c1", "completed")
    assert state.outcome == "failed"
    assert state.failure is not None
    assert (state.failure.kind, state.failure.reason) == (
        "terminated",
        "the run was terminated: operator stopped it",
    )
    assert state.events == (event,)


async def test_time_skipping_env_skips_a_long_wait(
    time_skipping_env: WorkflowEnvironment, task_queue: str, database_file: str
) -> None:
    """The session's time-skipping server knows DEE's search attributes and skips timers."""
    client = time_skipping_env.client
    with PlanRegistry(database_file) as registry:
        version = registry.create(simple_plan("long-wait", hours=72))
    settings = Settings(database_url=database_file, secret_key="test-secret")
    started = time.monotonic()
    with SendLedger(database_file) as ledger:
        async with running_worker(client, task_queue=task_queue, settings=settings, ledger=ledger):
            run_id = await start_run(client, version, contact={"id": "c1"}, task_queue=task_queue)
            result = await run_result(time_skipping_env, run_id)
            state = await run_state(client, run_id)
    assert (result.outcome, state.outcome) == ("finished", "finished")
    assert [visit.result for visit in state.history] == ["waited 3d", "outcome finished"]
    assert time.monotonic() - started < 20
