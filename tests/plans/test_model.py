"""The plan model, the builder and the document form agree with each other and the spec."""

from __future__ import annotations

import datetime
import json
import typing

import pytest

import dee
from dee import steps, transitions
from dee.errors import PlanDataError, Problem
from dee.plans.model import STEP_MODELS, STEP_TYPES
from tests.helpers.spec import SPEC_CONTENT, SPEC_JSON, SPEC_YAML, spec_plan


def test_spec_example_loads_equally_from_python_json_and_yaml() -> None:
    built = spec_plan()
    from_yaml = dee.load_plan(SPEC_YAML)
    from_json = dee.load_plan(SPEC_JSON)
    assert built == from_yaml == from_json
    assert built.version is None and built.metadata.created_at is None


@pytest.mark.parametrize("source", ["python", "json", "yaml"])
def test_spec_example_is_valid_with_its_content(source: str) -> None:
    if source == "python":
        plan = spec_plan()
    else:
        plan = dee.load_plan(SPEC_JSON if source == "json" else SPEC_YAML)
    content = dee.load_content(SPEC_CONTENT, plan)
    assert dee.validate_plan(plan, content) == []
    assert sorted(content.templates) == ["tmpl_cold_follow_up", "tmpl_intro", "tmpl_warm_follow_up"]
    assert sorted(content.scripts) == ["script_follow_up", "vm_follow_up"]


def test_spec_example_fields() -> None:
    plan = spec_plan()
    email = plan.step("intro-email")
    assert isinstance(email, dee.SendEmailStep)
    assert email.tracking == dee.Tracking(opens=True, clicks=True)
    assert email.reply_to == "sales@example.com"
    call = plan.step("follow-up-call")
    assert isinstance(call, dee.SendVoiceStep)
    assert call.max_duration == dee.Duration(minutes=5)
    assert call.voicemail == dee.Voicemail(detect=True, message_id="vm_follow_up")
    wait = plan.step("wait-for-reply")
    assert isinstance(wait, dee.WaitStep)
    assert wait.duration.to_timedelta() == datetime.timedelta(days=3, hours=12)
    assert str(wait.duration) == "3d 12h"
    assert plan.first_step == email


def test_document_round_trip_uses_camel_case() -> None:
    plan = spec_plan()
    document = plan.to_document()
    assert document["steps"][0] == {
        "type": "sendEmail",
        "id": "intro-email",
        "templateId": "tmpl_intro",
        "subject": "Introducing {{product}}",
        "replyTo": "sales@example.com",
        "tracking": {"opens": True, "clicks": True},
    }
    assert document["transitions"][2] == {
        "from": "check-response",
        "to": "warm-follow-up",
        "condition": "opened",
    }
    assert dee.plan_from_document(json.loads(json.dumps(document))) == plan


def test_models_are_immutable() -> None:
    plan = spec_plan()
    with pytest.raises(Exception, match="frozen"):
        plan.name = "changed"  # type: ignore[misc]
    assert isinstance(plan.steps, tuple)


def test_duration_accepts_timedelta_and_mapping() -> None:
    by_delta = steps.wait(id="w", duration=datetime.timedelta(days=1, minutes=90))
    by_mapping = steps.wait(id="w", duration={"days": 1, "hours": 1, "minutes": 30})
    assert by_delta == by_mapping
    assert isinstance(by_delta, dee.WaitStep)
    assert by_delta.duration.total_seconds == 86_400 + 5_400


def test_builder_has_a_function_per_step_type() -> None:
    names = ["send_email", "send_voice", "wait", "branch", "end"]
    assert set(names) <= set(dir(steps))
    assert [getattr(steps, name).__name__ for name in names] == names
    # StepType is written out for type checkers; it must list the Step union's tags.
    assert typing.get_args(dee.StepType) == STEP_TYPES
    assert tuple(m.model_fields["type"].default for m in STEP_MODELS) == STEP_TYPES
    assert isinstance(steps.send_email(id="m", template_id="t", subject="s"), dee.SendEmailStep)
    with pytest.raises(AttributeError, match="'send_fax'; the step types are send_email, "):
        steps.send_fax  # noqa: B018


def test_builder_drops_none_and_accepts_condition_pairs() -> None:
    assert steps.send_email(
        id="m", template_id="t", subject="s", reply_to=None, tracking=None
    ) == dee.SendEmailStep(id="m", template_id="t", subject="s")
    by_pair = steps.branch(id="b", conditions=[("events.hasReply()", "x"), ("default", "y")])
    by_mapping = steps.branch(
        id="b",
        conditions=[
            dee.Condition(when="events.hasReply()", goto="x"),
            {"when": "default", "goto": "y"},
        ],
    )
    assert by_pair == by_mapping
    # Documents have mappings only: a list is not a pair.
    with pytest.raises(PlanDataError):
        dee.plan_from_document(
            {
                "id": "p",
                "name": "P",
                "metadata": {"createdBy": "me"},
                "steps": [{"type": "branch", "id": "b", "conditions": [["default", "b"]]}],
            }
        )


def test_builder_reports_a_missing_field_with_the_step() -> None:
    with pytest.raises(PlanDataError) as caught:
        steps.wait(id="w")
    assert caught.value.problems == (
        Problem("w", "missing-field", "duration is required", "duration"),
    )


def test_linear_is_the_default_transition() -> None:
    plan = dee.execution_plan(
        id="p", name="P", created_by="me", steps=[steps.end(id="done", outcome="finished")]
    )
    assert plan.transitions == "linear" == transitions.linear()


def test_explicit_transitions_accept_tuples() -> None:
    assert transitions.explicit([("a", "b"), ("b", "c", "default")]) == transitions.explicit(
        [{"from": "a", "to": "b"}, {"from": "b", "to": "c", "condition": "default"}]
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # A phone number without the leading + and country code.
        (
            lambda: steps.send_voice(id="call", script_id="s", caller_id="5551234567"),
            Problem(
                "call",
                "invalid-value",
                "callerId is '5551234567'; expected an E.164 phone number such as '+15551234567'",
                "callerId",
            ),
        ),
        # A reply-to address with a second header smuggled in.
        (
            lambda: steps.send_email(
                id="mail", template_id="t", subject="s", reply_to="a@b.c\r\nBcc: x@y.z"
            ),
            Problem(
                "mail",
                "invalid-value",
                "replyTo is 'a@b.c\\r\\nBcc: x@y.z'; expected one plain email address "
                "such as 'sales@example.com'",
                "replyTo",
            ),
        ),
        # A template id that walks out of the content folder.
        (
            lambda: steps.send_email(id="mail", template_id="../secrets", subject="s"),
            Problem(
                "mail",
                "invalid-value",
                "templateId is '../secrets'; expected letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, at most 100",
                "templateId",
            ),
        ),
        # An outcome that is not a slug.
        (
            lambda: steps.end(id="done", outcome="Replied!"),
            Problem(
                "done",
                "invalid-value",
                "outcome is 'Replied!'; expected a lowercase slug such as 'replied' "
                "(a-z, 0-9, '_', '-')",
                "outcome",
            ),
        ),
    ],
)
def test_builder_reports_bad_values_with_the_step(make: object, expected: Problem) -> None:
    with pytest.raises(PlanDataError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.problems == (expected,)
