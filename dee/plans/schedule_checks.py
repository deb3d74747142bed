"""The problems of a plan's timing (:mod:`dee.plans.schedule`), for :func:`dee.validate_plan`.

==========================  ===============================================================
``invalid-timezone``        ``timezone`` or ``fallbackTimezone`` is not an IANA zone name
``invalid-window``          a window's ``from``/``to`` is not ``HH:MM``, ``from`` is not
                            before ``to``, or it has no days
``unknown-day``             a window names a day that is not ``mon`` ... ``sun``
``outside-calling-hours``   a call window reaches outside 08:00-21:00 local time without
                            ``callingHoursOverride: true``
``unknown-holidays``        ``holidays`` is not a calendar the ``holidays`` package has
==========================  ===============================================================

Plan-wide problems name ``schedule`` as their step, so they read ``schedule: ...``.
"""

from __future__ import annotations

from typing import Final

from dee.errors import Problem
from dee.plans.model import ExecutionPlan, SendEmailStep, SendVoiceStep
from dee.plans.schedule import (
    CALLING_HOURS,
    DAYS,
    Window,
    WindowKind,
    holiday_calendar,
    known_zone,
    parse_time,
)

__all__ = ["SCHEDULE", "check_schedule"]

#: The "step" plan-wide timing problems name.
SCHEDULE: Final = "schedule"


def check_schedule(plan: ExecutionPlan) -> list[Problem]:
    """Every problem with ``plan.schedule`` and the steps' window overrides."""
    schedule = plan.schedule
    problems: list[Problem] = []
    if schedule.timezone != "contact" and not known_zone(schedule.timezone):
        problems.append(_bad_zone("timezone", schedule.timezone, "'contact' or "))
    if not known_zone(schedule.fallback_timezone):
        problems.append(_bad_zone("fallbackTimezone", schedule.fallback_timezone, ""))
    if schedule.holidays is not None:
        try:
            holiday_calendar(schedule.holidays)
        except LookupError as error:
            problems.append(
                Problem(
                    SCHEDULE,
                    "unknown-holidays",
                    f"holidays is {schedule.holidays!r}: {error}; write a country code, "
                    "optionally with a subdivision ('US', 'US-CA', 'DE-BY')",
                )
            )
    calls = not schedule.calling_hours_override
    if schedule.send_window is not None:
        problems.extend(check_window(SCHEDULE, "sendWindow", schedule.send_window))
    if schedule.call_window is not None:
        problems.extend(
            check_window(SCHEDULE, "callWindow", schedule.call_window, calling_hours=calls)
        )
    for step in plan.steps:
        if isinstance(step, SendEmailStep) and step.send_window is not None:
            problems.extend(check_window(step.id, "sendWindow", step.send_window))
        elif isinstance(step, SendVoiceStep) and step.call_window is not None:
            problems.extend(
                check_window(step.id, "callWindow", step.call_window, calling_hours=calls)
            )
    return problems


def check_window(
    owner: str, kind: WindowKind, window: Window, *, calling_hours: bool = False
) -> list[Problem]:
    """The problems of one window; ``calling_hours``: it must lie within them."""
    problems: list[Problem] = []
    unknown = [day for day in window.days if day not in DAYS]
    for day in unknown:
        problems.append(
            Problem(
                owner,
                "unknown-day",
                f"{kind} has day {day!r}; expected {', '.join(DAYS)} (lowercase, three letters)",
            )
        )
    if not window.days:
        problems.append(
            Problem(owner, "invalid-window", f"{kind} has no days; list at least one, e.g. [mon]")
        )
    start, end = parse_time(window.from_), parse_time(window.to)
    for name, text, minutes in (("from", window.from_, start), ("to", window.to, end)):
        if minutes is None:
            problems.append(
                Problem(
                    owner,
                    "invalid-window",
                    f"{kind}.{name} is {text!r}; expected a local time HH:MM such as '09:00' "
                    "(00:00 to 24:00)",
                )
            )
    if start is None or end is None:
        return problems
    if start >= end:
        problems.append(
            Problem(
                owner,
                "invalid-window",
                f"{kind} runs from {window.from_!r} to {window.to!r}; from must be before to "
                "(a window cannot span midnight: use two steps or widen it)",
            )
        )
    elif calling_hours:
        earliest, latest = (parse_time(text) for text in CALLING_HOURS)
        assert earliest is not None and latest is not None
        if start < earliest or end > latest:
            problems.append(
                Problem(
                    owner,
                    "outside-calling-hours",
                    f"{kind} runs from {window.from_!r} to {window.to!r}, outside calling hours "
                    f"{CALLING_HOURS[0]}-{CALLING_HOURS[1]} local time; narrow it, or set "
                    "schedule.callingHoursOverride: true if calls outside them are lawful "
                    "for you",
                )
            )
    return problems


def _bad_zone(field: str, value: str, also: str) -> Problem:
    return Problem(
        SCHEDULE,
        "invalid-timezone",
        f"{field} is {value!r}, which is not a time zone; expected {also}an IANA name such "
        "as 'America/New_York' or 'Europe/Berlin'",
    )
