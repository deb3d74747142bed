"""``dee runs start PLAN_ID --contacts FILE``: many contacts from a CSV, JSON Lines or JSON
file (:mod:`dee.runs.contact_files`), started by :func:`dee.runs.bulk.start_runs` with a
progress bar on stderr (plain lines when stderr is not a terminal), then a summary and
every refused row on stdout.

Exit status 0 when every row's run is started or was already, 1 when a row was refused or
failed, 2 when the file cannot be read (nothing starts then), 130 when interrupted (run the
same command again: rows already started are reported, not started twice).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click
from pydantic import JsonValue
from temporalio.client import Client

from dee.plans.versions import PlanVersion
from dee.runs.bulk import BulkResult, BulkSummary, RowResult, start_runs
from dee.runs.contact_files import ContactFileError, read_contacts
from dee.runs.contacts import ContactIds
from dee.runs.suppressions import Suppressions

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

__all__ = ["start_file"]

#: Without a terminal, a progress line each time another this much of the rows is done.
_STEP: float = 0.05
_LABELS = {
    "started": "started",
    "already_running": "already running",
    "already_ended": "already ended",
    "duplicate": "duplicate",
    "suppressed": "suppressed",
    "invalid": "invalid",
    "failed": "failed",
}


class _Progress:
    """Counts rows as they end and shows it on ``stream``."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.done = 0
        self._next = 0
        self._bar: ProgressBar[int] | None = None
        if stream.isatty():
            self._bar = click.progressbar(
                length=total, label="starting runs", file=stream, show_pos=True
            )
            self._bar.__enter__()

    def __call__(self, result: RowResult) -> None:
        self.done += 1
        self.counts[result.status] += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self.done >= self._next or self.done == self.total:
            self._next = self.done + max(1, round(self.total * _STEP))
            click.echo(self.line(), file=self.stream)

    def line(self) -> str:
        already = sum(self.counts[s] for s in ("already-running", "already-ended", "duplicate"))
        refused = self.done - self.counts["started"] - already
        return (
            f"{self.done:,}/{self.total:,} rows: {self.counts['started']:,} started, "
            f"{already:,} already, {refused:,} refused"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _summary(summary: BulkSummary) -> str:
    counts = summary.model_dump()
    parts = [f"{label} {counts[name]:,}" for name, label in _LABELS.items() if counts[name]]
    return f"{summary.total:,} rows: {', '.join(parts) or 'nothing to do'}"


def start_file(
    version: PlanVersion,
    path: Path,
    *,
    with_client: Callable[[Callable[[Client], Awaitable[BulkResult]]], BulkResult],
    database: str | None,
    variables: Mapping[str, JsonValue],
    sender: str | None,
    task_queue: str,
    concurrency: int,
    restart_ended: bool,
) -> int:
    """Start every row of ``path`` on ``version``, through a client ``with_client`` gives
    (:func:`dee.cli.runs.with_client`); the exit status (see the module)."""
    try:
        rows = read_contacts(path)
    except ContactFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--contacts") from exc
    progress = _Progress(len(rows), sys.stderr)
    started_at = time.monotonic()
    try:
        with ContactIds(database) as contact_ids, Suppressions(database) as suppressions:
            result: BulkResult = with_client(
                lambda client: start_runs(
                    client,
                    version,
                    rows,
                    variables=variables,
                    sender=sender,
                    task_queue=task_queue,
                    contact_ids=contact_ids,
                    suppressions=suppressions,
                    concurrency=concurrency,
                    restart_ended=restart_ended,
                    on_result=progress,
                )
            )
    except KeyboardInterrupt:
        progress.close()
        click.echo(
            f"interrupted: {progress.line()}; run the same command again to start the rest "
            "(rows already started are reported, not started twice)",
            err=True,
        )
        return 130
    finally:
        progress.close()
    seconds = time.monotonic() - started_at
    click.echo(f"{_summary(result.summary)} in {seconds:.1f} s")
    for refused in result.refused:
        click.echo(f"row {refused.row}: {refused.status}: {refused.reason} ({refused.code})")
    return 1 if result.refused else 0
