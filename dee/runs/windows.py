"""Whether a send may go now, and if not, when its window next opens.

A send step of an engine-3 run carries a :class:`WindowCheck` to its activity: the window
(the step's own, else the plan schedule's; every call has one, by default every day
08:00-21:00), how to find the contact's zone and which holidays to skip. The activity asks
:func:`closed_until` at the start of every attempt, from the attempt's start time (the
Temporal server's clock), and when the window is closed fails with ``OutsideWindow``,
carrying a :class:`WindowClosed`; the workflow then holds the send on a timer until then.
The decision is made once and lands in the run's history, so a worker with another version
of the zone database replays the same run the same way.

:func:`next_opening` is pure: the intervals during which the window is open, in every one
of the contact's zones at once, computed day by day with :mod:`zoneinfo` (so a day of 23 or
25 hours is as long as it is). A local time a DST change skips (02:30 on the night clocks go
forward) is read with the offset before the change, i.e. one hour later on the new clock; a
time the change repeats is its first occurrence.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field

from dee.plans.decoding import TolerantModel
from dee.plans.model import ExecutionPlan, SendEmailStep, SendVoiceStep
from dee.plans.schedule import (
    DAYS,
    DEFAULT_CALL_WINDOW,
    Window,
    WindowKind,
    holiday_calendar,
    known_zone,
    parse_time,
)
from dee.runs.model import Contact

__all__ = [
    "HORIZON_DAYS",
    "OUTSIDE_WINDOW",
    "NoOpeningError",
    "WindowCheck",
    "WindowClosed",
    "closed_details",
    "closed_until",
    "contact_zones",
    "next_opening",
    "window_check",
]

#: The ``ApplicationError`` type of a send attempted outside its window.
OUTSIDE_WINDOW: Final = "OutsideWindow"
#: How far ahead an opening is looked for: a window that opens on none of these days (all
#: its days holidays, zones whose windows never meet) fails the send.
HORIZON_DAYS: Final = 400


class NoOpeningError(ValueError):
    """The window does not open within :data:`HORIZON_DAYS`, or cannot be read."""


class _Frozen(TolerantModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowCheck(_Frozen):
    """What a send activity checks before anything else (``None`` on the input: nothing)."""

    kind: WindowKind
    #: The step the window is for, to name in holds and errors.
    step_id: str
    window: Window
    #: ``contact`` or one IANA zone name (:attr:`dee.plans.schedule.Schedule.timezone`).
    timezone: str = "contact"
    fallback_timezone: str = "UTC"
    holidays: str | None = None
    #: Not before this local date (e.g. an out-of-office reply's return date).
    not_before: datetime.date | None = None


class WindowClosed(_Frozen):
    """The details of an ``OutsideWindow`` failure: what the workflow holds the send for."""

    #: When the window opens (UTC).
    until: datetime.datetime
    kind: WindowKind
    step_id: str
    zones: Annotated[tuple[str, ...], Field(min_length=1)]
    #: ``send window of intro-email opens 2026-12-07 09:00 America/New_York``
    reason: str


ONE_DAY: Final = datetime.timedelta(days=1)


def window_check(
    plan: ExecutionPlan,
    step: SendEmailStep | SendVoiceStep,
    *,
    not_before: datetime.date | None = None,
) -> WindowCheck | None:
    """The check a send of ``step`` makes: ``None`` for an email without a window and with
    no ``not_before`` (the local date an out-of-office reply holds sends until; with it, a
    step without a window checks one that is always open from that day)."""
    schedule = plan.schedule
    window: Window | None
    kind: Literal["sendWindow", "callWindow"]
    if isinstance(step, SendEmailStep):
        kind, window = "sendWindow", step.send_window or schedule.send_window
    else:
        kind = "callWindow"
        window = step.call_window or schedule.call_window or DEFAULT_CALL_WINDOW
    if window is None and not_before is None:
        return None
    return WindowCheck(
        kind=kind,
        step_id=step.id,
        window=window or Window(),
        timezone=schedule.timezone,
        fallback_timezone=schedule.fallback_timezone,
        holidays=schedule.holidays if window is not None else None,
        not_before=not_before,
    )


def contact_zones(contact: Contact, *, timezone: str, fallback: str) -> tuple[str, ...]:
    """The zones a send to ``contact`` must respect, sorted.

    ``timezone`` other than ``contact`` is every contact's zone. Otherwise the contact's
    ``timezone`` when it is a zone this machine knows (anything else is ignored, as if
    absent), else every zone of its phone number's region (``phonenumbers``; none for a
    number tied to no place, such as a toll-free one), else ``fallback``.
    """
    if timezone != "contact":
        return (_zone(timezone, "timezone"),)
    if isinstance(contact.timezone, str) and known_zone(contact.timezone):
        return (contact.timezone,)
    zones = _phone_zones(contact.phone) if contact.phone else ()
    return zones or (_zone(fallback, "fallbackTimezone"),)


def _phone_zones(phone: str) -> tuple[str, ...]:
    """The zones of ``phone``'s region; none for a number that is not tied to a place (a
    toll-free, premium-rate, shared-cost, personal or VoIP number spans a whole plan)."""
    import phonenumbers
    from phonenumbers import PhoneNumberType
    from phonenumbers import timezone as phone_zones

    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        return ()
    placeless = {
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.UAN,
        PhoneNumberType.PERSONAL_NUMBER,
        PhoneNumberType.VOIP,
    }
    if phonenumbers.number_type(number) in placeless:
        return ()
    return tuple(sorted({z for z in phone_zones.time_zones_for_number(number) if known_zone(z)}))


def _zone(name: str, field: str) -> str:
    if not known_zone(name):
        raise NoOpeningError(f"schedule {field} {name!r} is not a time zone")
    return name


def next_opening(
    window: Window,
    zones: Sequence[str],
    *,
    now: datetime.datetime,
    holidays: str | None = None,
    not_before: datetime.date | None = None,
) -> datetime.datetime | None:
    """``None`` when ``window`` is open at ``now`` in every one of ``zones``; otherwise the
    first moment (UTC) after ``now`` when it is, skipping the ``holidays`` calendar's days
    and local dates before ``not_before``. :class:`NoOpeningError` when there is none within
    :data:`HORIZON_DAYS` or the window cannot be read."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not zones:
        raise NoOpeningError("no time zone to check the window in")
    start, end = parse_time(window.from_), parse_time(window.to)
    days = {DAYS.index(day) for day in window.days if day in DAYS}
    if start is None or end is None or start >= end or not days:
        raise NoOpeningError(f"the window {window.describe()!r} is not a valid window")
    calendar = holiday_calendar(holidays) if holidays else None
    now = now.astimezone(datetime.UTC)
    open_: list[tuple[datetime.datetime, datetime.datetime]] | None = None

    def allowed(day: datetime.date) -> bool:
        return (
            day.weekday() in days
            and (calendar is None or day not in calendar)
            and (not_before is None or day >= not_before)
        )

    for name in zones:
        intervals = list(_open_intervals(zoneinfo.ZoneInfo(name), now, allowed, start, end))
        open_ = intervals if open_ is None else _intersect(open_, intervals)
    assert open_ is not None
    for opens, closes in open_:
        if closes > now:
            return None if opens <= now else opens
    raise NoOpeningError(
        f"the window {window.describe()} does not open in {', '.join(zones)} "
        f"within {HORIZON_DAYS} days"
    )


def _open_intervals(
    zone: zoneinfo.ZoneInfo,
    now: datetime.datetime,
    allowed: Callable[[datetime.date], bool],
    start: int,
    end: int,
) -> Iterable[tuple[datetime.datetime, datetime.datetime]]:
    """The window's intervals in ``zone`` (UTC) from the local day before ``now`` on, on the
    local days ``allowed``."""
    today = now.astimezone(zone).date()
    for offset in range(-1, HORIZON_DAYS):
        day = today + datetime.timedelta(days=offset)
        if allowed(day):
            yield _utc(day, start, zone), _utc(day, end, zone)


def _utc(day: datetime.date, minutes: int, zone: zoneinfo.ZoneInfo) -> datetime.datetime:
    # 24:00 is the next day's midnight; wall-clock times go through the zone's rules.
    day += datetime.timedelta(days=minutes // 1440)
    hours, minute = divmod(minutes % 1440, 60)
    local = datetime.datetime.combine(day, datetime.time(hours, minute), tzinfo=zone)
    return local.astimezone(datetime.UTC)


def _intersect(
    left: list[tuple[datetime.datetime, datetime.datetime]],
    right: list[tuple[datetime.datetime, datetime.datetime]],
) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """Where two sorted lists of disjoint intervals overlap."""
    both: list[tuple[datetime.datetime, datetime.datetime]] = []
    i = j = 0
    while i < len(left) and j < len(right):
        opens = max(left[i][0], right[j][0])
        closes = min(left[i][1], right[j][1])
        if opens < closes:
            both.append((opens, closes))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return both


def closed_until(
    check: WindowCheck, contact: Contact, *, now: datetime.datetime
) -> WindowClosed | None:
    """``None`` when a send of ``check``'s step to ``contact`` may go at ``now``; otherwise
    when and why it must wait."""
    zones = contact_zones(contact, timezone=check.timezone, fallback=check.fallback_timezone)
    try:
        opens = next_opening(
            check.window, zones, now=now, holidays=check.holidays, not_before=check.not_before
        )
    except NoOpeningError:
        if len(zones) == 1:
            raise
        # A phone region whose zones' windows never meet (a Russian mobile number spans
        # eleven hours): the window of the fallback zone instead of no send at all.
        zones = (_zone(check.fallback_timezone, "fallbackTimezone"),)
        opens = next_opening(
            check.window, zones, now=now, holidays=check.holidays, not_before=check.not_before
        )
    if opens is None:
        return None
    # Said in the zone whose window opens then (the others' opened earlier).
    local = {zone: opens.astimezone(zoneinfo.ZoneInfo(zone)) for zone in zones}
    shown = next((z for z in zones if f"{local[z]:%H:%M}" == check.window.from_), zones[0])
    others = len(zones) - 1
    more = f" (and {others} more zone{'s' if others > 1 else ''})" if others else ""
    what = "send window" if check.kind == "sendWindow" else "call window"
    if check.not_before is not None and opens.date() >= check.not_before - ONE_DAY:
        # The hold is an out-of-office reply's (pauseOnAutoReply), maybe with a window too.
        what = f"out of office until {check.not_before - ONE_DAY:%Y-%m-%d}:"
    return WindowClosed(
        until=opens,
        kind=check.kind,
        step_id=check.step_id,
        zones=zones,
        reason=f"{what} of {check.step_id} opens {local[shown]:%Y-%m-%d %H:%M} {shown}{more}",
    )


def closed_details(closed: WindowClosed) -> dict[str, Any]:
    """``closed`` as the JSON an ``OutsideWindow`` failure carries."""
    return closed.model_dump(mode="json")
