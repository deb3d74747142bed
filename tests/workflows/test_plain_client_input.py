"""A run a plain Temporal client started with input DEE cannot decode fails at once, with a
reason, rather than failing its workflow task on every retry for good."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from dee.runs.model import WORKFLOW_NAME
from tests.helpers.engine import CONTACT, VARIABLES, engine, wait_for_messages
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


def raw_json(document: Any) -> RawValue:
    """``document`` as the JSON payload a client in any language would send."""
    data = json.dumps(document).encode()
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=data))


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        # Past what the JSON decoder takes: a plain client is not checked as start_run is.
        pytest.param({**CONTACT, "id": "deep", "notes": nested(300)}, "recursion", id="deep"),
        # A line break in the address: no email may be built from it.
        pytest.param(
            {**CONTACT, "id": "crlf", "email": "ana@example.com\r\nBcc: all@evil.example"},
            "contact.email",
            id="crlf",
        ),
    ],
)
async def test_input_that_cannot_decode_fails_the_run_at_once(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    contact: dict[str, Any],
    reason: str,
) -> None:
    with twilio_api() as twilio:
        async with engine(dev_env, task_queue, tmp_path, smtp, twilio) as e:
            version = e.spec_version()
            # What `dee plans export` prints.
            run_input = {
                "plan": version.plan.to_document(),
                "content": version.content.model_dump(mode="json"),
                "digest": version.digest,
            }
            # Positive control: the same input with a plain contact runs and sends.
            good = await e.client.start_workflow(
                WORKFLOW_NAME,
                raw_json(
                    {**run_input, "contact": {**CONTACT, "id": "fine"}, "variables": VARIABLES}
                ),
                id=f"plain-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            bad = await e.client.start_workflow(
                WORKFLOW_NAME,
                raw_json({**run_input, "contact": contact, "variables": VARIABLES}),
                id=f"plain-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            # Bounded: before the fix, the run retried its first workflow task for good.
            with pytest.raises(WorkflowFailureError) as failed:
                async with asyncio.timeout(30):
                    await bad.result()
            await wait_for_messages(e, 1)
            described = await good.describe()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidRunInput", True)
    assert reason in str(cause.message).lower() or reason in str(cause.message)
    # No contact data in the reason: it lands in the run's history.
    assert "evil.example" not in str(cause.message) and "bottom" not in str(cause.message)
    assert described.status is not None and described.status.name == "RUNNING"
    assert e.subjects == ["Introducing DEE"]
