"""Unsubscribing a contact: put the address or number on the suppression list, then end the
contact's running runs. Every entry point goes through :func:`unsubscribe`: the one-click
link and the ``mailto:`` of ``List-Unsubscribe``, SendGrid's unsubscribe and spam report
events, an ``unsubscribe`` event sent through the API or ``dee runs event``, and
``dee suppressions add`` or ``POST /v1/suppressions``.

A run ends when it gets the ``unsubscribe`` event (outcome ``unsubscribed``, at once, even
mid-wait). The runs told are the run the unsubscribe came from, and every running run whose
``DeeContactId`` search attribute is that run's contact or one of the ``contact_ids`` given.
``start_run`` sets the attribute when it starts a run, and the workflow sets it itself when
a plain Temporal client started it without, so those runs are found too. A contact id is
not an address: runs of a contact whose id is neither the address nor given here are not
found by an address alone, but their sends are still refused at send time, since both
activities read the list before every send.

The event id is ``unsubscribe:<run id>``: telling a run twice (a second click, a retried
webhook) adds nothing to its history.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from temporalio.client import Client
from temporalio.service import RPCError

from dee.runs._history import not_found, run_input
from dee.runs.client import contact_query, send_event
from dee.runs.errors import RunClosedError, RunNotFoundError
from dee.runs.model import CONTACT_ID_ATTRIBUTE, WORKFLOW_NAME, Contact

if TYPE_CHECKING:
    from dee.runs.contacts import ContactIds
    from dee.runs.suppressions import SuppressionReason, Suppressions, SuppressionSource

__all__ = [
    "MAX_CONTACT_RUNS",
    "Unsubscribed",
    "end_contact_runs",
    "event_id",
    "run_contact",
    "unsubscribe",
    "unsubscribe_run",
]

#: Most running runs of one contact an unsubscribe ends.
MAX_CONTACT_RUNS: Final = 1000
#: Longest event id a run accepts (dee.runs.model.RunEvent).
_MAX_EVENT_ID: Final = 200


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """What an unsubscribe did."""

    #: The values newly put on the list (those already there are not repeated).
    suppressed: tuple[str, ...]
    #: The runs that took the ``unsubscribe`` event.
    runs_ended: tuple[str, ...]


def event_id(
    kind: str,
    run_id: str,
    step_id: str | None = None,
    visit: int | None = None,
    execution: str = "",
) -> str:
    """A deterministic event id ``<kind>:<run>[:<step>:<visit>][:<execution>]``, the same
    every time the same thing is reported, so the run drops repeats (the execution when the
    token named one: a later run under the same id has ids of its own); a digest when that
    is longer than a run accepts."""
    parts = [kind, run_id] + ([step_id, str(visit)] if step_id is not None else [])
    parts += [execution] if execution else []
    readable = ":".join(parts)
    if len(readable) <= _MAX_EVENT_ID:
        return readable
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{kind}:{digest}"


async def unsubscribe(
    client: Client,
    suppressions: Suppressions,
    values: Sequence[str],
    *,
    reason: SuppressionReason,
    source: SuppressionSource,
    run_id: str | None = None,
    contact_ids: Iterable[str] = (),
    contacts: ContactIds | None = None,
) -> Unsubscribed:
    """Suppress ``values`` (addresses and numbers), then end ``run_id`` and every running
    run of its contact and of ``contact_ids``, and with ``contacts`` of every contact id
    each value can have (:meth:`~dee.runs.contacts.ContactIds.lookup`: its hashed id and
    the value itself). The list is written first: if Temporal cannot be reached the
    ``RPCError`` propagates, and nothing more is sent anyway."""
    wanted = list(contact_ids)
    if contacts is not None:
        for value in values:
            wanted.extend(await asyncio.to_thread(contacts.lookup, value))
    added = []
    for value in values:
        if await asyncio.to_thread(
            suppressions.suppress, value, reason=reason, source=source, run_id=run_id
        ):
            added.append(value)
    ended = await end_contact_runs(client, run_id=run_id, contact_ids=wanted)
    return Unsubscribed(suppressed=tuple(added), runs_ended=ended)


async def run_contact(client: Client, run_id: str) -> Contact:
    """The contact run ``run_id`` was started with, from its history (no worker needed);
    :class:`RunNotFoundError` when there is no such run."""
    return (await run_input(client, run_id)).contact


async def unsubscribe_run(
    client: Client,
    suppressions: Suppressions,
    run_id: str,
    *,
    source: SuppressionSource,
    contacts: ContactIds | None = None,
) -> Unsubscribed:
    """The contact of run ``run_id`` asked to hear no more (an ``unsubscribe`` event given
    by hand, through the API or the CLI): suppress its email address *and* phone number,
    then end the run and every running run of the contact. :class:`RunNotFoundError` when
    there is no such run."""
    contact = await run_contact(client, run_id)
    values = [value for value in (contact.email, contact.phone) if value is not None]
    return await unsubscribe(
        client,
        suppressions,
        values,
        reason="unsubscribe",
        source=source,
        run_id=run_id,
        contact_ids=[contact.id],
        contacts=contacts,
    )


async def end_contact_runs(
    client: Client, *, run_id: str | None = None, contact_ids: Iterable[str] = ()
) -> tuple[str, ...]:
    """Send ``unsubscribe`` to ``run_id`` and every running run of its contact and of
    ``contact_ids``; the runs that took it (a run that has ended is skipped)."""
    targets = set()
    wanted = set(contact_ids)
    if run_id is not None:
        targets.add(run_id)
        found = await _contact_id(client, run_id)
        if found:
            wanted.add(found)
    query = _running_runs_query(sorted(wanted))
    if query is not None:
        async for execution in client.list_workflows(query, limit=MAX_CONTACT_RUNS):
            targets.add(execution.id)
    told = []
    for target in sorted(targets):
        try:
            await send_event(
                client, target, type="unsubscribe", event_id=event_id("unsubscribe", target)
            )
        except (RunClosedError, RunNotFoundError):
            continue
        told.append(target)
    return tuple(told)


async def _contact_id(client: Client, run_id: str) -> str | None:
    """The run's contact, as its ``DeeContactId`` says; from the id ``<plan>:<contact>``
    when the run is gone or has no such attribute."""
    try:
        description = await client.get_workflow_handle(run_id).describe()
    except RPCError as exc:
        if not not_found(exc):
            raise
    else:
        found = description.typed_search_attributes.get(CONTACT_ID_ATTRIBUTE)
        if found:
            return found
    _plan, colon, contact = run_id.partition(":")
    return contact if colon and contact else None


def _running_runs_query(contact_ids: Iterable[str]) -> str | None:
    """The visibility query for the running runs of ``contact_ids``; ``None`` when no id
    can be quoted safely."""
    among = contact_query(contact_ids)
    if among is None:
        return None
    return f"WorkflowType = '{WORKFLOW_NAME}' AND {among} AND ExecutionStatus = 'Running'"
