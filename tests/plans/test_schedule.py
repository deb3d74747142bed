"""Plan schedules: the document form, the builder's snake_case form, the validation problems
each naming its step, and stored versions (plans without a schedule keep their digests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dee
from dee.cli._format import plan_details
from dee.errors import PlanDataError, Problem
from dee.plans.model import AutoReplyPause
from dee.plans.registry import PlanRegistry
from dee.plans.schedule import Schedule, Window
from dee.plans.versions import canonical_meaning
from tests.helpers.plans import email_content, email_plan

YAML = """\
id: timed
name: Timed
metadata: {createdBy: tests}
schedule:
  timezone: contact
  fallbackTimezone: America/New_York
  sendWindow: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}
  callWindow: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "20:00"}
  holidays: US
steps:
  - {type: sendEmail, id: intro-email, templateId: tmpl_intro, subject: "Hi",
     sendWindow: {days: [tue, wed, thu], from: "10:00", to: "12:00"}}
  - {type: sendVoice, id: call, scriptId: s, callerId: "+15550000000",
     callWindow: {days: [sat], from: "10:00", to: "12:00"}}
  - {type: end, id: done, outcome: finished}
"""


def test_the_document_form_and_the_builder_agree() -> None:
    loaded = dee.parse_plan(YAML)
    built = dee.execution_plan(
        id="timed",
        name="Timed",
        created_by="tests",
        schedule={
            "timezone": "contact",
            "fallback_timezone": "America/New_York",
            "send_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00"},
            "call_window": Window(days=("mon", "tue", "wed", "thu", "fri"), to="20:00"),
            "holidays": "US",
        },
        steps=[
            dee.steps.send_email(
                id="intro-email",
                template_id="tmpl_intro",
                subject="Hi",
                send_window={"days": ["tue", "wed", "thu"], "from": "10:00", "to": "12:00"},
            ),
            dee.steps.send_voice(
                id="call",
                script_id="s",
                caller_id="+15550000000",
                call_window={"days": ["sat"], "from": "10:00", "to": "12:00"},
            ),
            dee.steps.end(id="done", outcome="finished"),
        ],
    )
    # The builder's windows left "to" (17:00) and "from" (09:00) out: fill them alike.
    schedule = built.schedule.model_copy(
        update={
            "send_window": built.schedule.send_window.model_copy(update={"to": "17:00"}),  # type: ignore[union-attr]
            "call_window": built.schedule.call_window.model_copy(update={"from_": "09:00"}),  # type: ignore[union-attr]
        }
    )
    assert loaded == built.model_copy(update={"schedule": schedule})
    assert dee.validate_plan(loaded) == []
    assert loaded.to_document()["schedule"]["sendWindow"]["from"] == "09:00"
    assert "window tue-thu 10:00-12:00" in loaded.steps[0].describe()


def test_a_plan_without_a_schedule_dumps_and_digests_as_before() -> None:
    plan = email_plan("p1")
    assert plan.schedule == Schedule()
    assert "schedule" not in plan.to_document()
    assert "schedule" not in json.loads(canonical_meaning(plan, email_content()))
    assert "sendWindow" not in plan.to_document()["steps"][0]


def test_unknown_schedule_fields_are_refused_by_the_loader() -> None:
    with pytest.raises(PlanDataError) as caught:
        dee.parse_plan(YAML.replace("holidays: US", "holidayz: US"))
    assert [(p.code, p.location) for p in caught.value.problems] == [
        ("unknown-field", "schedule.holidayz")
    ]


def _plan(schedule: dict[str, Any], **step_windows: dict[str, Any]) -> dee.ExecutionPlan:
    document = dee.parse_plan(YAML).to_document()
    document["schedule"] = schedule
    for step in document["steps"]:
        step.pop("sendWindow", None)
        step.pop("callWindow", None)
    if "email" in step_windows:
        document["steps"][0]["sendWindow"] = step_windows["email"]
    if "call" in step_windows:
        document["steps"][1]["callWindow"] = step_windows["call"]
    return dee.plan_from_document(document)


CASES: list[tuple[dee.ExecutionPlan, list[Problem]]] = [
    (
        # A zone that does not exist.
        _plan({"timezone": "America/Neww_York"}),
        [
            Problem(
                "schedule",
                "invalid-timezone",
                "timezone is 'America/Neww_York', which is not a time zone; expected 'contact' "
                "or an IANA name such as 'America/New_York' or 'Europe/Berlin'",
            )
        ],
    ),
    (
        # A path is not a zone either.
        _plan({"fallbackTimezone": "../../etc/passwd"}),
        [
            Problem(
                "schedule",
                "invalid-timezone",
                "fallbackTimezone is '../../etc/passwd', which is not a time zone; expected "
                "an IANA name such as 'America/New_York' or 'Europe/Berlin'",
            )
        ],
    ),
    (
        # A step's window whose from is not before to.
        _plan({}, email={"from": "17:00", "to": "09:00"}),
        [
            Problem(
                "intro-email",
                "invalid-window",
                "sendWindow runs from '17:00' to '09:00'; from must be before to (a window "
                "cannot span midnight: use two steps or widen it)",
            )
        ],
    ),
    (
        # Times that are not HH:MM.
        _plan({"sendWindow": {"from": "9am", "to": "24:30"}}),
        [
            Problem(
                "schedule",
                "invalid-window",
                "sendWindow.from is '9am'; expected a local time HH:MM such as '09:00' "
                "(00:00 to 24:00)",
            ),
            Problem(
                "schedule",
                "invalid-window",
                "sendWindow.to is '24:30'; expected a local time HH:MM such as '09:00' "
                "(00:00 to 24:00)",
            ),
        ],
    ),
    (
        # An unknown day, and a window with no days at all.
        _plan(
            {
                "sendWindow": {"days": ["mon", "Tuesday"]},
                "callWindow": {"days": [], "from": "09:00", "to": "17:00"},
            }
        ),
        [
            Problem(
                "schedule",
                "unknown-day",
                "sendWindow has day 'Tuesday'; expected mon, tue, wed, thu, fri, sat, sun "
                "(lowercase, three letters)",
            ),
            Problem(
                "schedule",
                "invalid-window",
                "callWindow has no days; list at least one, e.g. [mon]",
            ),
        ],
    ),
    (
        # A call window past calling hours, on the plan and on a step.
        _plan({"callWindow": {"from": "07:30", "to": "20:00"}}, call={"to": "21:30"}),
        [
            Problem(
                "schedule",
                "outside-calling-hours",
                "callWindow runs from '07:30' to '20:00', outside calling hours 08:00-21:00 "
                "local time; narrow it, or set schedule.callingHoursOverride: true if calls "
                "outside them are lawful for you",
            ),
            Problem(
                "call",
                "outside-calling-hours",
                "callWindow runs from '00:00' to '21:30', outside calling hours 08:00-21:00 "
                "local time; narrow it, or set schedule.callingHoursOverride: true if calls "
                "outside them are lawful for you",
            ),
        ],
    ),
    (
        # ... which the override allows; an email window may be any hours.
        _plan(
            {"callWindow": {"from": "07:30", "to": "20:00"}, "callingHoursOverride": True},
            call={"to": "21:30"},
            email={"from": "00:00", "to": "24:00"},
        ),
        [],
    ),
    (
        # Holiday calendars that do not exist.
        _plan({"holidays": "XX"}),
        [
            Problem(
                "schedule",
                "unknown-holidays",
                "holidays is 'XX': 'XX' is not a country code the holidays package knows; "
                "expected an ISO 3166 code such as 'US', 'DE' or 'GB'; write a country code, "
                "optionally with a subdivision ('US', 'US-CA', 'DE-BY')",
            )
        ],
    ),
    (
        _plan({"holidays": "US-ZZ"}),
        [
            Problem(
                "schedule",
                "unknown-holidays",
                "holidays is 'US-ZZ': 'ZZ' is not a subdivision of US; expected one of AK, "
                "AL, AR, AS, AZ, CA, CO, CT, DC, DE, FL, GA, GU, HI, IA, ID, IL, IN, KS, KY, ...; "
                "write a country code, optionally with a subdivision ('US', 'US-CA', 'DE-BY')",
            )
        ],
    ),
]


@pytest.mark.parametrize(("plan", "expected"), CASES)
def test_schedule_problems(plan: dee.ExecutionPlan, expected: list[Problem]) -> None:
    assert dee.validate_plan(plan) == expected


def test_schedule_problems_come_before_the_steps() -> None:
    plan = _plan({"timezone": "Nowhere"}, email={"days": ["funday"]})
    assert [(p.step_id, p.code) for p in dee.validate_plan(plan)] == [
        ("schedule", "invalid-timezone"),
        ("intro-email", "unknown-day"),
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", Schedule(holidays="US")),
        # The plan-level fields of issue 11's other parts go the same way.
        ("exit_on", ("reply",)),
        ("pause_on_auto_reply", AutoReplyPause(max_days=3)),
    ],
)
def test_plan_fields_are_part_of_what_a_version_means(
    registry: PlanRegistry, field: str, value: object
) -> None:
    plain = registry.create(email_plan("p1"), email_content())
    changed_plan = email_plan("p1").model_copy(update={field: value})
    changed = registry.create(changed_plan, email_content())
    assert (plain.version, changed.version) == (1, 2)
    assert changed.digest != plain.digest
    # Read back from the stored canonical text, the field and all.
    assert getattr(registry.get("p1", version=2).plan, field) == value
    assert getattr(registry.get("p1", version=1).plan, field) == getattr(plain.plan, field)
    assert registry.create(changed_plan, email_content()).created is False
    assert registry.create(email_plan("p1"), email_content()).version == 3


DOC = Path(__file__).resolve().parents[2] / "docs" / "windows.md"


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_docs_examples_are_valid(tmp_path: Path) -> None:
    (document,) = _doc_blocks("yaml")
    plan = dee.parse_plan(document)
    assert dee.validate_plan(plan) == []
    assert plan.schedule.holidays == "US"
    (script,) = _doc_blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_the_docs_validation_output(tmp_path: Path) -> None:
    (document,) = _doc_blocks("yaml")
    broken = document.replace("timezone: contact  ", "timezone: America/Neww_York").replace(
        'from: "10:00", to: "12:00"', 'from: "17:00", to: "09:00"'
    )
    (tmp_path / "timed.yaml").write_text(broken)
    for name in ("templates/tmpl_intro.html", "scripts/call_script.txt"):
        (tmp_path / "content" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "content" / name).write_text("Hi")
    result = subprocess.run(
        [sys.executable, "-m", "dee.cli.main", "plans", "validate", "timed.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shown = next(block for block in _doc_blocks("text") if "invalid-timezone" in block)
    assert result.stdout.splitlines() == shown.splitlines(), result


def test_plans_show_says_the_schedule(registry: PlanRegistry) -> None:
    timed = dee.parse_plan(YAML)
    content = dee.PlanContent(
        templates={"tmpl_intro": dee.EmailTemplate(html="<p>Hi</p>")}, scripts={"s": "Hi"}
    )
    stored = registry.create(timed, content)
    lines = plan_details(stored)
    assert (
        "schedule:    zone contact (else America/New_York), emails mon-fri 09:00-17:00, "
        "calls mon-fri 09:00-20:00, holidays US"
    ) in lines
    assert any("window tue-thu 10:00-12:00" in line for line in lines)
    plain = registry.create(email_plan("p1"), email_content())
    assert not any(line.startswith("schedule:") for line in plan_details(plain))
