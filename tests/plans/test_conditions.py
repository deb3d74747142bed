"""The condition language: what it accepts, what it refuses, and what it evaluates to."""

from __future__ import annotations

from typing import Any

import pytest

from dee.errors import ConditionError
from dee.plans.conditions import (
    ConditionContext,
    EventTally,
    ExpressionProblem,
    check_condition,
    evaluate_condition,
    referenced_steps,
)

STEPS = ["intro", "call", "check"]


def context(
    events: list[tuple[str, str | None]] = (),  # type: ignore[assignment]
    *,
    visits: dict[str, int] | None = None,
    contact: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
    calls: dict[str, str] | None = None,
) -> ConditionContext:
    return ConditionContext(
        events=EventTally(events),
        visits=visits or {},
        contact=contact or {},
        variables=variables or {},
        call_outcomes=calls or {},
    )


@pytest.mark.parametrize(
    ("source", "ctx", "expected"),
    [
        # The spec's conditions.
        ('events.hasReply("intro")', context([("reply", "intro")]), True),
        ('events.hasReply("intro")', context([("open", "intro")]), False),
        ('events.hasOpen("intro")', context([("open", "intro")]), True),
        ("default", context(), True),
        # Any step when no step is named; another step's event does not count.
        ("events.hasClick()", context([("click", "call")]), True),
        ('events.hasBounce("intro")', context([("bounce", "call")]), False),
        # Counting and the general form.
        ('events.count("open", "intro") >= 2', context([("open", "intro")] * 2), True),
        ('events.count("open") == 3', context([("open", "intro"), ("open", None)] * 1), False),
        ('events.has("voicemail", "call")', context([("voicemail", "call")]), True),
        ('not events.has("no-answer")', context([("busy", "call")]), True),
        # Visits.
        ('steps.visits("check") < 3', context(visits={"check": 2}), True),
        ('steps.visits("check") < 3', context(visits={"check": 3}), False),
        ('steps.visits("intro") == 0', context(), True),
        # Contact fields and run variables, including missing ones.
        ('contact.company == "Acme"', context(contact={"company": "Acme"}), True),
        ('contact["first-name"] == "Ana"', context(contact={"first-name": "Ana"}), True),
        ("contact.address.city == 'Lyon'", context(contact={"address": {"city": "Lyon"}}), True),
        ("contact.missing == none", context(), True),
        ("contact.score > 50", context(), False),
        ("contact.score > 50", context(contact={"score": 70}), True),
        ('tier in ["pro", "enterprise"]', context(variables={"tier": "pro"}), True),
        ('tier not in ["pro"]', context(), True),
        ("contact.score > 'x'", context(contact={"score": 1}), False),
        # Chained comparisons and boolean logic with parentheses.
        ("1 < contact.score <= 10", context(contact={"score": 10}), True),
        (
            '(events.hasOpen("intro") or events.hasClick("intro")) and not events.hasReply()',
            context([("click", "intro")]),
            True,
        ),
        ("true and false", context(), False),
        # Call outcomes: the latest outcome of the step's call, none before it has one.
        ('events.callOutcome("call") == "voicemail"', context(calls={"call": "voicemail"}), True),
        ('events.callOutcome("call") == "voicemail"', context(calls={"call": "answered"}), False),
        ('events.callOutcome("call") == none', context(), True),
        (
            'events.callOutcome("call") in ["busy", "no-answer"]',
            context(calls={"call": "busy"}),
            True,
        ),
        ('events.hasCallOutcome("call", "no-answer")', context(calls={"call": "no-answer"}), True),
        ('events.hasCallOutcome("call", "answered")', context(calls={"call": "voicemail"}), False),
        ('events.hasCallOutcome("call", "failed")', context(calls={"intro": "failed"}), False),
        # The outcome event is an event type like any other.
        ('events.has("call-outcome", "call")', context([("call-outcome", "call")]), True),
    ],
)
def test_evaluation(source: str, ctx: ConditionContext, expected: bool) -> None:
    assert check_condition(source, step_ids=STEPS) == []
    assert evaluate_condition(source, ctx) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Python's escape hatches are not names, functions or fields here.
        (
            '__import__("os")',
            ExpressionProblem(
                "expression-unknown-function",
                "unknown function '__import__'; expected one of events.hasReply, "
                "events.hasOpen, events.hasClick, events.hasBounce, events.has, "
                "events.count, events.callOutcome, events.hasCallOutcome, steps.visits",
            ),
        ),
        (
            "contact.__class__.__mro__",
            ExpressionProblem(
                "expression-forbidden",
                "field '__mro__' is not allowed: fields may not start with _",
            ),
        ),
        (
            "_secret",
            ExpressionProblem(
                "expression-forbidden",
                "name '_secret' is not allowed: names may not start with _",
            ),
        ),
        (
            'contact["__class__"]',
            ExpressionProblem(
                "expression-forbidden",
                "field '__class__' is not allowed: fields may not start with _",
            ),
        ),
        (
            "lipsum.__globals__",
            ExpressionProblem(
                "expression-forbidden",
                "field '__globals__' is not allowed: fields may not start with _",
            ),
        ),
        (
            '"".__class__',
            ExpressionProblem(
                "expression-forbidden",
                "field '__class__' is not allowed: fields may not start with _",
            ),
        ),
        # Methods of values are not functions of the language.
        (
            'contact.name.upper() == "X"',
            ExpressionProblem(
                "expression-unknown-function",
                "unknown function 'contact.name.upper'; expected one of events.hasReply, "
                "events.hasOpen, events.hasClick, events.hasBounce, events.has, "
                "events.count, events.callOutcome, events.hasCallOutcome, steps.visits",
            ),
        ),
        # Jinja2 filters, tests and arithmetic are outside the language.
        (
            'contact|attr("x")',
            ExpressionProblem(
                "expression-forbidden",
                "filter 'attr' is not allowed; use comparisons, and/or/not, events.*, "
                "steps.visits, contact fields and run variables",
            ),
        ),
        (
            "contact.x is defined",
            ExpressionProblem(
                "expression-forbidden",
                "test 'is defined' is not allowed; use comparisons, and/or/not, events.*, "
                "steps.visits, contact fields and run variables",
            ),
        ),
        (
            "contact.x * 1000000000",
            ExpressionProblem(
                "expression-forbidden",
                "a mul expression is not allowed; use comparisons, and/or/not, events.*, "
                "steps.visits, contact fields and run variables",
            ),
        ),
        # Huge expressions are refused before they are parsed or walked.
        (
            " or ".join(["events.hasReply()"] * 100),
            ExpressionProblem(
                "expression-too-large",
                "expression has 2,096 characters; the most is 1,000",
            ),
        ),
        (
            "(" * 300 + "true" + ")" * 300,
            ExpressionProblem("expression-too-large", "expression nests deeper than 32 levels"),
        ),
        (
            " or ".join(["a"] * 150),
            ExpressionProblem(
                "expression-too-large",
                "expression is too complex: at most 200 terms nested at most 32 deep",
            ),
        ),
        # Arguments: count, kind, steps and event types.
        (
            "steps.visits()",
            ExpressionProblem(
                "expression-bad-arguments", "steps.visits takes 1 argument(s), got 0"
            ),
        ),
        (
            "events.hasReply(contact.step)",
            ExpressionProblem(
                "expression-bad-arguments",
                "argument 1 of events.hasReply must be a quoted string",
            ),
        ),
        (
            'events.hasReply(step="intro")',
            ExpressionProblem(
                "expression-bad-arguments",
                "events.hasReply takes plain literal arguments only",
            ),
        ),
        (
            'events.hasReply("outro")',
            ExpressionProblem(
                "expression-unknown-step",
                "events.hasReply names step 'outro', which is not in this plan",
            ),
        ),
        (
            "events",
            ExpressionProblem(
                "expression-forbidden",
                "'events' is not a value: call one of its functions, such as "
                'events.hasReply("step-id")',
            ),
        ),
        (
            "steps.visits",
            ExpressionProblem(
                "expression-unknown-function",
                "'steps.visits' is not a function call; use steps.visits(\"step-id\")",
            ),
        ),
        # Syntax.
        (
            "contact.score >",
            ExpressionProblem(
                "expression-syntax",
                "unexpected 'end of template'; check quotes and parentheses",
            ),
        ),
        (
            "events.hasReply() events.hasOpen()",
            ExpressionProblem(
                "expression-syntax",
                "unexpected 'events' after a complete expression; join conditions with "
                "'and' or 'or'",
            ),
        ),
        # Call outcomes: the arguments they need, an outcome that does not exist.
        (
            'events.hasCallOutcome("call")',
            ExpressionProblem(
                "expression-bad-arguments", "events.hasCallOutcome takes 2 argument(s), got 1"
            ),
        ),
        (
            "events.callOutcome()",
            ExpressionProblem(
                "expression-bad-arguments", "events.callOutcome takes 1 argument(s), got 0"
            ),
        ),
        (
            'events.hasCallOutcome("call", "Voicemail")',
            ExpressionProblem(
                "expression-unknown-call-outcome",
                "events.hasCallOutcome names call outcome 'Voicemail'; expected one of "
                "answered, voicemail, no-answer, busy, failed, canceled",
            ),
        ),
    ],
)
def test_refused(source: str, expected: ExpressionProblem) -> None:
    assert check_condition(source, step_ids=STEPS) == [expected]
    if expected.code == "expression-unknown-step":
        # Which steps exist is the plan's business; evaluation alone cannot know.
        return
    with pytest.raises(ConditionError) as caught:
        evaluate_condition(source, context(), step_id="check")
    assert caught.value.code == expected.code
    assert caught.value.step_id == "check"


def test_call_outcomes_only_of_call_steps() -> None:
    # Given the plan's sendVoice steps, the check refuses any other step, naming it.
    source = 'events.callOutcome("intro") == "busy" or events.hasCallOutcome("call", "busy")'
    assert check_condition(source, step_ids=STEPS, call_steps=["call"]) == [
        ExpressionProblem(
            "expression-not-a-call-step",
            "events.callOutcome names step 'intro', which is not a sendVoice step: only a call "
            "has an outcome; name one of the plan's sendVoice steps",
        )
    ]
    assert check_condition(source, step_ids=STEPS, call_steps=["call", "intro"]) == []
    assert referenced_steps(source) == ["intro", "call"]


def test_referenced_steps() -> None:
    source = 'events.hasReply("intro") or steps.visits("check") > 1 or events.count("open")'
    assert referenced_steps(source) == ["intro", "check"]
    assert referenced_steps("default") == []
    assert referenced_steps("((") == []


def test_event_tally_counts_by_type_and_step() -> None:
    tally = EventTally([("open", "intro"), ("open", "intro"), ("open", "call"), ("reply", None)])
    assert tally.count("open") == 3
    assert tally.count("open", "intro") == 2
    assert tally.count("reply") == 1
    assert tally.count("reply", "intro") == 0
