"""Payload encryption end to end, on the Temporal dev server with the real worker and SMTP
server: what Temporal stores holds no contact data, DEE's clients still read every run, and
runs started under a key go on after a new key is put first."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan
from dee.plans.registry import PlanRegistry
from dee.plans.versions import PlanVersion
from dee.runs._history import run_input
from dee.runs.client import run_state, send_event, start_run
from dee.runs.codec import ENCODING, KEY_ID_METADATA, PayloadDecryptError
from dee.runs.ledger import SendLedger
from dee.runs.model import CONTACT_ID_ATTRIBUTE, RunResult
from dee.runs.temporal import data_converter_for
from dee.settings import Settings
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import running_worker, with_converter

KEY_A = "2026a:" + base64.b64encode(b"A" * 32).decode()
KEY_B = "2026b:" + base64.b64encode(b"B" * 32).decode()

#: What must never reach Temporal in the clear: the contact's address and name, a run
#: variable, the template's text and a mail server's reply that a failure message quotes.
ADDRESS = "zephyrine.quill@example.com"
NAME = "Zephyrine"
PRODUCT = "Quillfeather"
TEMPLATE_TEXT = "fjordwise"
CONTACT = {"id": "contact-7", "email": ADDRESS, "firstName": NAME}


def plan(plan_id: str, *, wait_seconds: int | None = None) -> ExecutionPlan:
    """An email; with ``wait_seconds``, then a wait and a branch on a reply."""
    steps: list[dict[str, Any]] = [
        {
            "type": "sendEmail",
            "id": "intro",
            "templateId": "tmpl",
            "subject": "Hello {{ contact.firstName }}",
        }
    ]
    if wait_seconds is not None:
        steps += [
            {"type": "wait", "id": "pause", "duration": {"seconds": wait_seconds}},
            {
                "type": "branch",
                "id": "check",
                "conditions": [
                    {"when": 'events.hasReply("intro")', "goto": "replied"},
                    {"when": "default", "goto": "done"},
                ],
            },
            {"type": "end", "id": "replied", "outcome": "replied"},
        ]
    steps.append({"type": "end", "id": "done", "outcome": "sent"})
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Encrypted",
            "metadata": {"createdBy": "tests"},
            "steps": steps,
            "transitions": "linear",
        }
    )


CONTENT = PlanContent(
    templates={
        "tmpl": EmailTemplate(
            html=f"<p>Hi {{{{ contact.firstName }}}}, {TEMPLATE_TEXT} {{{{ product }}}}</p>"
        )
    }
)


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dee.db'}"


def created(database: str, *, wait_seconds: int | None = None) -> PlanVersion:
    with PlanRegistry(database) as registry:
        return registry.create(
            plan(f"enc-{uuid.uuid4().hex[:8]}", wait_seconds=wait_seconds), CONTENT
        )


def worker_settings(database: str, smtp: SmtpServer, task_queue: str, *keys: str) -> Settings:
    return Settings(
        database_url=database,
        smtp_url=smtp.url,
        secret_key="test-secret",
        task_queue=task_queue,
        payload_keys=keys,
    )


def encrypting(env: WorkflowEnvironment, settings: Settings) -> Client:
    return with_converter(env.client, data_converter_for(settings))


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every payload in ``message``, at any depth, with the path of fields leading to it."""
    if isinstance(message, Payload):
        yield path, message
        return
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from payloads_in(item, f"{where}[{key}]")
        elif field.is_repeated:
            for item in value:
                yield from payloads_in(item, where)
        else:
            yield from payloads_in(value, where)


def raw_bytes(history: WorkflowHistory) -> bytes:
    return b"".join(event.SerializeToString() for event in history.events)


async def run_to_the_end(
    client: Client, settings: Settings, version: PlanVersion
) -> tuple[str, RunResult]:
    """Start a run of ``version`` for :data:`CONTACT` and wait for its end, with DEE's worker
    on ``client`` (and so its data converter)."""
    assert settings.database_url is not None
    with SendLedger(settings.database_url) as ledger:
        async with running_worker(
            client, task_queue=settings.task_queue, settings=settings, ledger=ledger
        ):
            run_id = await start_run(
                client,
                version,
                contact=CONTACT,
                variables={"product": PRODUCT},
                task_queue=settings.task_queue,
            )
            return run_id, await client.get_workflow_handle(run_id, result_type=RunResult).result()


async def test_temporal_stores_no_contact_data_and_dee_still_reads_the_run(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, database: str
) -> None:
    settings = worker_settings(database, smtp, task_queue, KEY_A)
    client = encrypting(dev_env, settings)
    async with asyncio.timeout(60):
        run_id, result = await run_to_the_end(client, settings, created(database))
        assert result.outcome == "sent"
        # The worker read the contact and the variable: the email says them.
        [received] = smtp.handler.messages
        assert received.rcpt_tos == (ADDRESS,)
        body = received.message.get_body(("html",))
        assert body is not None and f"Hi {NAME}, {TEMPLATE_TEXT} {PRODUCT}" in body.get_content()

        # What Temporal keeps, read without the keys: not a trace of any of it.
        plain = dev_env.client
        history = await plain.get_workflow_handle(run_id).fetch_history()
        stored = raw_bytes(history) + history.to_json().encode()
        for secret in (ADDRESS, NAME, PRODUCT, TEMPLATE_TEXT):
            assert secret.encode() not in stored, secret
        found = list(payloads_in(history.events[0])) + [
            item for event in history.events[1:] for item in payloads_in(event)
        ]
        encrypted = {path for path, payload in found if payload.metadata["encoding"] == ENCODING}
        clear = {path for path, payload in found if payload.metadata["encoding"] != ENCODING}
        # The run's input and summary, the activity's input and result, the run's result.
        assert {
            ".workflow_execution_started_event_attributes.input.payloads",
            ".user_metadata.summary",
            ".user_metadata.details",
            ".activity_task_scheduled_event_attributes.input.payloads",
            ".activity_task_completed_event_attributes.result.payloads",
            ".workflow_execution_completed_event_attributes.result.payloads",
        } <= encrypted
        # In the clear: search attributes, which Temporal must be able to index (DEE's; runs
        # of engine 1 also the SDK's record of patches and its patch markers, which name code
        # changes, but start_run starts engine 2 runs, which have none).
        patches = ".marker_recorded_event_attributes.details[patch-data].payloads"
        attributes = {
            path.rpartition("[")[2].rstrip("]")
            for path in clear - {patches}
            if ".search_attributes.indexed_fields[" in path
        }
        assert attributes == {
            "DeePlanId",
            "DeePlanVersion",
            "DeeContactId",
            "DeeCurrentStep",
            "DeeOutcome",
        }
        assert all(".search_attributes." in path or path == patches for path in clear), clear
        assert {
            payload.metadata[KEY_ID_METADATA]
            for _, payload in found
            if payload.metadata["encoding"] == ENCODING
        } == {b"2026a"}
        description = await plain.get_workflow_handle(run_id).describe()
        assert description.typed_search_attributes.get(CONTACT_ID_ATTRIBUTE) == "contact-7"
        with pytest.raises(Exception, match="binary/encrypted"):
            await run_input(plain, run_id)

        # With the key, DEE reads all of it back.
        started_with = await run_input(client, run_id)
        assert (started_with.contact.email, started_with.variables) == (
            ADDRESS,
            {"product": PRODUCT},
        )
        state = await run_state(client, run_id)
        assert (state.contact_id, state.outcome) == ("contact-7", "sent")


async def test_a_failure_message_is_encrypted_too(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, database: str
) -> None:
    reply = "550 5.1.1 mailbox vanished-on-tuesday"
    smtp.handler.refuse(ADDRESS, reply)
    settings = worker_settings(database, smtp, task_queue, KEY_A)
    client = encrypting(dev_env, settings)
    async with asyncio.timeout(60):
        run_id, result = await run_to_the_end(client, settings, created(database))
        assert result.failure is not None and "vanished-on-tuesday" in result.failure.reason
        history = await dev_env.client.get_workflow_handle(run_id).fetch_history()
        failures = [
            event.activity_task_failed_event_attributes.failure
            for event in history.events
            if event.HasField("activity_task_failed_event_attributes")
        ]
        assert failures
        # Temporal sees a placeholder; the message and stack trace are an encrypted payload.
        assert all(failure.message == "Encoded failure" for failure in failures)
        assert b"vanished-on-tuesday" not in raw_bytes(history)
        assert all(
            failure.encoded_attributes.metadata["encoding"] == ENCODING for failure in failures
        )


async def test_a_run_started_under_the_old_key_goes_on_after_a_new_key_is_put_first(
    dev_env: WorkflowEnvironment, task_queue: str, smtp: SmtpServer, database: str
) -> None:
    before = worker_settings(database, smtp, task_queue, KEY_A)
    after = worker_settings(database, smtp, task_queue, KEY_B, KEY_A)
    version = created(database, wait_seconds=3)
    async with asyncio.timeout(90):
        old_client = encrypting(dev_env, before)
        with SendLedger(database) as ledger:
            async with running_worker(
                old_client, task_queue=task_queue, settings=before, ledger=ledger
            ):
                run_id = await start_run(
                    old_client,
                    version,
                    contact=CONTACT,
                    variables={"product": PRODUCT},
                    task_queue=task_queue,
                )
                while (await run_state(old_client, run_id)).current_step != "pause":
                    await asyncio.sleep(0.1)
            # Rotated while the run waits: every client and worker now lists the new key
            # first; the old one stays listed so that what it encrypted can be read. (Signals
            # come before timers in the next task, so the reply counts however long it took.)
            new_client = encrypting(dev_env, after)
            await send_event(new_client, run_id, type="reply", step_id="intro")
            async with running_worker(
                new_client, task_queue=task_queue, settings=after, ledger=ledger
            ):
                result = await new_client.get_workflow_handle(
                    run_id, result_type=RunResult
                ).result()
        assert result.outcome == "replied"
        state = await run_state(new_client, run_id)
        assert state.contact_id == "contact-7" and [event.type for event in state.events] == [
            "reply"
        ]

        history = await dev_env.client.get_workflow_handle(run_id).fetch_history()
        key_ids = {
            path: payload.metadata[KEY_ID_METADATA].decode()
            for event in history.events
            for path, payload in payloads_in(event)
            if payload.metadata["encoding"] == ENCODING
        }
        assert key_ids[".workflow_execution_started_event_attributes.input.payloads"] == "2026a"
        assert key_ids[".workflow_execution_signaled_event_attributes.input.payloads"] == "2026b"
        assert key_ids[".workflow_execution_completed_event_attributes.result.payloads"] == "2026b"

        # Dropping the old key too soon leaves its runs unreadable, and says which key.
        only_new = encrypting(dev_env, worker_settings(database, smtp, task_queue, KEY_B))
        with pytest.raises(PayloadDecryptError) as raised:
            await run_input(only_new, run_id)
        assert raised.value.key_id == "2026a"
