"""``dee tracking``: the signals of tracking hits, for operators.

::

    dee tracking sweep [--older-than SECONDS]

Every ``dee serve`` sweeps by itself (:mod:`dee.server.sweeper`); ``sweep`` does one pass
by hand, for instance with no server running, or with ``--older-than 0`` right after an
incident. It needs the database (``--database``/``DEE_DATABASE_URL``) and Temporal, as
``dee runs`` does.
"""

from __future__ import annotations

import click
from temporalio.client import Client

from dee.cli.runs import database_of, with_client
from dee.server.hits import HitStore
from dee.settings import Settings

__all__ = ["tracking"]


@click.group()
def tracking() -> None:
    """The signals that tracking hits (opens, clicks) send to their runs."""


@tracking.command()
@click.option(
    "--older-than",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    help="Sweep hits at least this old  [default: DEE_TRACKING_SWEEP_AFTER, else 30]",
)
@click.pass_context
def sweep(ctx: click.Context, older_than: float | None) -> None:
    """Signal the runs of tracking hits whose signal never went out (a server stopped
    between keeping the hit and signalling): one pass of the server's sweeper.

    Prints how many were signalled, how many runs had ended (never tried again) and how
    many failed (tried again by a later sweep; the command then exits 1).
    """
    from dee.server.sweeper import sweep as sweep_once

    if older_than is None:
        try:
            older_than = Settings.from_env().tracking_sweep_after
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(2) from None

    async def swept(client: Client) -> tuple[int, int, int]:
        with HitStore(database_of(ctx)) as store:
            report = await sweep_once(client, store, older_than=older_than)
        return report.signalled, report.ended, report.failed

    signalled, ended, failed = with_client(swept)
    click.echo(f"{signalled} signalled, {ended} for ended runs, {failed} to try again")
    if failed:
        raise click.exceptions.Exit(1)
