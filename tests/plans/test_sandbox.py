"""Templates are bounded: powers, repetitions, ranges, loops, output and time. Each case runs
in a thread with a generous liveness bound, so an unbounded template fails the test rather
than hanging it (the bound is not a benchmark: bounded renders finish in milliseconds)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dee.errors import ContentError
from dee.plans.content import EmailTemplate, PlanContent, render_email, render_script
from dee.plans.model import SendEmailStep
from dee.plans.sandbox import MAX_OUTPUT_CHARS
from dee.plans.validation import validate_plan
from tests.helpers.plans import email_plan

LIVENESS_SECONDS = 60


async def _render(source: str, **variables: Any) -> str:
    content = PlanContent(scripts={"s": source})
    call = asyncio.to_thread(render_script, "s", content, contact={}, variables=variables)
    async with asyncio.timeout(LIVENESS_SECONDS):
        return await call


@pytest.mark.parametrize(
    ("source", "variables", "reason"),
    [
        ("{{ 9 ** (9 ** 7) }}", {}, "a power of more than 1,000 digits"),
        ("{% set n = 9 %}{{ n ** (n ** 7) }}", {}, "a power of more than 1,000 digits"),
        ("{{ n ** 100000 }}", {"n": 7}, "a power of more than 1,000 digits"),
        ("{{ 'ab' * 5000000 }}", {}, "a repetition of more than"),
        ("{{ s * n }}", {"s": "ab", "n": 10**7}, "a repetition of more than"),
        ("{% for i in range(100000) %}{% endfor %}", {}, "range() of 100,000 items"),
        (
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            {},
            "loops over range() go past 100,000 items",
        ),
        (
            "{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}",
            {},
            "the output is longer than 1,048,576 characters",
        ),
        ("{{ total / count }}", {"total": 10, "count": 0}, "ZeroDivisionError"),
        ("{{ 10.0 ** 400 }}", {}, "OverflowError"),
        ("{{ lipsum(10000) }}", {}, "'lipsum' is undefined"),
    ],
)
async def test_unbounded_templates_are_refused(
    source: str, variables: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ContentError) as caught:
        await _render(source, **variables)
    assert reason in str(caught.value)
    assert caught.value.content_id == "scripts/s.txt"


async def test_bounded_arithmetic_and_loops_render() -> None:
    # Positive controls just inside the bounds.
    assert await _render("{{ 10 ** 999 }}") == "1" + "0" * 999
    assert await _render("{{ 'ab' * 3 }}-{{ 2 * 21 }}") == "ababab-42"
    assert len(await _render("{% for i in range(10000) %}x{% endfor %}")) == 10_000
    assert len(await _render("{{ 'x' * n }}", n=MAX_OUTPUT_CHARS)) == MAX_OUTPUT_CHARS


def test_a_subject_is_at_most_one_header_line() -> None:
    step = SendEmailStep(id="send", template_id="t", subject="{{ 'word ' * 300 }}")
    content = PlanContent(templates={"t": EmailTemplate(html="<p>hi</p>")})
    with pytest.raises(ContentError, match="the most is 998"):
        render_email(step, content, contact={}, variables={})


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("{{ 9 ** (9 ** 7) }}", "subject line 1 computes a power of more than 1,000 digits"),
        ("{{ 'ab' * 5000000 }}", "subject line 1 computes a repetition of more than"),
        ("{{ -(9 ** 9999) }}", "subject line 1 computes a power of more than 1,000 digits"),
    ],
)
def test_validation_refuses_constant_excesses_without_computing_them(
    subject: str, problem: str
) -> None:
    plan = email_plan("unbounded")
    step = plan.steps[0].model_copy(update={"subject": subject})
    plan = plan.model_copy(update={"steps": (step, *plan.steps[1:])})
    content = PlanContent(templates={"intro": EmailTemplate(html="<p>hi</p>")})
    problems = [p for p in validate_plan(plan, content) if p.code == "template-unbounded"]
    assert [(p.step_id, problem in p.message) for p in problems] == [("send", True)], problems


def test_validation_accepts_bounded_constants() -> None:
    plan = email_plan("bounded")
    step = plan.steps[0].model_copy(update={"subject": "{{ 2 ** 10 }} and {{ 'ab' * 3 }}"})
    plan = plan.model_copy(update={"steps": (step, *plan.steps[1:])})
    content = PlanContent(templates={"intro": EmailTemplate(html="<p>hi</p>")})
    assert validate_plan(plan, content) == []
