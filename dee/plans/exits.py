"""``exitOn``: the events that end a run wherever it is, and the outcome each ends it with.

A plan lists them by name (``exitOn: [reply, unsubscribe, bounce, complaint]``); without
``exitOn`` a run ends on an unsubscribe, a bounce or a complaint, and keeps going after a
reply (a plan that branches on replies opts in with ``reply``). An unsubscribe ends a run
whether it is listed or not: a contact's wish not to hear from the sender is not a plan's
choice (the suppression list would stop every later send anyway).

====================  =======================  ===========================================
name                  event types              outcome
====================  =======================  ===========================================
``reply``             ``reply``                ``replied``
``unsubscribe``       ``unsubscribe``          ``unsubscribed``
``bounce``            ``bounce``               ``bounced``
``complaint``         ``spamreport``           ``complained``
====================  =======================  ===========================================

An automatic reply (``auto-reply``, an out-of-office notice) is not a reply and ends
nothing. A reply, bounce or complaint counts for the run execution its email belongs to
(:attr:`dee.runs.model.RunEvent.execution`); an unsubscribe counts whichever email it came
from.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["DEFAULT_EXIT_ON", "EXIT_EVENTS", "Exit", "exits_for"]


class Exit(NamedTuple):
    """An ``exitOn`` name: the event types that trigger it and the run's outcome."""

    name: str
    event_types: frozenset[str]
    outcome: str


#: Every name ``exitOn`` accepts, in the order they are documented.
EXIT_EVENTS: Final = {
    exit.name: exit
    for exit in (
        Exit("reply", frozenset({"reply"}), "replied"),
        Exit("unsubscribe", frozenset({"unsubscribe"}), "unsubscribed"),
        Exit("bounce", frozenset({"bounce"}), "bounced"),
        Exit("complaint", frozenset({"spamreport"}), "complained"),
    )
}
#: What a plan without ``exitOn`` exits on.
DEFAULT_EXIT_ON: Final = ("unsubscribe", "bounce", "complaint")


def exits_for(exit_on: tuple[str, ...] | None) -> dict[str, str]:
    """Event type to outcome for a plan's ``exitOn`` (``None``: the default); unknown names
    are left out (validation reports them), and an unsubscribe is always in."""
    names = {*(DEFAULT_EXIT_ON if exit_on is None else exit_on), "unsubscribe"}
    return {
        event_type: exit.outcome
        for name, exit in EXIT_EVENTS.items()
        if name in names
        for event_type in exit.event_types
    }
