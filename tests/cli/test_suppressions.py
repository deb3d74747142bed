"""``dee suppressions`` and the suppression checks of ``dee runs``, run as real processes
against the Temporal dev server with DEE's worker running in the test."""

from __future__ import annotations

import json
import uuid

from temporalio.testing import WorkflowEnvironment

from dee.runs.model import CONTACT_ID_ATTRIBUTE
from tests.cli.test_runs import SPEC_PLAN, Cli, cli  # noqa: F401  (the fixture)
from tests.helpers.temporal import run_result
from tests.server.test_unsubscribe_paths import eventually

# Addresses of this module's own: the dev server, and so run ids, are shared by the session.
TAG = uuid.uuid4().hex[:8]
ANA_EMAIL = f"ana-{TAG}@example.com"
ANA = json.dumps({"email": ANA_EMAIL, "firstName": "Ana", "phone": "+15557654321"})
BO = json.dumps({"email": f"bo-{TAG}@example.com", "firstName": "Bo", "phone": "+15557654321"})
CY_EMAIL = f"cy-{TAG}@example.com"
CY = json.dumps({"email": CY_EMAIL, "firstName": "Cy", "phone": "+15550001234"})


async def listed(env: WorkflowEnvironment, contact_id: str) -> list[str]:
    query = f"{CONTACT_ID_ATTRIBUTE.name} = '{contact_id}' AND ExecutionStatus = 'Running'"
    return [execution.id async for execution in env.client.list_workflows(query)]


async def test_suppressing_by_hand_ends_runs_and_start_refuses(
    cli: Cli,  # noqa: F811
    dev_env: WorkflowEnvironment,
) -> None:
    await cli("plans", "create", SPEC_PLAN)
    start = ("runs", "start", "outbound-intro", "--var", "product=DEE", "--contact")
    # Positive control: Ana starts while nothing is suppressed; her run waits 3.5 days.
    run_id = (await cli(*start, ANA)).stdout.strip()
    contact_id = run_id.partition(":")[2]
    found = await eventually(lambda: listed(dev_env, contact_id), lambda ids: ids != [])
    assert found == [run_id]

    added = await cli("suppressions", "add", f" {ANA_EMAIL.upper()} ")
    assert added.stdout == f"suppressed {ANA_EMAIL} (manual)\nended run {run_id}\n"
    assert (await run_result(dev_env, run_id, timeout=30)).outcome == "unsubscribed"

    refused = await cli(*start, ANA, status=1)
    assert refused.stderr == (
        f"error: run {run_id!r} was not started: the contact's email address {ANA_EMAIL} "
        "is suppressed (reason manual, from cli); if the contact agreed to hear from you "
        f"again, lift it with `dee suppressions remove {ANA_EMAIL}` "
        f"(or DELETE /v1/suppressions/{ANA_EMAIL})\n"
    )
    # The do-not-call list: Bo shares Ana's number, written another way.
    await cli("suppressions", "add", "+1 (555) 765-4321", "--reason", "unsubscribe")
    refused_phone = await cli(*start, BO, status=1)
    assert "phone number +15557654321 is suppressed (reason unsubscribe" in refused_phone.stderr
    assert "`dee suppressions remove +15557654321`" in refused_phone.stderr

    shown = json.loads((await cli("suppressions", "list", "--json")).stdout)
    assert [(e["address"], e["channel"], e["source"]) for e in shown] == [
        ("+15557654321", "phone", "cli"),
        (ANA_EMAIL, "email", "cli"),
    ]
    phones = (await cli("suppressions", "list", "--channel", "phone")).stdout.splitlines()
    assert len(phones) == 2 and phones[1].split()[1:4] == ["+15557654321", "phone", "unsubscribe"]

    # Hostile or unreadable values are refused, never stored.
    for value in ["555 765 4321", "ana@example.com\r\nBcc: x@example.com", "not an address"]:
        bad = await cli("suppressions", "add", value, status=2)
        assert "E.164" in bad.stderr or "not an email address" in bad.stderr, bad

    assert (await cli("suppressions", "remove", ANA_EMAIL.upper())).stdout == (
        f"lifted {ANA_EMAIL}\n"
    )
    again = await cli("suppressions", "remove", ANA_EMAIL, status=1)
    assert f"{ANA_EMAIL} is not suppressed" in again.stderr
    await cli("suppressions", "remove", "+15557654321")
    restarted = (await cli(*start, ANA)).stdout.strip()
    assert restarted == run_id
    await cli("runs", "cancel", run_id)


async def test_an_unsubscribe_event_suppresses_the_contact(
    cli: Cli,  # noqa: F811
    dev_env: WorkflowEnvironment,
) -> None:
    await cli("plans", "create", SPEC_PLAN)
    run_id = (
        await cli("runs", "start", "outbound-intro", "--var", "product=DEE", "--contact", CY)
    ).stdout.strip()
    sent = await cli("runs", "event", run_id, "unsubscribe", "--id", "u1")
    assert sent.stdout == "u1\n"
    assert f"suppressed {CY_EMAIL}" in sent.stderr
    assert "suppressed +15550001234" in sent.stderr
    assert (await run_result(dev_env, run_id, timeout=30)).outcome == "unsubscribed"
    shown = json.loads((await cli("suppressions", "list", "--json")).stdout)
    assert sorted((e["address"], e["reason"], e["source"], e["run_id"]) for e in shown) == [
        ("+15550001234", "unsubscribe", "cli", run_id),
        (CY_EMAIL, "unsubscribe", "cli", run_id),
    ]
