"""DEE's data converter: a run whose payloads hold fields this release does not know (an
earlier release wrote them and this one removed them) keeps running; creating a plan still
refuses unknown fields."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dee.plans.model import ExecutionPlan
from dee.plans.versions import PlanVersion, plan_digest
from dee.runs.model import WORKFLOW_NAME, RunInput, RunResult
from dee.runs.temporal import data_converter
from tests.helpers.engine import engine
from tests.helpers.plans import email_content, email_plan
from tests.helpers.smtp import SmtpServer
from tests.helpers.twilio_api import twilio_api


def with_removed_fields(version: PlanVersion) -> dict[str, Any]:
    """``version`` as a run's input, as an earlier release that had a few more fields (on
    a step, the plan's metadata, a template, the input itself) would have sent it."""
    payload: dict[str, Any] = json.loads(version.model_dump_json())
    payload["plan"]["steps"][0]["legacyOption"] = True
    payload["plan"]["metadata"]["owner"] = "sales"
    payload["content"]["templates"]["intro"]["engine"] = "jinja"
    payload["retired"] = 1
    payload["contact"] = {"email": "ana@example.com", "firstName": "Ana"}
    payload["variables"] = {}
    return payload


def test_the_converter_drops_unknown_fields_and_keeps_contact_attributes() -> None:
    plan = email_plan("p1").model_copy(update={"version": 1})
    content = email_content()
    version = PlanVersion(plan=plan, content=content, digest=plan_digest(plan, content))
    payloads = pydantic_data_converter.payload_converter.to_payloads([with_removed_fields(version)])

    [decoded] = data_converter.payload_converter.from_payloads(payloads, [RunInput])

    assert decoded.plan == plan and decoded.content == content
    # Contact attributes are data, not fields: none is dropped.
    assert decoded.contact.attributes() == {
        "id": "ana@example.com",
        "email": "ana@example.com",
        "firstName": "Ana",
    }
    # Control: temporalio's own pydantic converter refuses the same payload.
    with pytest.raises(ValidationError, match="legacyOption"):
        pydantic_data_converter.payload_converter.from_payloads(payloads, [RunInput])
    # And a plan document with an unknown field is still refused where plans are made.
    document = with_removed_fields(version)["plan"]
    with pytest.raises(ValidationError, match="legacyOption"):
        ExecutionPlan.model_validate(document)


async def test_a_run_started_with_fields_this_release_does_not_know_runs_to_the_end(
    time_skipping_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    with twilio_api() as twilio:
        async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as dee:
            version = dee.version(email_plan("p1"), email_content())
            # Started as a plain client would, with the earlier release's payload.
            handle = await dee.client.start_workflow(
                WORKFLOW_NAME,
                with_removed_fields(version),
                id=f"p1:{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
                result_type=RunResult,
            )
            result = await handle.result()
    assert (result.outcome, result.failure) == ("sent", None)
    assert dee.subjects == ["Hello Ana"]
