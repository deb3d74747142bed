"""Starting contacts in bulk with DEE, against raw ``client.start_workflow`` calls.

On a Temporal dev server (no worker: only the starts are measured), the same number of
contacts started the same number at a time by:

- **dee**: :func:`dee.runs.bulk.start_runs` with the contact id key and the suppression
  list in a SQLite file (200 entries, none of them a contact), as ``dee runs start
  --contacts`` and ``POST /v1/runs:bulk`` call it: every row checked against the plan,
  ids hashed, the suppression list read, search attributes and the Web UI's summary set;
- **raw**: ``client.start_workflow`` of the same workflow with the same input (plan,
  content, the contact, variables) and an id per contact, nothing else;
- **raw+options**: the same call with what DEE passes besides the input: the id policies,
  the three search attributes and the Web UI's summary and details.

Each measurement gets a new dev server (one that holds more runs starts them more slowly),
warmed with 200 starts of the same variant first; rounds alternate the order. Starts per
second run from the first call to the last answer; CPU is this process's (the dev server
runs in its own).

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python benchmarks/bulk_start.py \\
        [--contacts 10000] [--rounds 2] [--concurrency 32] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.common import (  # noqa: E402
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from dee.plans.content import EmailTemplate, PlanContent  # noqa: E402
from dee.plans.model import ExecutionPlan  # noqa: E402
from dee.plans.registry import PlanRegistry  # noqa: E402
from dee.plans.versions import PlanVersion  # noqa: E402
from dee.runs._start import _details, _summary  # noqa: E402
from dee.runs.bulk import ContactRow, start_runs  # noqa: E402
from dee.runs.contacts import ContactIds  # noqa: E402
from dee.runs.model import (  # noqa: E402
    CONTACT_ID_ATTRIBUTE,
    PLAN_ID_ATTRIBUTE,
    PLAN_VERSION_ATTRIBUTE,
    WORKFLOW_NAME,
    Contact,
    RunInput,
)
from dee.runs.suppressions import Suppressions  # noqa: E402
from tests.helpers.temporal import start_dev_env  # noqa: E402

VARIABLES = {"product": "DEE"}


@dataclass
class Measurement:
    variant: str
    starts: int
    seconds: float
    cpu: float

    @property
    def per_second(self) -> float:
        return self.starts / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.starts


def plan(plan_id: str) -> ExecutionPlan:
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Bulk intro",
            "metadata": {"createdBy": "benchmark"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "intro",
                    "templateId": "intro",
                    "subject": "Introducing {{ product }}",
                },
                {"type": "wait", "id": "pause", "duration": {"days": 3}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


CONTENT = PlanContent(
    templates={"intro": EmailTemplate(html="<p>Hi {{ contact.firstName }}, {{ product }}</p>")}
)


def contacts(tag: str, count: int) -> list[dict[str, str]]:
    return [
        {"email": f"person{number}-{tag}@example.com", "firstName": f"P{number}"}
        for number in range(count)
    ]


async def measure_dee(
    client: Client,
    version: PlanVersion,
    people: list[dict[str, str]],
    concurrency: int,
    database: str,
    profile: cProfile.Profile | None,
) -> Measurement:
    rows = [ContactRow(number, person) for number, person in enumerate(people, start=1)]
    task_queue = f"bench-bulk-{uuid.uuid4().hex[:8]}"
    with ContactIds(database) as contact_ids, Suppressions(database) as suppressions:
        began, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        result = await start_runs(
            client,
            version,
            rows,
            variables=VARIABLES,
            task_queue=task_queue,
            contact_ids=contact_ids,
            suppressions=suppressions,
            concurrency=concurrency,
        )
        if profile is not None:
            profile.disable()
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert result.summary.started == len(people), result.summary
    return Measurement("dee", len(people), seconds, cpu)


def dee_options(version: PlanVersion, run_id: str, contact: Contact) -> dict[str, Any]:
    """What DEE passes ``start_workflow`` besides the input: the id policies, the search
    attributes and the Web UI's summary and details."""
    return {
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(PLAN_ID_ATTRIBUTE, version.plan.id),
                SearchAttributePair(PLAN_VERSION_ATTRIBUTE, version.version),
                SearchAttributePair(CONTACT_ID_ATTRIBUTE, contact.id),
            ]
        ),
        "static_summary": _summary(version, contact),
        "static_details": _details(run_id, version, contact, VARIABLES),
    }


async def measure_raw(
    client: Client,
    version: PlanVersion,
    people: list[dict[str, str]],
    concurrency: int,
    *,
    options: bool,
) -> Measurement:
    task_queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    pending = iter(enumerate(people))

    async def starter() -> None:
        # As many of these as starts in flight, each taking the next contact.
        for number, person in pending:
            contact = Contact.model_validate({"id": f"raw-{tag}-{number}", **person})
            run_input = RunInput(
                plan=version.plan,
                content=version.content,
                digest=version.digest,
                contact=contact,
                variables=VARIABLES,
            )
            run_id = f"raw-{tag}-{number}"
            extra = dee_options(version, run_id, contact) if options else {}
            await client.start_workflow(
                WORKFLOW_NAME, run_input, id=run_id, task_queue=task_queue, **extra
            )

    began, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(starter())
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Measurement("raw+options" if options else "raw", len(people), seconds, cpu)


async def measure(
    variant: str,
    client: Client,
    version: PlanVersion,
    args: argparse.Namespace,
    database: str,
    profile: cProfile.Profile | None,
    *,
    tag: str,
) -> Measurement:
    """One measurement; ``tag`` ``warm`` is 200 contacts to warm the server and client."""
    count = 200 if tag == "warm" else args.contacts
    people = contacts(f"{tag}{variant}", count)
    if variant == "dee":
        return await measure_dee(client, version, people, args.concurrency, database, profile)
    return await measure_raw(
        client, version, people, args.concurrency, options=variant == "raw+options"
    )


def summary(result: Measurement) -> str:
    rate, cpu = f"{result.per_second:7.0f} starts/s", f"{result.cpu_ms:6.2f} CPU ms/start"
    return f"{rate}  {cpu}  {result.seconds:6.1f} s"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant")
    parser.add_argument("--concurrency", type=int, default=32, help="starts in flight")
    parser.add_argument("--profile", action="store_true", help="profile DEE's starts")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    variants = ["dee", "raw", "raw+options"]
    results: dict[str, list[Measurement]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        database = f"sqlite:///{Path(scratch) / 'dee.db'}"
        with PlanRegistry(database) as registry:
            version = registry.create(plan(f"bench-{uuid.uuid4().hex[:6]}"), CONTENT)
        with Suppressions(database) as suppressions:
            for number in range(200):
                suppressions.suppress(f"gone{number}@example.org", reason="bounce")
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                # A new server each time: one that holds more runs starts them more slowly.
                env = await start_dev_env()
                try:
                    result = await measure(
                        variant, env.client, version, args, database, profile=None, tag="warm"
                    )
                    result = await measure(
                        variant,
                        env.client,
                        version,
                        args,
                        database,
                        profile,
                        tag=f"r{round_number}",
                    )
                finally:
                    await env.shutdown()
                results[variant].append(result)
                print(f"round {round_number + 1} {variant:11} {summary(result)}", flush=True)
    rate = {name: statistics.median(r.per_second for r in rs) for name, rs in results.items()}
    cpu = {name: statistics.median(r.cpu_ms for r in rs) for name, rs in results.items()}
    print()
    print("| variant | starts/s | CPU ms per start (this process) |")
    print("| --- | ---: | ---: |")
    for name in ("raw", "raw+options", "dee"):
        print(f"| {name} | {rate[name]:.0f} | {cpu[name]:.2f} |")
    print(f"\nDEE's rate: {rate['dee'] / rate['raw']:.2f}x raw (target: at least 0.8x)")
    print(f"DEE's rate: {rate['dee'] / rate['raw+options']:.2f}x raw with DEE's options")
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())


if __name__ == "__main__":
    asyncio.run(main())
