"""The ``dee`` command.

::

    dee plans validate FILE [--content DIR] [--max-steps N]
    dee plans create FILE [--content DIR] [--max-steps N]
    dee plans list
    dee plans show ID [--version N] [--json]
    dee plans graph ID_OR_FILE [--version N]
    dee runs start|event|show|cancel|list ...   (see dee.cli.runs)
    dee suppressions add|remove|list ...        (see dee.cli.suppressions)
    dee tracking sweep [--older-than SECONDS]   (see dee.cli.tracking)
    dee db upgrade|status                       (see dee.cli.db)
    dee worker
    dee serve [--host 127.0.0.1] [--port 8000]
    dee dev [--port 7233] [--ui-port 8233] [--smtp-port 1025] [--api-port 8000] [--no-worker]

Exit status: 0 when the command did what was asked; 1 when the plan has problems or the
registry refuses (no such plan, ...); 2 when a plan file cannot be read or parsed, or the
command line or a setting in the environment is wrong. Problems are printed one per line as
``FILE: STEP: CODE: MESSAGE`` (``STEP`` is ``(plan)`` for plan-wide problems), so editors
and ``grep`` can work with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from dee.cli import _format as fmt
from dee.cli.db import db
from dee.cli.runs import run_async, runs, used_temporal
from dee.cli.suppressions import suppressions
from dee.cli.tracking import tracking
from dee.errors import DeeError, PlanInvalidError, PlanLoadError, Problem
from dee.logs import configure_logging
from dee.plans.content import PlanContent, load_content
from dee.plans.graph import to_mermaid
from dee.plans.loader import load_plan
from dee.plans.model import ID_PATTERN, ExecutionPlan
from dee.plans.registry import PlanRegistry, upgrade_database
from dee.plans.validation import DEFAULT_MAX_STEPS, validate_plan
from dee.runs.model import ENGINE
from dee.settings import Settings

__all__ = ["dee", "main"]


@dataclass(frozen=True, slots=True)
class _Settings:
    database: str | None


class _DeeGroup(click.Group):
    """Turns DEE's errors into a message and an exit status instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PlanLoadError as exc:
            _fail(str(exc), status=2)
        except PlanInvalidError as exc:
            # Commands report problems themselves, against the file they read; this is
            # for plans that come from somewhere else.
            _fail_with_problems(exc.plan_id or "plan", exc.problems)
        except DeeError as exc:
            _fail(f"error: {exc}")


def _fail(message: str, *, status: int = 1) -> NoReturn:
    click.echo(message, err=True)
    raise click.exceptions.Exit(status)


def _fail_with_problems(label: str, problems: Sequence[Problem]) -> NoReturn:
    for line in fmt.problem_lines(label, problems):
        click.echo(line)
    _fail(fmt.count(len(problems), "problem"))


@contextmanager
def _registry(ctx: click.Context) -> Iterator[PlanRegistry]:
    settings = ctx.find_object(_Settings)
    with PlanRegistry(settings.database if settings else None) as registry:
        yield registry


@click.group(cls=_DeeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database",
    metavar="URL",
    envvar="DEE_DATABASE_URL",
    help="sqlite:///path/to/file.db or postgresql://user@host/db "
    "[default: sqlite:///.dee/dee.db; env: DEE_DATABASE_URL]",
)
@click.version_option(package_name="dee")
@click.pass_context
def dee(ctx: click.Context, database: str | None) -> None:
    """DEE: durable execution of outbound communication plans."""
    ctx.obj = _Settings(database=database)


@dee.group()
def plans() -> None:
    """Validate, create and inspect execution plans."""


_FILE = click.argument("file", type=click.Path(path_type=Path))
_CONTENT = click.option(
    "--content",
    "content_dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with templates/ and scripts/  [default: content/ beside FILE]",
)
_MAX_STEPS = click.option(
    "--max-steps",
    metavar="N",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_STEPS,
    show_default=True,
    help="Refuse plans with more steps than this.",
)
_VERSION = click.option(
    "--version",
    "version",
    metavar="N",
    type=click.IntRange(min=1),
    help="A version number  [default: latest]",
)


def _read_plan(file: Path) -> ExecutionPlan:
    """The plan in ``file``; its data problems are reported and end the command."""
    try:
        return load_plan(file)
    except PlanInvalidError as exc:
        _fail_with_problems(str(file), exc.problems)


def _read_content(file: Path, content_dir: Path | None, plan: ExecutionPlan) -> PlanContent:
    return load_content(content_dir if content_dir is not None else file.parent / "content", plan)


@plans.command()
@_FILE
@_CONTENT
@_MAX_STEPS
def validate(file: Path, content_dir: Path | None, max_steps: int) -> None:
    """Check the plan in FILE and its content; store nothing."""
    plan = _read_plan(file)
    problems = validate_plan(plan, _read_content(file, content_dir, plan), max_steps=max_steps)
    if problems:
        _fail_with_problems(str(file), problems)
    click.echo(f"{file}: valid ({fmt.count(len(plan.steps), 'step')})")


@plans.command()
@_FILE
@_CONTENT
@_MAX_STEPS
@click.option(
    "--created-by",
    metavar="NAME",
    help="Who creates the version, when the plan's metadata names nobody (default: the OS user).",
)
@click.pass_context
def create(
    ctx: click.Context,
    file: Path,
    content_dir: Path | None,
    max_steps: int,
    created_by: str | None,
) -> None:
    """Store the plan in FILE and its content as a new version.

    Creating a plan that equals its latest version (same steps, transitions, name,
    description and content) stores nothing and prints that version.
    """
    plan = _read_plan(file)
    content = _read_content(file, content_dir, plan)
    with _registry(ctx) as registry:
        try:
            stored = registry.create(plan, content, max_steps=max_steps, created_by=created_by)
        except PlanInvalidError as exc:
            _fail_with_problems(str(file), exc.problems)
    click.echo(f"{stored.plan.id} v{stored.version}")
    if not stored.created:
        click.echo(
            "unchanged: the plan and its content equal the latest version, "
            f"{stored.plan.id} v{stored.version}",
            err=True,
        )


@plans.command(name="list")
@click.pass_context
def list_plans(ctx: click.Context) -> None:
    """List the plans in the registry with their latest version."""
    with _registry(ctx) as registry:
        summaries = registry.list_plans()
    if not summaries:
        click.echo("no plans yet: create one with dee plans create FILE", err=True)
        return
    for line in fmt.plan_table(summaries):
        click.echo(line)


@plans.command()
@click.argument("plan_id", metavar="ID")
@_VERSION
@click.option("--json", "as_json", is_flag=True, help="Print the plan document only, as JSON.")
@click.pass_context
def show(ctx: click.Context, plan_id: str, version: int | None, as_json: bool) -> None:
    """Show a version of plan ID: its steps, transitions and content.

    With --json, print the plan document, which `dee plans create` takes back.
    """
    with _registry(ctx) as registry:
        stored = registry.get(plan_id, version=version)
    if as_json:
        click.echo(json.dumps(stored.plan.to_document(), indent=2, ensure_ascii=False))
        return
    for line in fmt.plan_details(stored):
        click.echo(line)


@plans.command()
@click.argument("plan_id", metavar="ID")
@_VERSION
@click.pass_context
def export(ctx: click.Context, plan_id: str, version: int | None) -> None:
    """Print a version with its content as JSON: the start of a run's input.

    Add "contact" and "variables" to it and it is the input of the ExecutionPlanWorkflow,
    for starting runs with any Temporal client.
    """
    with _registry(ctx) as registry:
        stored = registry.get(plan_id, version=version)
    document = {
        "plan": stored.plan.to_document(),
        "content": stored.content.model_dump(mode="json"),
        "digest": stored.digest,
        # Runs started from it behave as dee.start_run's do (dee.runs.model.ENGINE).
        "engine": ENGINE,
    }
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@plans.command()
@click.argument("source", metavar="ID_OR_FILE")
@_VERSION
@click.pass_context
def graph(ctx: click.Context, source: str, version: int | None) -> None:
    """Print a plan as a Mermaid flowchart.

    ID_OR_FILE is a plan file, or else the id of a plan in the registry.
    """
    path = Path(source)
    # A plan id never has a slash, so anything that is not an id is a file that could
    # not be found, reported as such rather than as an unknown plan.
    if path.is_file() or not re.fullmatch(ID_PATTERN, source):
        if version is not None:
            raise click.UsageError("--version applies to plans in the registry, not to files")
        plan = _read_plan(path)
    else:
        with _registry(ctx) as registry:
            plan = registry.get(source, version=version).plan
    click.echo(to_mermaid(plan), nl=False)


dee.add_command(runs)
dee.add_command(suppressions)
dee.add_command(tracking)
dee.add_command(db)


def _settings(ctx: click.Context) -> Settings:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        _fail(f"error: {exc}", status=2)
    found = ctx.find_object(_Settings)
    if found is not None and found.database:
        settings = dataclasses.replace(settings, database_url=found.database)
    return settings


def _log_to_stderr(settings: Settings | None = None) -> None:
    """DEE's lines on stderr, as ``DEE_LOG_FORMAT`` and ``DEE_LOG_LEVEL`` say (dee.logs)."""
    configure_logging(settings or Settings())


@dee.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run DEE's worker until Ctrl-C or SIGTERM.

    Temporal is configured by TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ...; DEE by
    DEE_SMTP_URL, DEE_SECRET_KEY, DEE_TASK_QUEUE, ... (see dee.settings).
    """
    # Imported here: `dee plans` does not need the worker's modules.
    from worker import run_worker

    settings = _settings(ctx)
    problem = settings.public_url_problem()
    if problem:
        _fail(f"error: {problem}", status=2)
    _log_to_stderr(settings)
    run_async(run_worker(settings))


@dee.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="The port."
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="The event loop: auto is uvloop when it is installed.",
)
@click.option(
    "--http",
    type=click.Choice(["auto", "h11", "httptools"]),
    default="auto",
    show_default=True,
    help="The HTTP parser: auto is httptools when it is installed.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, loop: str, http: str) -> None:
    """Run the REST API and webhook server until Ctrl-C or SIGTERM.

    The API needs DEE_API_KEYS (comma-separated bearer keys); OpenAPI is at /docs.
    Temporal and DEE are configured as for `dee worker`.
    """
    import importlib.util
    import signal

    import uvicorn

    from dee.runs.temporal import connect
    from dee.server.app import create_app

    class Server(uvicorn.Server):
        # uvicorn re-raises the signal that stopped it once it has shut down, which would end
        # the command with KeyboardInterrupt or SIGTERM's status: stop with 0, as `dee worker`.
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.handle_exit, signum, None)
            try:
                yield
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)

    settings = _settings(ctx)

    async def serve_app() -> None:
        app = create_app(settings, client=await connect(settings=settings))
        # No logging configuration of uvicorn's own: its loggers hand their records to the
        # root logger, formatted as DEE's (dee.logs); its access log stays off.
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=http,
            log_config=None,
            log_level=settings.log_level.lower(),
        )
        await Server(config).serve()

    loop_factory = None
    if loop == "uvloop" or (loop == "auto" and importlib.util.find_spec("uvloop")):
        import uvloop

        loop_factory = uvloop.new_event_loop
    _log_to_stderr(settings)
    run_async(serve_app(), loop_factory=loop_factory)


_F = TypeVar("_F", bound=Callable[..., Any])


def _port_option(name: str, *, default: int, help: str) -> Callable[[_F], _F]:
    """A ``--...-port`` option: a TCP port, its default shown in ``--help``."""
    return click.option(
        name,
        metavar="PORT",
        type=click.IntRange(1, 65535),
        default=default,
        show_default=True,
        help=help,
    )


@dee.command()
@_port_option("--port", default=7233, help="Temporal's gRPC port.")
@_port_option("--ui-port", default=8233, help="The Temporal Web UI's port.")
@_port_option("--smtp-port", default=1025, help="The local SMTP server's port.")
@_port_option("--api-port", default=8000, help="The API server's port.")
@click.option(
    "--worker/--no-worker",
    "with_worker",
    default=True,
    show_default=True,
    help="Run DEE's worker in this process.",
)
@click.pass_context
def dev(
    ctx: click.Context, port: int, ui_port: int, smtp_port: int, api_port: int, with_worker: bool
) -> None:
    """Run Temporal, its Web UI, a local SMTP server, the worker and the API on this machine.

    State is kept under .dee/ in the working folder: Temporal's database (runs survive a
    restart), the secret key, the API key (unless DEE_API_KEYS is set), and every email
    sent, as .eml files in .dee/outbox/. With DEE_PAYLOAD_KEYS set, payloads are encrypted
    and the Web UI decodes them through the API's /codec. Ctrl-C stops everything.
    """
    from dee.cli._local import require_local_extra
    from dee.cli.dev import DevOptions, run_dev

    # Before anything starts: without the local extra it would fail half-way up.
    require_local_extra()
    settings = _settings(ctx)
    _log_to_stderr(settings)
    options = DevOptions(
        port=port, ui_port=ui_port, smtp_port=smtp_port, api_port=api_port, worker=with_worker
    )

    def announce(lines: Sequence[str]) -> None:
        for line in lines:
            click.echo(line)

    # The local environment always migrates, whatever DEE_MIGRATE_ON_START says.
    upgrade_database(settings.database_url)
    run_async(run_dev(options, settings=settings, announce=announce))


def _exit_now(code: object) -> NoReturn:
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        click.echo(code, err=True)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(status)


def main() -> None:
    """Run the ``dee`` command (the console script)."""
    try:
        dee(prog_name="dee")
    except SystemExit as exited:
        # temporalio's core can crash the interpreter while it shuts down, after the
        # command did its work (sdk-python issue 300: exit 134 or 139): a command that
        # used Temporal leaves with its own status before that can happen.
        if used_temporal():
            _exit_now(exited.code)
        raise


if __name__ == "__main__":
    main()
