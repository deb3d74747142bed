"""``dee runs``: start runs, send them events, look at them, cancel them.

::

    dee runs start PLAN_ID [--version N] --contact JSON|@FILE [--var KEY=VALUE ...]
                   [--run-id ID] [--sender EMAIL] [--task-queue QUEUE]   # prints the run id
    dee runs start PLAN_ID [--version N] --contacts FILE.csv|.jsonl|.json [--var KEY=VALUE ...]
                   [--concurrency N] [--restart-ended] ...   # a summary; see dee.cli._bulk
    dee runs event RUN_ID TYPE [--step STEP] [--id EVENT_ID]              # prints the event id
                                     # unsubscribe: also suppresses the contact, ends its runs
    dee runs show RUN_ID [--json]
    dee runs cancel RUN_ID
    dee runs list [--plan ID] [--limit N] [--json]

Temporal is reached as every Temporal client does (``TEMPORAL_ADDRESS``, ...; see
:mod:`dee.runs.temporal`). DEE's errors (a missing variable, a run already active, no such run)
end the command with status 1 through the ``dee`` group; a bad option value exits 2.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from temporalio.client import Client

from dee.cli import _format as fmt
from dee.cli._bulk import start_file
from dee.plans.conditions import EVENT_TYPES
from dee.plans.model import EMAIL_PATTERN, ID_PATTERN
from dee.plans.registry import PlanRegistry
from dee.runs.bulk import DEFAULT_CONCURRENCY
from dee.runs.client import cancel_run, list_runs, run_state, send_event, start_run
from dee.runs.contacts import ContactIds
from dee.runs.model import DEFAULT_TASK_QUEUE, Contact, RunEvent
from dee.runs.suppressions import Suppressions
from dee.runs.temporal import connect
from dee.runs.unsubscribe import Unsubscribed, unsubscribe_run
from dee.server.hits import HitStore

__all__ = ["database_of", "run_async", "runs", "used_temporal", "with_client"]

_T = TypeVar("_T")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_used_temporal = False


def used_temporal() -> bool:
    """Whether this process has started temporalio's runtime (see :func:`dee.cli.main.main`)."""
    return _used_temporal


def run_async(
    work: Awaitable[_T], *, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
) -> _T:
    """Run ``work`` to completion on a new event loop (made by ``loop_factory``, if given),
    noting that Temporal is in use."""
    global _used_temporal
    _used_temporal = True

    async def main() -> _T:
        return await work

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def with_client(action: Callable[[Client], Awaitable[_T]]) -> _T:
    """Run ``action`` with a client connected as ``dee runs`` connects."""

    async def connected() -> _T:
        return await action(await connect())

    return run_async(connected())


def database_of(ctx: click.Context) -> str | None:
    """The ``--database`` given to ``dee``, if any."""
    database: str | None = ctx.find_root().params.get("database")
    return database


def _errors(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'value'}: {item['msg']}"
        for item in error.errors()
    )


def _parse_contact(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise click.BadParameter('expected a JSON object such as {"email": "ana@example.com"}')
    try:
        # Validated here for an early, precise error; its default id is given in `start`.
        Contact.model_validate(document)
    except ValidationError as exc:
        raise click.BadParameter(_errors(exc)) from exc
    return document


def _parse_variables(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str]:
    variables = {}
    for item in values:
        name, equals, value = item.partition("=")
        if not equals or not _VARIABLE_NAME.fullmatch(name) or name == "contact":
            raise click.BadParameter(
                f"{item!r}: expected KEY=VALUE with KEY a name such as product "
                "(`contact` is reserved: give contact fields in --contact)"
            )
        variables[name] = value
    return variables


def _check_sender(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(EMAIL_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not an email address")
    return value


@click.group()
def runs() -> None:
    """Start runs of a plan and follow them."""


@runs.command()
@click.argument("plan_id")
@click.option(
    "--version", "version", metavar="N", type=click.IntRange(min=1), help="[default: latest]"
)
@click.option(
    "--contact",
    metavar="JSON|@FILE",
    callback=_parse_contact,
    help='The contact, as JSON ({"email": "ana@example.com", "firstName": "Ana"}) or @file.',
)
@click.option(
    "--contacts",
    "contacts_file",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Many contacts: a .csv file (header line; var.NAME columns are run variables), "
    ".jsonl or .json rows of {contact, variables, runId}.",
)
@click.option(
    "--concurrency",
    metavar="N",
    type=click.IntRange(min=1, max=256),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="With --contacts: starts in flight at a time.",
)
@click.option(
    "--restart-ended",
    is_flag=True,
    help="With --contacts: start a contact again whose run has ended (default: skip it).",
)
@click.option(
    "--var",
    "variables",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_parse_variables,
    help="A run variable the plan's templates use; repeat for more.",
)
@click.option("--run-id", metavar="ID", help="[default: PLAN_ID:CONTACT_ID]")
@click.option(
    "--sender",
    metavar="EMAIL",
    callback=_check_sender,
    help="From address of the run's emails  [default: DEE_FROM_ADDRESS]",
)
@click.option(
    "--task-queue",
    metavar="QUEUE",
    envvar="DEE_TASK_QUEUE",
    default=DEFAULT_TASK_QUEUE,
    show_default=True,
    help="The workers' task queue [env: DEE_TASK_QUEUE]",
)
@click.pass_context
def start(
    ctx: click.Context,
    plan_id: str,
    version: int | None,
    contact: dict[str, Any] | None,
    contacts_file: Path | None,
    concurrency: int,
    restart_ended: bool,
    variables: dict[str, str],
    run_id: str | None,
    sender: str | None,
    task_queue: str,
) -> None:
    """Start a run of plan PLAN_ID for --contact; prints the run id. Or one for each
    contact of --contacts FILE: prints a summary and each refused row; exits 1 when a row
    was refused, 2 when FILE cannot be read; safe to run again after an interruption.

    Refused, with every missing name, when the contact and --var lack what the plan's
    templates use; refused while a run with the same id is still active; refused when the
    contact's email address or phone number, which the plan uses, is suppressed.
    """
    if (contact is None) == (contacts_file is None):
        raise click.UsageError("give either --contact JSON or --contacts FILE")
    if contacts_file is not None and run_id is not None:
        raise click.UsageError("--run-id names one run: give a runId column in --contacts")
    with PlanRegistry(database_of(ctx)) as registry:
        stored = registry.get(plan_id, version=version)
    if contacts_file is not None:
        ctx.exit(
            start_file(
                stored,
                contacts_file,
                with_client=with_client,
                database=database_of(ctx),
                variables=variables,
                sender=sender,
                task_queue=task_queue,
                concurrency=concurrency,
                restart_ended=restart_ended,
            )
        )
    assert contact is not None
    with ContactIds(database_of(ctx)) as contacts:
        try:
            person = Contact.model_validate(contacts.complete(contact))
        except ValidationError as exc:
            raise click.BadParameter(_errors(exc), param_hint="--contact") from exc
    with Suppressions(database_of(ctx)) as suppressions:
        started = with_client(
            lambda client: start_run(
                client,
                stored,
                contact=person,
                variables=variables,
                run_id=run_id,
                sender=sender,
                task_queue=task_queue,
                suppressions=suppressions,
            )
        )
    click.echo(started)


@runs.command()
@click.argument("run_id")
@click.argument("event_type", metavar="TYPE", type=click.Choice(sorted(EVENT_TYPES)))
@click.option("--step", "step_id", metavar="STEP", help="The step the event is about.")
@click.option("--id", "event_id", metavar="EVENT_ID", help="For de-duplication [default: new]")
@click.pass_context
def event(
    ctx: click.Context, run_id: str, event_type: str, step_id: str | None, event_id: str | None
) -> None:
    """Send event TYPE (reply, open, ...) to run RUN_ID; prints the event id.

    `unsubscribe` also suppresses the run's contact (email address and phone number) and
    ends every running run of the contact."""
    if step_id is not None and not re.fullmatch(ID_PATTERN, step_id):
        raise click.BadParameter(f"{step_id!r} is not a step id", param_hint="--step")

    async def deliver(client: Client) -> tuple[RunEvent, Unsubscribed | None]:
        sent = await send_event(client, run_id, type=event_type, step_id=step_id, event_id=event_id)
        if event_type != "unsubscribe":
            return sent, None
        with Suppressions(database_of(ctx)) as suppressions, ContactIds(database_of(ctx)) as ids:
            done = await unsubscribe_run(client, suppressions, run_id, source="cli", contacts=ids)
            return sent, done

    sent, done = with_client(deliver)
    click.echo(sent.event_id)
    if done is not None:
        for value in done.suppressed:
            click.echo(f"suppressed {value}", err=True)
        for ended in done.runs_ended:
            click.echo(f"ended run {ended}", err=True)


@runs.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run's state as JSON.")
def show(run_id: str, as_json: bool) -> None:
    """Show run RUN_ID: current step, steps taken, events, outcome."""
    state = with_client(lambda client: run_state(client, run_id))
    if as_json:
        document = {"run_id": run_id, **state.model_dump(mode="json")}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    for line in fmt.run_details(run_id, state):
        click.echo(line)


@runs.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel run RUN_ID; it ends with outcome `cancelled`."""
    with_client(lambda client: cancel_run(client, run_id))
    click.echo(f"cancel requested: {run_id}")


@runs.command(name="list")
@click.option("--plan", "plan_id", metavar="ID", help="Only runs of this plan.")
@click.option(
    "--contact",
    metavar="VALUE",
    help="Only this contact's runs: its email address, phone number or contact id.",
)
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
@click.pass_context
def list_command(
    ctx: click.Context, plan_id: str | None, contact: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    contact_ids: tuple[str, ...] = ()
    if contact is not None:
        with ContactIds(database_of(ctx)) as contacts:
            contact_ids = contacts.lookup(contact)
    summaries = with_client(
        lambda client: list_runs(client, plan_id=plan_id, contact_ids=contact_ids, limit=limit)
    )
    if as_json:
        documents: list[dict[str, Any]] = [summary.model_dump(mode="json") for summary in summaries]
        click.echo(json.dumps(documents, indent=2, ensure_ascii=False))
        return
    if not summaries:
        click.echo("no runs yet: start one with dee runs start PLAN_ID --contact JSON", err=True)
        return
    for line in fmt.run_table(summaries):
        click.echo(line)


@runs.command()
@click.argument("run_id")
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=1000, show_default=True)
@click.pass_context
def hits(ctx: click.Context, run_id: str, limit: int) -> None:
    """Show RUN_ID's raw tracking hits: every pixel fetch, link click and unsubscribe,
    with its time and user agent (also those collapsed into an earlier signal)."""
    with HitStore(database_of(ctx)) as store:
        found = store.hits(run_id, limit=limit)
    if not found:
        click.echo(f"no tracking hits for run {run_id!r}", err=True)
        return
    rows = [
        [
            hit.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            hit.kind,
            hit.step_id or "-",
            hit.url or "-",
            (hit.user_agent or "-")[:60],
        ]
        for hit in found
    ]
    for line in fmt.table(["AT", "KIND", "STEP", "URL", "USER AGENT"], rows):
        click.echo(line)
