"""What starting one run takes, shared by :func:`dee.runs.client.start_run` and the bulk
start (:mod:`dee.runs.bulk`): checking a contact and its variables against the plan
(:func:`prepare_run`, no I/O), which addresses the suppression list must not hold
(:func:`reachable`), and the start itself (:func:`submit_run`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import MissingVariablesError
from dee.plans.content import missing_variables, required_variables
from dee.plans.versions import PlanVersion
from dee.runs.errors import RunAlreadyStartedError, RunInputError, RunInputTooLargeError
from dee.runs.model import (
    CONTACT_ID_ATTRIBUTE,
    CURRENT_STEP_ATTRIBUTE,
    ENGINE,
    MAX_CONTACT_AND_VARIABLES_BYTES,
    MAX_NESTING,
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    RUN_ID_PATTERN,
    WORKFLOW_NAME,
    Contact,
    RunInput,
    default_run_id,
    nesting_problem,
)
from dee.runs.temporal import TemporalSetupError

if TYPE_CHECKING:
    from dee.runs.contacts import ContactIds

_RUN_ID = re.compile(RUN_ID_PATTERN)


@dataclass(frozen=True)
class PreparedRun:
    """A run that passed every check made before Temporal is asked: ready to start."""

    run_id: str
    version: PlanVersion
    contact: Contact
    variables: dict[str, JsonValue]
    run_input: RunInput


def as_contact(contact: Contact | Mapping[str, Any], contact_ids: ContactIds | None) -> Contact:
    """``contact`` as a :class:`Contact`, with its keyed-hash id when it gives none and
    ``contact_ids`` is given (pydantic's ``ValidationError`` when it is not one)."""
    if isinstance(contact, Contact):
        return contact
    given = dict(contact) if contact_ids is None else contact_ids.complete(contact)
    return Contact.model_validate(given)


def prepare_run(
    version: PlanVersion,
    *,
    contact: Contact | Mapping[str, Any],
    variables: Mapping[str, JsonValue] | None,
    run_id: str | None,
    sender: str | None,
    max_visits_per_step: int,
    contact_ids: ContactIds | None,
    required: frozenset[str] | None = None,
) -> PreparedRun:
    """Check ``contact`` and ``variables`` for a run of ``version``, as
    :func:`~dee.runs.client.start_run` documents; ``required`` is
    :func:`~dee.plans.content.required_variables` of the version when already known."""
    person = as_contact(contact, contact_ids)
    given = dict(variables or {})
    plan = version.plan
    # Before anything dumps the contact: pydantic refuses to serialise very deep values.
    for field, value in (("contact", dict(person)), ("variables", given)):
        deep = nesting_problem(value, path=field)
        if deep is not None:
            raise RunInputError(
                f"{deep} nests deeper than {MAX_NESTING} levels of lists and objects: flatten it",
                run_id=(run_id or default_run_id(plan.id, person.id))[:255],
                field=field,
            )
    needed = required if required is not None else required_variables(plan, version.content)
    missing = missing_variables(needed, contact=person.attributes(), variables=given)
    if missing:
        raise MissingVariablesError(missing, plan_id=plan.id)
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise RunInputError(
            f"run id {run_id!r} is not one DEE takes: it starts with a letter or digit and "
            "holds no whitespace, control characters or slashes, at most 255 characters",
            run_id=run_id[:255],
            field="runId",
        )
    run_id = run_id or default_run_id(plan.id, person.id)
    size = len(person.model_dump_json().encode()) + len(json.dumps(given).encode())
    if size > MAX_CONTACT_AND_VARIABLES_BYTES:
        raise RunInputTooLargeError(run_id, size, MAX_CONTACT_AND_VARIABLES_BYTES)
    run_input = RunInput(
        plan=plan,
        content=version.content,
        digest=version.digest,
        contact=person,
        variables=given,
        sender=sender,
        max_visits_per_step=max_visits_per_step,
        engine=ENGINE,
    )
    return PreparedRun(run_id, version, person, given, run_input)


def reachable(version: PlanVersion, contact: Contact) -> list[str]:
    """The contact's email address and phone number, each only when the plan uses its
    channel: what the suppression list must not hold for the run to start."""
    used = {step.type for step in version.plan.steps}
    return [
        value
        for value, step_type in ((contact.email, "sendEmail"), (contact.phone, "sendVoice"))
        if value is not None and step_type in used
    ]


def _summary(version: PlanVersion, contact: Contact) -> str:
    return f"plan {version.plan.id} v{version.version} · contact {contact.id}"


def _details(
    run_id: str, version: PlanVersion, contact: Contact, variables: Mapping[str, Any]
) -> str:
    plan = version.plan
    names = ", ".join(f"`{name}`" for name in sorted(variables)) or "none"
    return "\n".join(
        [
            f"**{plan.name}** (`{plan.id}` v{version.version}) for contact `{contact.id}`.",
            "",
            f"- steps: {len(plan.steps)}, starting at `{plan.steps[0].id}`",
            f"- run variables: {names}",
            f"- digest: `{version.digest[:12]}`",
            "",
            f"Inspect with `dee runs show {run_id}`; the plan with `dee plans show {plan.id} "
            f"--version {version.version}`.",
        ]
    )


async def submit_run(
    client: Client,
    prepared: PreparedRun,
    *,
    task_queue: str,
    reuse_ended: bool = True,
) -> None:
    """Ask Temporal to start ``prepared``. :class:`RunAlreadyStartedError` while a run with
    its id is active, and, unless ``reuse_ended``, also when one has ended (within the
    namespace's retention)."""
    version, person, run_id = prepared.version, prepared.contact, prepared.run_id
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            prepared.run_input,
            id=run_id,
            task_queue=task_queue,
            id_reuse_policy=(
                WorkflowIDReusePolicy.ALLOW_DUPLICATE
                if reuse_ended
                else WorkflowIDReusePolicy.REJECT_DUPLICATE
            ),
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(PLAN_ID_ATTRIBUTE, version.plan.id),
                    SearchAttributePair(PLAN_VERSION_ATTRIBUTE, version.version),
                    SearchAttributePair(CONTACT_ID_ATTRIBUTE, person.id),
                    # Shown until the run first waits (engine 2 shows waits only).
                    SearchAttributePair(CURRENT_STEP_ATTRIBUTE, version.plan.steps[0].id),
                ]
            ),
            static_summary=_summary(version, person),
            static_details=_details(run_id, version, person, prepared.variables),
        )
    except WorkflowAlreadyStartedError as exc:
        raise RunAlreadyStartedError(run_id) from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message:
            raise TemporalSetupError(
                f"Temporal namespace {client.namespace!r} lacks DEE's search attributes "
                f"({exc.message}): start `dee worker` or `dee dev` once, which registers them"
            ) from exc
        raise
