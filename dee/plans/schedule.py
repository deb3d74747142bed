"""When a plan may reach a contact: send and call windows in the contact's time zone.

A :class:`Window` is a set of week days and one stretch of local time (``from`` before
``to``, no window across midnight). A plan's :class:`Schedule` says which zone is the
contact's (``timezone: contact`` reads ``contact.timezone``, then the zones of
``contact.phone``, then ``fallbackTimezone``; or one IANA name for every contact), the
windows for emails and calls, and the public holidays to skip. A send step may override its
channel's window (``sendWindow`` on ``sendEmail``, ``callWindow`` on ``sendVoice``).

The models take what a document says as it is (any strings): whether a zone, a day, a time
or a holiday calendar exists is for :func:`dee.validate_plan` to report
(:mod:`dee.plans.schedule_checks`), naming the step, with every other problem of the plan.
The decision whether a window is open is made when a run sends (:mod:`dee.runs.windows`).
"""

from __future__ import annotations

import functools
import zoneinfo
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from dee.plans._base import PlanModel

__all__ = [
    "CALLING_HOURS",
    "DAYS",
    "DEFAULT_CALL_WINDOW",
    "Schedule",
    "Window",
    "WindowKind",
    "days_text",
    "holiday_calendar",
    "known_zone",
    "parse_time",
]

#: The week days, in ``datetime.date.weekday()`` order.
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The local hours calls are allowed in (the TCPA's 8 a.m. to 9 p.m.) unless a plan sets
#: ``callingHoursOverride``.
CALLING_HOURS: Final = ("08:00", "21:00")

_Day = Annotated[str, Field(max_length=20)]
_Time = Annotated[str, Field(max_length=20)]


class Window(PlanModel):
    """Days of the week and one stretch of local time, ``from`` up to (not including) ``to``."""

    days: Annotated[tuple[_Day, ...], Field(max_length=7)] = DAYS
    from_: Annotated[_Time, Field(alias="from")] = "00:00"
    to: _Time = "24:00"

    def describe(self) -> str:
        """``mon-fri 09:00-17:00``."""
        return f"{days_text(self.days)} {self.from_}-{self.to}"


#: The window of a call when the plan sets none: every day, within calling hours.
DEFAULT_CALL_WINDOW: Final = Window(days=DAYS, from_=CALLING_HOURS[0], to=CALLING_HOURS[1])


class Schedule(PlanModel):
    """A plan's timing rules (document form ``schedule``); every field has a default."""

    #: ``contact`` (the contact's zone, see the module) or one IANA name (``Europe/Berlin``).
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "contact"
    #: The zone of a contact with neither a usable ``timezone`` nor a phone number's zone.
    fallback_timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    #: When emails go; ``None``: at once.
    send_window: Window | None = None
    #: When calls are placed; ``None``: :data:`DEFAULT_CALL_WINDOW`.
    call_window: Window | None = None
    #: Public holidays to skip, as a country code and optionally a subdivision:
    #: ``US``, ``US-CA``, ``DE-BY`` (the ``holidays`` package's calendars).
    holidays: Annotated[str, Field(min_length=2, max_length=20)] | None = None
    #: Allow call windows outside :data:`CALLING_HOURS`.
    calling_hours_override: bool = False

    def describe(self) -> str:
        """``zone contact (else UTC), emails mon-fri 09:00-17:00, holidays US``."""
        zone = self.timezone
        if zone == "contact":
            zone = f"contact (else {self.fallback_timezone})"
        parts = [f"zone {zone}"]
        if self.send_window is not None:
            parts.append(f"emails {self.send_window.describe()}")
        calls = self.call_window or DEFAULT_CALL_WINDOW
        parts.append(f"calls {calls.describe()}")
        if self.holidays is not None:
            parts.append(f"holidays {self.holidays}")
        if self.calling_hours_override:
            parts.append("calling hours overridden")
        return ", ".join(parts)


#: Which window a send waits for, as its problems and holds name it.
WindowKind = Literal["sendWindow", "callWindow"]


def days_text(days: tuple[str, ...]) -> str:
    """``mon-fri``, ``sat,sun`` or ``every day`` for a tuple of day names."""
    if tuple(days) == DAYS:
        return "every day"
    if days and all(day in DAYS for day in days):
        indexes = [DAYS.index(day) for day in days]
        if indexes == list(range(indexes[0], indexes[-1] + 1)) and len(indexes) > 2:
            return f"{days[0]}-{days[-1]}"
    return ",".join(days)


def parse_time(text: str) -> int | None:
    """Minutes after midnight of an ``HH:MM`` local time (``24:00`` is 1440); ``None`` when
    ``text`` is not one."""
    if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
        return None
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this machine knows (``tzdata`` ships them all).

    A name is looked up in the list of zones, never used as a path first: a contact's
    ``timezone`` is untrusted."""
    return name in _zone_names()


def holiday_calendar(code: str) -> Any:
    """The ``holidays`` calendar of ``code`` (``US``, ``US-CA``); ``LookupError`` naming
    what is wrong when there is none. Imported on first use: the package is big."""
    import holidays

    country, _, subdivision = code.partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        raise LookupError(
            f"{country!r} is not a country code the holidays package knows; expected an "
            "ISO 3166 code such as 'US', 'DE' or 'GB'"
        )
    if subdivision and subdivision not in supported[country]:
        raise LookupError(
            f"{subdivision!r} is not a subdivision of {country}; expected one of "
            f"{', '.join(supported[country][:20])}{', ...' if len(supported[country]) > 20 else ''}"
        )
    return holidays.country_holidays(country, subdiv=subdivision or None)
