"""Templates and scripts: loading, rendering in the sandbox, and the variables a plan needs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import dee
from dee import steps
from dee.errors import ContentError, MissingVariablesError
from dee.plans.content import (
    EmailTemplate,
    PlanContent,
    check_variables,
    missing_variables,
    render_email,
    render_script,
    required_variables,
)
from tests.helpers.spec import SPEC_CONTENT, spec_plan

CONTACT = {"id": "ana@example.com", "email": "ana@example.com", "firstName": "Ana"}


def one_email(subject: str = "Hello {{ contact.firstName }}") -> dee.ExecutionPlan:
    return dee.execution_plan(
        id="p",
        name="P",
        created_by="tests",
        steps=[
            steps.send_email(id="mail", template_id="t", subject=subject),
            steps.end(id="done", outcome="sent"),
        ],
    )


def test_spec_content_loads_html_and_text_parts() -> None:
    content = dee.load_content(SPEC_CONTENT, spec_plan())
    intro = content.templates["tmpl_intro"]
    assert intro.text is not None and intro.text.startswith("Hi {{ contact.firstName }},")
    assert content.templates["tmpl_warm_follow_up"].text is None
    body = (SPEC_CONTENT / "scripts" / "vm_follow_up.txt").read_text()
    assert content.scripts["vm_follow_up"] == body
    assert (
        content.digests()["scripts/vm_follow_up.txt"] == hashlib.sha256(body.encode()).hexdigest()
    )


def test_only_referenced_content_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.html").write_text("<p>hi</p>")
    (tmp_path / "templates" / "unused.html").write_text("<p>other</p>")
    assert dee.load_content(tmp_path, one_email()) == PlanContent(
        templates={"t": EmailTemplate(html="<p>hi</p>")}
    )


def test_spec_plan_requires_product_and_first_name() -> None:
    plan = spec_plan()
    content = dee.load_content(SPEC_CONTENT, plan)
    assert required_variables(plan, content) == {"product", "contact.firstName"}


def test_guarded_names_are_optional() -> None:
    content = PlanContent(
        templates={
            "t": EmailTemplate(
                html="{{ contact.title | default('there') }} {% if promo is defined %}{{ promo }}"
                "{% endif %}{% for x in items %}{{ x }}{% endfor %}{{ contact['last-name'] }}"
            )
        }
    )
    assert required_variables(one_email("Hi"), content) == {"items", "contact.last-name", "promo"}


def test_a_template_and_a_script_of_one_id_are_both_checked() -> None:
    plan = dee.execution_plan(
        id="p",
        name="P",
        created_by="tests",
        steps=[
            steps.send_email(id="mail", template_id="x", subject="Hi"),
            steps.send_voice(id="call", script_id="x", caller_id="+15551234567"),
            steps.end(id="done", outcome="sent"),
        ],
    )
    content = PlanContent(
        templates={"x": EmailTemplate(html="{{ product }}")}, scripts={"x": "{{ plan_tier }}"}
    )
    assert required_variables(plan, content) == {"product", "plan_tier"}
    assert [(p.step_id, p.code) for p in dee.validate_plan(plan, content)] == []
    broken = content.model_copy(update={"scripts": {"x": "{% if %}"}})
    assert [(p.step_id, p.code) for p in dee.validate_plan(plan, broken)] == [
        ("call", "template-syntax")
    ]


def test_render_email_escapes_html_only() -> None:
    content = PlanContent(
        templates={"t": EmailTemplate(html="<p>{{ product }}</p>", text="{{ product }}")}
    )
    plan = one_email("New: {{ product }}")
    step = plan.steps[0]
    assert isinstance(step, dee.SendEmailStep)
    rendered = render_email(step, content, contact=CONTACT, variables={"product": "A&B <Tools>"})
    assert rendered == dee.RenderedEmail(
        subject="New: A&B <Tools>", html="<p>A&amp;B &lt;Tools&gt;</p>", text="A&B <Tools>"
    )


def test_subject_cannot_carry_a_second_header() -> None:
    content = PlanContent(templates={"t": EmailTemplate(html="x")})
    step = one_email().steps[0]
    assert isinstance(step, dee.SendEmailStep)
    hostile = {**CONTACT, "firstName": "Ana\r\nBcc: everyone@example.com"}
    rendered = render_email(step, content, contact=hostile, variables={})
    assert rendered.subject == "Hello Ana Bcc: everyone@example.com"


def test_contact_data_is_not_evaluated_as_a_template() -> None:
    content = PlanContent(scripts={"s": "Hi {{ contact.firstName }}"})
    hostile = {"firstName": "{{ ''.__class__.__mro__ }}"}
    assert render_script("s", content, contact=hostile, variables={}) == (
        "Hi {{ ''.__class__.__mro__ }}"
    )


def test_sandbox_blocks_internals_at_render_time() -> None:
    # Validation refuses such a template; the sandbox is the second wall.
    content = PlanContent(scripts={"s": "{{ contact.items.__globals__ }}"})
    with pytest.raises(ContentError):
        render_script("s", content, contact={}, variables={})


def test_undefined_names_fail_the_render() -> None:
    content = PlanContent(templates={"t": EmailTemplate(html="{{ product }}")})
    step = one_email().steps[0]
    assert isinstance(step, dee.SendEmailStep)
    with pytest.raises(ContentError, match="'product' is undefined") as caught:
        render_email(step, content, contact=CONTACT, variables={})
    assert caught.value.step_id == "mail"


def test_missing_content_is_a_content_error() -> None:
    with pytest.raises(ContentError, match="script 'nope' is not part of this plan version"):
        render_script("nope", PlanContent(), contact={}, variables={}, step_id="call")


def test_missing_variables_are_named_up_front() -> None:
    plan = spec_plan()
    content = dee.load_content(SPEC_CONTENT, plan)
    assert missing_variables(
        required_variables(plan, content), contact={"email": "x@y.z"}, variables={}
    ) == ["contact.firstName", "product"]
    with pytest.raises(MissingVariablesError) as caught:
        check_variables(plan, content, contact={"firstName": "Ana"}, variables={})
    assert caught.value.missing == ("product",)
    assert str(caught.value) == (
        "missing variables product: give them in the contact or as run variables"
    )
    check_variables(plan, content, contact=CONTACT, variables={"product": "DEE"})


def test_spec_plan_renders_every_step() -> None:
    plan = spec_plan()
    content = dee.load_content(SPEC_CONTENT, plan)
    variables = {"product": "DEE"}
    for step in plan.steps:
        if isinstance(step, dee.SendEmailStep):
            rendered = render_email(step, content, contact=CONTACT, variables=variables)
            assert "DEE" in rendered.subject and "Ana" in rendered.html
        elif isinstance(step, dee.SendVoiceStep):
            script = render_script(step.script_id, content, contact=CONTACT, variables=variables)
            assert script.startswith("Hi Ana, this is a quick follow-up about DEE.")
