"""``dee suppressions``: the suppression list by hand.

::

    dee suppressions add VALUE [--reason manual|unsubscribe|bounce|spamreport]
    dee suppressions remove VALUE
    dee suppressions list [--channel email|phone] [--limit N] [--json]

VALUE is an email address or a phone number with its country code (``+1 555 123 4567``
is read as ``+15551234567``). ``add`` also ends the contact's running runs, as every
unsubscribe does (:mod:`dee.runs.unsubscribe`), so it needs Temporal as ``dee runs`` does;
``remove`` and ``list`` only need the database (``--database``/``DEE_DATABASE_URL``).
"""

from __future__ import annotations

import json

import click

from dee.cli import _format as fmt
from dee.cli.runs import database_of, with_client
from dee.runs.contacts import ContactIds
from dee.runs.suppressions import (
    SUPPRESSION_REASONS,
    InvalidContactValueError,
    SuppressionReason,
    Suppressions,
    normalize,
)
from dee.runs.unsubscribe import unsubscribe

__all__ = ["suppressions"]


def _value(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return normalize(value)[1]
    except InvalidContactValueError as exc:
        raise click.BadParameter(str(exc)) from exc


_VALUE = click.argument("value", callback=_value)


@click.group()
def suppressions() -> None:
    """Suppress email addresses and phone numbers by hand, lift and list suppressions."""


@suppressions.command()
@_VALUE
@click.option(
    "--reason",
    type=click.Choice(SUPPRESSION_REASONS),
    default="manual",
    show_default=True,
    help="Why it is suppressed.",
)
@click.pass_context
def add(ctx: click.Context, value: str, reason: SuppressionReason) -> None:
    """Suppress VALUE (an email address or phone number) and end the contact's running
    runs; nothing more is sent to it or dialled, and no run for it starts."""
    with Suppressions(database_of(ctx)) as store, ContactIds(database_of(ctx)) as contacts:
        done = with_client(
            lambda client: unsubscribe(
                client,
                store,
                [value],
                reason=reason,
                source="cli",
                contact_ids=[value],
                contacts=contacts,
            )
        )
        found = store.suppression(value)
    assert found is not None, value
    if done.suppressed:
        click.echo(f"suppressed {value} ({reason})")
    else:
        click.echo(f"{value} was suppressed already ({found.reason}, from {found.source})")
    for run_id in done.runs_ended:
        click.echo(f"ended run {run_id}")


@suppressions.command()
@_VALUE
@click.pass_context
def remove(ctx: click.Context, value: str) -> None:
    """Lift the suppression of VALUE: sends to it resume and runs for it may start."""
    with Suppressions(database_of(ctx)) as store:
        removed = store.remove(value)
    if not removed:
        raise click.ClickException(f"{value} is not suppressed: see `dee suppressions list`")
    click.echo(f"lifted {value}")


@suppressions.command(name="list")
@click.option("--channel", type=click.Choice(["email", "phone"]), help="Only this channel.")
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON array.")
@click.pass_context
def list_command(ctx: click.Context, channel: str | None, limit: int, as_json: bool) -> None:
    """List suppressed addresses and phone numbers, newest first."""
    with Suppressions(database_of(ctx)) as store:
        entries = store.entries(
            channel="email" if channel == "email" else "phone" if channel else None, limit=limit
        )
    if as_json:
        documents = [
            {
                "address": entry.address,
                "channel": entry.channel,
                "reason": entry.reason,
                "source": entry.source,
                "run_id": entry.run_id,
                "at": entry.at.isoformat(),
            }
            for entry in entries
        ]
        click.echo(json.dumps(documents, indent=2, ensure_ascii=False))
        return
    if not entries:
        click.echo("nothing is suppressed", err=True)
        return
    rows = [
        [
            entry.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            entry.address,
            entry.channel,
            entry.reason,
            entry.source,
            entry.run_id or "-",
        ]
        for entry in entries
    ]
    for line in fmt.table(["AT", "VALUE", "CHANNEL", "REASON", "SOURCE", "RUN"], rows):
        click.echo(line)
