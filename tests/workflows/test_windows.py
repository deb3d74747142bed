"""Send and call windows on the time-skipping test server, with the real activities, SMTP
server and loopback Twilio API.

The server's clock starts at the real now and cannot go back, so these tests aim at the
*next* DST change and holiday after it (computed, not written down); the 2026 changes are
unit-tested in tests/runs/test_windows.py with a fixed ``now``.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import holidays
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment

from dee.runs.client import run_state, send_event
from dee.runs.model import Contact, RunInput, RunState
from tests.helpers.engine import engine
from tests.helpers.smtp import SmtpServer
from tests.helpers.temporal import start_time_skipping_env
from tests.helpers.twilio_api import TwilioApi, twilio_api
from tests.helpers.windows import (
    CONTENT,
    activity_starts,
    next_dst_change,
    summaries,
    weekday,
    window_plan,
)
from workflows._sends import _closed
from workflows.execution_plan import ExecutionPlanWorkflow

UTC = datetime.UTC
NINE = datetime.time(9)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own, whose clock starts at the real now: the
    session's may have been moved on by earlier tests by decades (loops of year-long
    waits), past 2100, where the holidays package has no calendars."""
    env = await start_time_skipping_env()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with twilio_api() as api:
        yield api


async def _holding(client: Client, run_id: str) -> RunState:
    """The run's state once it holds a send (bounded poll; time is not skipped)."""
    state = await run_state(client, run_id)
    for _ in range(300):
        if state.holding is not None:
            return state
        await asyncio.sleep(0.1)
        state = await run_state(client, run_id)
    raise AssertionError(f"the run never held its send: {state}")


def _near(actual: datetime.datetime, expected: datetime.datetime) -> bool:
    return abs(actual - expected) < datetime.timedelta(seconds=30)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin"])
async def test_a_hold_across_the_next_dst_change_opens_at_local_nine(
    zone: str,
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    tz = ZoneInfo(zone)
    now = await time_skipping_env.get_current_time()
    change = next_dst_change(zone, now + datetime.timedelta(days=3))
    # The send is tried a day and a half before the change; its window opens on the
    # weekday two local days after it, so the hold crosses the change.
    tried = change - datetime.timedelta(hours=36)
    target = (change + datetime.timedelta(days=2)).astimezone(tz).date()
    wait = datetime.timedelta(seconds=int((tried - now).total_seconds()))
    plan = window_plan(
        f"dst-{uuid.uuid4().hex[:8]}",
        send_window={"days": [weekday(target)], "from": "09:00", "to": "10:00"},
        wait=wait,
    )
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(plan, CONTENT), contact={"timezone": zone})
        result = await handle.result()
        starts = await activity_starts(handle)
        shown = await summaries(handle, time_skipping_env.client.data_converter.payload_converter)
    opens = datetime.datetime.combine(target, NINE, tzinfo=tz)
    assert opens.utcoffset() != tried.astimezone(tz).utcoffset(), "the hold crosses the change"
    assert result.outcome == "done" and result.failure is None
    # One attempt refused outside the window, at the try; one that sent, at 09:00 local.
    assert len(starts) == 2
    assert _near(starts[0], tried) and _near(starts[1], opens.astimezone(UTC)), starts
    assert f"send window of the-email opens {target:%Y-%m-%d} 09:00 {zone}" in shown
    assert e.subjects == ["Hi"]


async def test_three_zones_hold_until_their_own_nine_and_an_unsubscribe_ends_a_hold(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    now = await time_skipping_env.get_current_time()
    # A weekday three UTC days ahead: closed today in every zone, whatever its date.
    target = (now + datetime.timedelta(days=3)).date()
    plan = window_plan(
        f"zones-{uuid.uuid4().hex[:8]}",
        schedule={"send_window": {"days": [weekday(target)], "from": "09:00", "to": "17:00"}},
    )
    contacts: dict[str, dict[str, Any]] = {
        # The contact's own zone wins over its phone number's.
        "Asia/Tokyo": {"timezone": "Asia/Tokyo"},
        # From the phone number alone: +49 30 is Berlin.
        "Europe/Berlin": {"phone": "+493012345678", "timezone": None},
        # A US number whose area spans Mountain and Central time: 09:00 Mountain is the
        # first moment both allow.
        "America/Denver": {"phone": "+16055551234", "timezone": None},
    }
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        version = e.version(plan, CONTENT)
        handles = {zone: await e.start(version, contact=c) for zone, c in contacts.items()}
        held = {zone: await _holding(e.client, h.id) for zone, h in handles.items()}
        for handle in handles.values():
            await send_event(e.client, handle.id, type="unsubscribe")
        results = [await handle.result() for handle in handles.values()]
    for zone, state in held.items():
        assert state.holding is not None
        opens = datetime.datetime.combine(target, NINE, tzinfo=ZoneInfo(zone))
        assert state.holding.until == opens.astimezone(UTC), (zone, state.holding)
        assert state.holding.step_id == "the-email"
        assert state.holding.reason.startswith(
            f"send window of the-email opens {target:%Y-%m-%d} 09:00 {zone}"
        )
        assert state.current_step == "the-email"
    assert "(and 1 more zone)" in held["America/Denver"].holding.reason  # type: ignore[union-attr]
    # The unsubscribe ended every hold at once; nothing was sent.
    assert [r.outcome for r in results] == ["unsubscribed"] * 3
    assert [r.step_id for r in results] == ["the-email"] * 3
    assert e.subjects == []


def _next_lone_holiday(today: datetime.date) -> datetime.date:
    """The next US public holiday at least two days away with working days around it."""
    calendar = holidays.country_holidays("US")
    for offset in range(2, 400):
        day = today + datetime.timedelta(days=offset)
        one = datetime.timedelta(days=1)
        if day in calendar and day - one not in calendar and day + one not in calendar:
            return day
    raise AssertionError("no US holiday within 400 days")


async def test_a_holiday_is_skipped(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    zone = "America/New_York"
    tz = ZoneInfo(zone)
    now = await time_skipping_env.get_current_time()
    holiday = _next_lone_holiday(now.astimezone(tz).date())
    one = datetime.timedelta(days=1)
    # Tried the evening before the holiday, after the window closed: the next opening is
    # the day after the holiday, not the holiday.
    tried = datetime.datetime.combine(holiday - one, datetime.time(18), tzinfo=tz)
    plan = window_plan(
        f"holiday-{uuid.uuid4().hex[:8]}",
        wait=datetime.timedelta(seconds=int((tried - now).total_seconds())),
        schedule={
            # One zone for every contact, whatever its own says.
            "timezone": zone,
            "holidays": "US",
            "send_window": {"from": "09:00", "to": "17:00"},
        },
    )
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(plan, CONTENT), contact={"timezone": "Asia/Tokyo"})
        result = await handle.result()
        starts = await activity_starts(handle)
    assert result.outcome == "done"
    opens = datetime.datetime.combine(holiday + one, NINE, tzinfo=tz)
    assert len(starts) == 2 and _near(starts[1], opens.astimezone(UTC)), (holiday, starts)


def _zone_at_night(now: datetime.datetime) -> str:
    """A zone where it is now between 22:00 and 06:00, outside calling hours."""
    for zone in sorted(available_timezones()):
        if zone.startswith(("Etc/", "SystemV/")) or "/" not in zone:
            continue
        if now.astimezone(ZoneInfo(zone)).hour in (22, 23, 0, 1, 2, 3, 4, 5):
            return zone
    raise AssertionError("no zone is at night")


async def test_calls_wait_for_calling_hours_by_default(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    now = await time_skipping_env.get_current_time()
    zone = _zone_at_night(now)
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    day = local.date() if local.hour < 8 else local.date() + datetime.timedelta(days=1)
    opens = datetime.datetime.combine(day, datetime.time(8), tzinfo=tz)
    plan = window_plan(f"call-{uuid.uuid4().hex[:8]}", call=True)
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(plan, CONTENT), contact={"timezone": zone})
        state = await _holding(e.client, handle.id)
        assert twilio.creates == []
        result = await handle.result()
        starts = await activity_starts(handle)
    assert state.holding is not None and state.holding.until == opens.astimezone(UTC)
    assert state.holding.reason.startswith(f"call window of the-call opens {day:%Y-%m-%d} 08:00")
    assert result.outcome == "done"
    assert len(twilio.creates) == 1
    # The refused attempt, the call at 08:00, then (no callback comes in this test) the
    # fetch of the call's outcome once its bound has passed.
    assert len(starts) == 3
    assert _near(starts[1], opens.astimezone(UTC)), (zone, starts)


def _zone_at_midday(now: datetime.datetime) -> str:
    """A zone where it is now between 10:00 and 16:00."""
    for zone in sorted(available_timezones()):
        if zone.startswith(("Etc/", "SystemV/")) or "/" not in zone:
            continue
        if 10 <= now.astimezone(ZoneInfo(zone)).hour < 16:
            return zone
    raise AssertionError("no zone is at midday")


async def test_a_retry_that_lands_in_the_closed_window_waits_again(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    zone = _zone_at_midday(now)
    local = now.astimezone(ZoneInfo(zone))
    # Open from this minute for three minutes; the SMTP server answers 451 until then, so
    # the retries (1 s, 2 s, 4 s, ... apart) outlast the window.
    start = local.replace(second=0, microsecond=0)
    end = start + datetime.timedelta(minutes=3)
    window = {"from": f"{start:%H:%M}", "to": f"{end:%H:%M}"}
    plan = window_plan(f"retry-{uuid.uuid4().hex[:8]}", send_window=window)
    smtp.handler.fail_next("451 4.3.0 try later", count=1000)
    async with engine(env, task_queue, tmp_path, smtp, twilio) as e:
        handle = await e.start(e.version(plan, CONTENT), contact={"timezone": zone})
        await env.sleep(datetime.timedelta(minutes=5))
        state = await _holding(e.client, handle.id)
        # The channel works again; the send waits for tomorrow's window all the same.
        smtp.handler.data_replies.clear()
        result = await handle.result()
        history = await handle.fetch_history()
    opens = start + datetime.timedelta(days=1)
    assert state.holding is not None
    assert state.holding.until == opens.astimezone(UTC), (zone, state.holding)
    assert result.outcome == "done"
    attempts = [
        (
            event.event_time.ToDatetime(tzinfo=UTC),
            event.activity_task_started_event_attributes.attempt,
        )
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    # The first activity retried inside the window, its last attempt fell outside it; the
    # second ran when the window opened again and sent.
    assert len(attempts) == 2 and attempts[0][1] > 3, attempts
    assert attempts[0][0] >= end.astimezone(UTC) and _near(attempts[1][0], opens), attempts
    assert e.subjects == ["Hi"]


async def test_runs_of_older_engines_send_at_once(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioApi,
) -> None:
    now = await time_skipping_env.get_current_time()
    closed = weekday((now + datetime.timedelta(days=3)).date())
    plan = window_plan(
        f"engine2-{uuid.uuid4().hex[:8]}", send_window={"days": [closed], "from": "09:00"}
    )
    async with engine(time_skipping_env, task_queue, tmp_path, smtp, twilio) as e:
        version = e.version(plan, CONTENT)
        handle = await e.client.start_workflow(
            ExecutionPlanWorkflow.run,
            RunInput(
                plan=version.plan,
                content=version.content,
                digest=version.digest,
                contact=Contact(id="old", email="old@example.com", timezone="UTC", firstName="Old"),
                engine=2,
            ),
            id=f"{task_queue}:old",
            task_queue=task_queue,
        )
        result = await handle.result()
        starts = await activity_starts(handle)
    assert result.outcome == "done" and e.subjects == ["Hi"]
    assert len(starts) == 1 and starts[0] - now < datetime.timedelta(minutes=1)


def _activity_error(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "activity failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="send_email",
        activity_id="1",
        retry_state=None,
    )
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("details", "held"),
    [
        # What the activity writes, with a field a later release might add.
        (
            {
                "until": "2026-12-07T14:00:00Z",
                "kind": "sendWindow",
                "step_id": "s",
                "zones": ["America/New_York"],
                "reason": "send window of s opens 2026-12-07 09:00 America/New_York",
                "added_later": 1,
            },
            True,
        ),
        # Details no release writes: the send fails rather than the workflow task for ever.
        ({"until": "soon"}, False),
        ("not even a mapping", False),
    ],
)
def test_outside_window_details_are_read_with_care(details: object, held: bool) -> None:
    cause = ApplicationError("closed", details, type="OutsideWindow", non_retryable=True)
    closed = _closed(_activity_error(cause))
    assert (closed is not None) is held
    if closed is not None:
        assert closed.until == datetime.datetime(2026, 12, 7, 14, tzinfo=UTC)
    other = ApplicationError("refused", type="InvalidRecipient", non_retryable=True)
    assert _closed(_activity_error(other)) is None
