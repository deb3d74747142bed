"""Plans with send and call windows, and the dates window tests aim at (computed from the
current time, so the tests keep working in later years)."""

from __future__ import annotations

import datetime
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

import dee
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.schedule import DAYS, Schedule

__all__ = [
    "ANY_HOUR",
    "CONTENT",
    "at_any_hour",
    "activity_starts",
    "next_dst_change",
    "summaries",
    "window_plan",
]

CONTENT = PlanContent(
    templates={"tmpl": EmailTemplate(html="<p>Hello {{ contact.firstName }}</p>")},
    scripts={"script": "Hello {{ contact.firstName }}."},
)


#: The schedule of test plans that call but are not about calling hours: engine-3 calls
#: wait for 08:00-21:00 in the contact's zone by default, and tests run at any hour (the
#: time-skipping server's clock, moved on by earlier tests, at any hour too).
ANY_HOUR: dict[str, Any] = {
    "callWindow": {"from": "00:00", "to": "24:00"},
    "callingHoursOverride": True,
}


def at_any_hour(plan: dee.ExecutionPlan) -> dee.ExecutionPlan:
    """``plan`` calling at any hour (see :data:`ANY_HOUR`)."""
    return plan.model_copy(update={"schedule": Schedule.model_validate(ANY_HOUR)})


def next_dst_change(zone: str, after: datetime.datetime) -> datetime.datetime:
    """The first moment (UTC, to the minute) after ``after`` when ``zone``'s offset changes."""
    tz = ZoneInfo(zone)
    hour = datetime.timedelta(hours=1)
    at = after.astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)
    for _ in range(400 * 24):
        if (at + hour).astimezone(tz).utcoffset() != at.astimezone(tz).utcoffset():
            return at + hour
        at += hour
    raise AssertionError(f"{zone} changes no offset within 400 days")


def weekday(day: datetime.date) -> str:
    return DAYS[day.weekday()]


def window_plan(
    plan_id: str,
    *,
    send_window: dict[str, Any] | None = None,
    call_window: dict[str, Any] | None = None,
    wait: datetime.timedelta | None = None,
    schedule: dict[str, Any] | None = None,
    call: bool = False,
) -> dee.ExecutionPlan:
    """``[wait] -> email (or call) -> end``, with the windows given."""
    steps: list[dee.Step] = []
    if wait is not None:
        steps.append(dee.steps.wait(id="before", duration=wait))
    if call:
        steps.append(
            dee.steps.send_voice(
                id="the-call", script_id="script", caller_id="+15550000000", call_window=call_window
            )
        )
    else:
        steps.append(
            dee.steps.send_email(
                id="the-email", template_id="tmpl", subject="Hi", send_window=send_window
            )
        )
    steps.append(dee.steps.end(id="done", outcome="done"))
    return dee.execution_plan(
        id=plan_id, name=plan_id, steps=steps, created_by="tests", schedule=schedule
    )


async def summaries(handle: WorkflowHandle[Any, Any], converter: Any) -> list[str]:
    """The user-metadata summaries of the run's history events, in order."""
    history = await handle.fetch_history()
    return [
        converter.from_payload(event.user_metadata.summary, str)
        for event in history.events
        if event.HasField("user_metadata") and event.user_metadata.HasField("summary")
    ]


async def activity_starts(handle: WorkflowHandle[Any, Any]) -> list[datetime.datetime]:
    """When each activity attempt of the run started (the server's, possibly skipped, time)."""
    history = await handle.fetch_history()
    return [
        event.event_time.ToDatetime(tzinfo=datetime.UTC)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
