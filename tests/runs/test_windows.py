"""dee.runs.windows: when a window next opens, across the 2026 DST changes, in several
zones, around holidays; which zones a contact is in; which window a send checks."""

from __future__ import annotations

import datetime

import pytest

import dee
from dee.plans.schedule import DEFAULT_CALL_WINDOW, Window
from dee.runs.model import Contact
from dee.runs.windows import (
    NoOpeningError,
    WindowCheck,
    closed_until,
    contact_zones,
    next_opening,
    window_check,
)

UTC = datetime.UTC
WEEKDAYS = Window(days=("mon", "tue", "wed", "thu", "fri"), from_="09:00", to="17:00")
NY, BERLIN = "America/New_York", "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "now", "opens"),
    [
        # New York springs forward on Sunday 2026-03-08: Monday 09:00 is EDT (UTC-4).
        (NY, utc(2026, 3, 6, 23), utc(2026, 3, 9, 13)),
        # ... and falls back on Sunday 2026-11-01: Monday 09:00 is EST (UTC-5).
        (NY, utc(2026, 10, 30, 22), utc(2026, 11, 2, 14)),
        # Berlin springs forward on Sunday 2026-03-29: Monday 09:00 is CEST (UTC+2).
        (BERLIN, utc(2026, 3, 27, 17), utc(2026, 3, 30, 7)),
        # ... and falls back on Sunday 2026-10-25: Monday 09:00 is CET (UTC+1).
        (BERLIN, utc(2026, 10, 23, 16), utc(2026, 10, 26, 8)),
        # Inside the window: open now.
        (NY, utc(2026, 3, 9, 14), None),
        # 09:00 sharp is inside, 17:00 sharp is not.
        (NY, utc(2026, 3, 9, 13), None),
        (NY, utc(2026, 3, 9, 21), utc(2026, 3, 10, 13)),
        # Before the window on a weekday: today at 09:00.
        (BERLIN, utc(2026, 10, 26, 6), utc(2026, 10, 26, 8)),
    ],
)
def test_next_opening_across_the_2026_dst_changes(
    zone: str, now: datetime.datetime, opens: datetime.datetime | None
) -> None:
    assert next_opening(WEEKDAYS, [zone], now=now) == opens


@pytest.mark.parametrize(
    ("start", "opens"),
    [
        # 02:30 does not exist on 2026-03-08 in New York: read with the offset before the
        # change (EST), it is 07:30 UTC, 03:30 on the new clock.
        ("02:30", utc(2026, 3, 8, 7, 30)),
        # 01:00 exists once: EST.
        ("01:00", utc(2026, 3, 8, 6)),
        # 03:00 is EDT.
        ("03:00", utc(2026, 3, 8, 7)),
    ],
)
def test_a_window_on_the_spring_forward_night(start: str, opens: datetime.datetime) -> None:
    window = Window(days=("sun",), from_=start, to="05:00")
    assert next_opening(window, [NY], now=utc(2026, 3, 7, 12)) == opens


def test_a_time_the_fall_back_repeats_is_its_first_occurrence() -> None:
    window = Window(days=("sun",), from_="01:30", to="05:00")
    # 01:30 EDT (UTC-4), not the second 01:30 an hour later (EST).
    assert next_opening(window, [NY], now=utc(2026, 10, 31, 12)) == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        # Between the US and the European changes New York is 5 hours behind Berlin:
        # both are open 13:00-16:00 UTC.
        (utc(2026, 3, 9, 12), utc(2026, 3, 9, 13)),
        (utc(2026, 3, 9, 15, 59), None),
        (utc(2026, 3, 9, 16), utc(2026, 3, 10, 13)),
        # After Berlin's change (6 hours again): 13:00-15:00 UTC.
        (utc(2026, 3, 30, 15), utc(2026, 3, 31, 13)),
    ],
)
def test_several_zones_use_the_times_all_allow(
    now: datetime.datetime, opens: datetime.datetime | None
) -> None:
    assert next_opening(WEEKDAYS, [NY, BERLIN], now=now) == opens


def test_windows_that_never_meet_have_no_opening() -> None:
    # Monday 09:00-10:00 at UTC+14 and at UTC-11 are 25 hours apart.
    window = Window(days=("mon",), from_="09:00", to="10:00")
    with pytest.raises(NoOpeningError, match="does not open"):
        next_opening(window, ["Pacific/Kiritimati", "Pacific/Pago_Pago"], now=utc(2026, 3, 2))


def test_holidays_are_skipped() -> None:
    # Christmas 2026 is a Friday: Thursday evening's send waits for Monday the 28th.
    now = utc(2026, 12, 24, 23)
    assert next_opening(WEEKDAYS, [NY], now=now, holidays="US") == utc(2026, 12, 28, 14)
    assert next_opening(WEEKDAYS, [NY], now=now) == utc(2026, 12, 25, 14)
    # Subdivisions: Berlin's own Women's Day (8 March, a Monday in 2027).
    march_8 = utc(2027, 3, 8, 10)
    assert next_opening(WEEKDAYS, [BERLIN], now=march_8, holidays="DE-BE") == utc(2027, 3, 9, 8)
    assert next_opening(WEEKDAYS, [BERLIN], now=march_8, holidays="DE-BY") is None


def test_not_before_a_local_date() -> None:
    # Open now, but held to the return date (an out-of-office reply's).
    now = utc(2026, 3, 9, 14)
    later = datetime.date(2026, 3, 11)
    assert next_opening(WEEKDAYS, [NY], now=now, not_before=later) == utc(2026, 3, 11, 13)


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        # The contact's own zone first.
        ({"timezone": "Asia/Tokyo", "phone": "+493012345678"}, ("Asia/Tokyo",)),
        # Then the phone number's: +49 30 is Berlin.
        ({"phone": "+493012345678"}, (BERLIN,)),
        # A US area that spans two zones gives both.
        ({"phone": "+16055551234"}, ("America/Denver", "America/North_Dakota/Center")),
        # A zone this machine does not know, or a path, is ignored like a missing one.
        ({"timezone": "Mars/Olympus_Mons", "phone": "+493012345678"}, (BERLIN,)),
        ({"timezone": "../../../etc/passwd"}, ("UTC",)),
        ({"timezone": ""}, ("UTC",)),
        # A toll-free number is tied to no place (its region has 42 zones): the fallback.
        ({"phone": "+18005551234"}, ("UTC",)),
        # A number with no region (555 numbers are fictional): the fallback.
        ({"phone": "+15557654321"}, ("UTC",)),
        ({}, ("UTC",)),
    ],
)
def test_contact_zones(contact: dict[str, str], expected: tuple[str, ...]) -> None:
    found = contact_zones(Contact(id="c", **contact), timezone="contact", fallback="UTC")
    assert found == expected


def test_one_zone_for_every_contact_and_a_bad_fallback() -> None:
    contact = Contact(id="c", timezone="Asia/Tokyo")
    assert contact_zones(contact, timezone=NY, fallback="UTC") == (NY,)
    with pytest.raises(NoOpeningError, match="fallbackTimezone 'Nowhere'"):
        contact_zones(Contact(id="c"), timezone="contact", fallback="Nowhere")


def _plan(schedule: dict[str, object] | None = None, **windows: object) -> dee.ExecutionPlan:
    return dee.execution_plan(
        id="p",
        name="p",
        created_by="tests",
        schedule=schedule,
        steps=[
            dee.steps.send_email(
                id="mail", template_id="t", subject="s", send_window=windows.get("send")
            ),
            dee.steps.send_voice(
                id="call", script_id="s", caller_id="+15550000000", call_window=windows.get("call")
            ),
            dee.steps.end(id="done", outcome="done"),
        ],
    )


def test_which_window_a_send_checks() -> None:
    plain = _plan()
    mail, call = plain.steps[0], plain.steps[1]
    assert isinstance(mail, dee.SendEmailStep) and isinstance(call, dee.SendVoiceStep)
    # Without a sendWindow emails go at once; calls always have one.
    assert window_check(plain, mail) is None
    check = window_check(plain, call)
    assert check is not None and check.window == DEFAULT_CALL_WINDOW
    assert check.kind == "callWindow" and check.step_id == "call"
    # The plan's windows, then the step's own.
    tuesday = {"days": ["tue"], "from": "10:00", "to": "12:00"}
    planned = _plan({"send_window": tuesday, "timezone": BERLIN, "holidays": "DE"})
    mail = planned.steps[0]
    assert isinstance(mail, dee.SendEmailStep)
    check = window_check(planned, mail)
    assert check == WindowCheck(
        kind="sendWindow",
        step_id="mail",
        window=Window(days=("tue",), from_="10:00", to="12:00"),
        timezone=BERLIN,
        holidays="DE",
    )
    own = _plan({"send_window": tuesday}, send={"days": ["wed"]})
    mail = own.steps[0]
    assert isinstance(mail, dee.SendEmailStep)
    assert window_check(own, mail).window.days == ("wed",)  # type: ignore[union-attr]


def test_closed_until_says_when_in_the_contacts_zone() -> None:
    check = WindowCheck(kind="sendWindow", step_id="intro-email", window=WEEKDAYS)
    contact = Contact(id="c", timezone=NY)
    closed = closed_until(check, contact, now=utc(2026, 12, 5, 12))
    assert closed is not None
    assert closed.until == utc(2026, 12, 7, 14)
    assert closed.reason == "send window of intro-email opens 2026-12-07 09:00 America/New_York"
    assert closed.zones == (NY,)
    assert closed_until(check, contact, now=utc(2026, 12, 7, 14)) is None


def test_a_phone_region_whose_windows_never_meet_uses_the_fallback_zone() -> None:
    # A Russian mobile number spans Kaliningrad to Kamchatka: no 09:00-17:00 is common.
    contact = Contact(id="c", phone="+79161234567")
    assert len(contact_zones(contact, timezone="contact", fallback="UTC")) > 10
    check = WindowCheck(
        kind="callWindow", step_id="call", window=WEEKDAYS, fallback_timezone="Europe/Moscow"
    )
    closed = closed_until(check, contact, now=utc(2026, 12, 5, 12))
    assert closed is not None and closed.zones == ("Europe/Moscow",)
    assert closed.until == utc(2026, 12, 7, 6)
    # An Australian mobile number's eight zones (Cocos Islands, UTC+6:30, to Lord Howe
    # Island, UTC+11 in December) do meet: from 09:00 on the Cocos Islands.
    australian = Contact(id="c", phone="+61412345678")
    closed = closed_until(check, australian, now=utc(2026, 12, 5, 12))
    assert closed is not None and len(closed.zones) == 8
    assert closed.until == utc(2026, 12, 7, 2, 30)
    # Said in the zone whose window opens last.
    assert (
        closed.reason
        == "call window of call opens 2026-12-07 09:00 Indian/Cocos (and 7 more zones)"
    )
