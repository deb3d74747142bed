"""Every validation rule, with the exact problems it reports."""

from __future__ import annotations

from typing import Any

import pytest

import dee
from dee.errors import PlanValidationError, Problem
from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.validation import ensure_valid, successors
from tests.helpers.spec import spec_plan

END = {"type": "end", "id": "done", "outcome": "finished"}
WAIT = {"type": "wait", "id": "pause", "duration": {"hours": 1}}


def email(step_id: str, template: str = "tmpl", subject: str = "Hi") -> dict[str, Any]:
    return {"type": "sendEmail", "id": step_id, "templateId": template, "subject": subject}


def branch(step_id: str, *rules: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "branch",
        "id": step_id,
        "conditions": [{"when": when, "goto": goto} for when, goto in rules],
    }


def plan(steps: list[dict[str, Any]], transitions: Any = "linear") -> dee.ExecutionPlan:
    return dee.plan_from_document(
        {
            "id": "p",
            "name": "P",
            "metadata": {"createdBy": "tests"},
            "steps": steps,
            "transitions": transitions,
        }
    )


CONTENT = PlanContent(
    templates={"tmpl": EmailTemplate(html="<p>Hi {{ contact.firstName }}</p>")},
    scripts={"script": "Hello", "vm": "Sorry we missed you"},
)

CASES: list[tuple[str, dee.ExecutionPlan, list[Problem]]] = [
    (
        # The smallest valid plan.
        "valid",
        plan([WAIT, END]),
        [],
    ),
    (
        # An end step in the middle of a linear plan strands what follows it.
        "unreachable",
        plan([END, {**WAIT, "id": "later"}, {**END, "id": "after"}]),
        [
            Problem(
                "later",
                "unreachable-step",
                "no path leads from the first step 'done' to 'later': add a transition or a "
                "branch condition that goes to it, or remove it",
            ),
            Problem(
                "after",
                "unreachable-step",
                "no path leads from the first step 'done' to 'after': add a transition or a "
                "branch condition that goes to it, or remove it",
            ),
        ],
    ),
    (
        # Email -> branch -> email again, with no wait in between: a send loop.
        "cycle-without-wait",
        plan(
            [
                email("mail"),
                branch("check", ('events.hasReply("mail")', "done"), ("default", "mail")),
                END,
            ],
            [{"from": "mail", "to": "check"}],
        ),
        [
            Problem(
                "mail",
                "cycle-without-wait",
                "the cycle 'mail' -> 'check' -> 'mail' does not pass through a wait step, "
                "so a loop cannot spin",
            )
        ],
    ),
    (
        # A wait and a branch that can only go back to the wait: the run never ends.
        "cycle-without-exit",
        plan([WAIT, branch("check", ("default", "pause")), END]),
        [
            Problem(
                "pause",
                "cycle-without-exit",
                "the cycle 'pause' -> 'check' -> 'pause' does not pass through a branch with "
                "a condition that leaves the cycle, so a run can end",
            ),
            Problem(
                "done",
                "unreachable-step",
                "no path leads from the first step 'pause' to 'done': add a transition or a "
                "branch condition that goes to it, or remove it",
            ),
        ],
    ),
    (
        # A nurture loop: wait, check, loop back unless replied. Valid.
        "loop-with-wait-and-exit",
        plan(
            [
                email("mail"),
                WAIT,
                branch("check", ('events.hasReply("mail")', "done"), ("default", "pause")),
                END,
            ]
        ),
        [],
    ),
    (
        # Content the steps reference is not there.
        "missing-content",
        plan(
            [
                email("mail", template="nope"),
                {
                    "type": "sendVoice",
                    "id": "call",
                    "scriptId": "gone",
                    "callerId": "+15551234567",
                    "voicemail": {"detect": True, "messageId": "vm-gone"},
                },
                END,
            ]
        ),
        [
            Problem(
                "mail",
                "missing-template",
                "template 'nope' not found: expected templates/nope.html in the content folder",
            ),
            Problem(
                "call",
                "missing-script",
                "script 'gone' not found: expected scripts/gone.txt in the content folder",
            ),
            Problem(
                "call",
                "missing-voicemail-message",
                "voicemail message 'vm-gone' not found: expected scripts/vm-gone.txt in the "
                "content folder",
            ),
        ],
    ),
    (
        # No default: a run whose contact did nothing would have nowhere to go.
        "branch-without-default",
        plan([WAIT, branch("check", ('events.hasReply("pause")', "done")), END]),
        [
            Problem(
                "check",
                "branch-without-default",
                "the branch has no default: add {when: default, goto: <step>} as its last "
                "condition so every run has somewhere to go",
            )
        ],
    ),
    (
        # A default before other conditions hides them.
        "default-not-last",
        plan([WAIT, branch("check", ("default", "done"), ("events.hasReply()", "done")), END]),
        [
            Problem(
                "check",
                "default-not-last",
                "condition 1 of 2 is default; move it to the end: conditions are tried in "
                "order and default always holds",
            )
        ],
    ),
    (
        # Two steps with one id.
        "duplicate-step-id",
        plan([WAIT, {**WAIT, "duration": {"hours": 2}}, END]),
        [
            Problem(
                "pause",
                "duplicate-step-id",
                "step 2 reuses id 'pause'; every step needs its own id",
            )
        ],
    ),
    (
        # Transitions and gotos to steps that do not exist.
        "unknown-steps",
        plan(
            [WAIT, branch("check", ("default", "nowhere")), END],
            [
                {"from": "pause", "to": "check"},
                {"from": "ghost", "to": "done"},
                {"from": "check", "to": "limbo"},
            ],
        ),
        [
            Problem(
                None,
                "unknown-step",
                "transition 2 ('ghost' -> 'done') starts at 'ghost', which is not a step of "
                "this plan",
            ),
            Problem(
                "check",
                "unknown-step",
                "condition 1 goes to 'nowhere', which is not a step of this plan",
            ),
            Problem(
                "check",
                "unknown-step",
                "transition 3 ('check' -> 'limbo') goes to 'limbo', which is not a step of "
                "this plan",
            ),
            Problem(
                "done",
                "unreachable-step",
                "no path leads from the first step 'pause' to 'done': add a transition or a "
                "branch condition that goes to it, or remove it",
            ),
        ],
    ),
    (
        # The last step of a linear plan is a wait, and an explicit plan forgets a step.
        "no-way-forward-linear",
        plan([WAIT]),
        [
            Problem(
                "pause",
                "no-way-forward",
                "'pause' is the last step but not an end step: add an end step after it",
            )
        ],
    ),
    (
        # An explicit plan with no transition out of a wait.
        "no-way-forward-explicit",
        plan([WAIT, END], []),
        [
            Problem(
                "pause",
                "no-way-forward",
                "no transition leaves 'pause': add one from it to the next step (only end "
                "steps may stop)",
            ),
            Problem(
                "done",
                "unreachable-step",
                "no path leads from the first step 'pause' to 'done': add a transition or a "
                "branch condition that goes to it, or remove it",
            ),
        ],
    ),
    (
        # An end step that claims to lead somewhere.
        "end-has-transitions",
        plan([WAIT, END], [{"from": "pause", "to": "done"}, {"from": "done", "to": "pause"}]),
        [
            Problem(
                "done",
                "end-has-transitions",
                "transition 2 ('done' -> 'pause') leaves an end step; a run stops at an end "
                "step: remove it",
            )
        ],
    ),
    (
        # Zero, negative and very long durations.
        "durations",
        plan(
            [
                {**WAIT, "duration": {}},
                {**WAIT, "id": "back", "duration": {"days": 1, "hours": -25}},
                {**WAIT, "id": "forever", "duration": {"days": 400}},
                {
                    "type": "sendVoice",
                    "id": "call",
                    "scriptId": "script",
                    "callerId": "+15551234567",
                    "maxDuration": {"hours": 5},
                },
                END,
            ]
        ),
        [
            Problem(
                "pause",
                "invalid-duration",
                "duration is 0 seconds; expected a positive duration such as {hours: 1} "
                "(days, hours, minutes, seconds)",
            ),
            Problem(
                "back",
                "invalid-duration",
                "duration is -3,600 seconds; expected a positive duration such as {hours: 1} "
                "(days, hours, minutes, seconds)",
            ),
            Problem(
                "forever",
                "duration-too-long",
                "duration is 400d; the longest allowed is 365d",
            ),
            Problem("call", "duration-too-long", "maxDuration is 5h; the longest allowed is 4h"),
        ],
    ),
    (
        # Broken, hostile and misspelled conditions.
        "expressions",
        plan(
            [
                email("mail"),
                WAIT,
                branch(
                    "check",
                    ('events.hasReply("mail"', "done"),
                    ('__import__("os").system("ls")', "done"),
                    ("contact.__class__", "done"),
                    ('events.hasRepyl("mail")', "done"),
                    ('events.hasOpen("mial")', "done"),
                    ('events.count("opens", "mail") > 1', "done"),
                    ("default", "done"),
                ),
                END,
            ]
        ),
        [
            Problem(
                "check",
                "expression-syntax",
                "condition 1 ('events.hasReply(\"mail\"'): unexpected end of template, "
                "expected ','.; check quotes and parentheses",
            ),
            Problem(
                "check",
                "expression-unknown-function",
                'condition 2 (\'__import__("os").system("ls")\'): unknown function '
                "'__import__(...).system'; expected one of events.hasReply, events.hasOpen, "
                "events.hasClick, events.hasBounce, events.has, events.count, "
                "events.callOutcome, events.hasCallOutcome, steps.visits",
            ),
            Problem(
                "check",
                "expression-forbidden",
                "condition 3 ('contact.__class__'): field '__class__' is not allowed: fields "
                "may not start with _",
            ),
            Problem(
                "check",
                "expression-unknown-function",
                "condition 4 ('events.hasRepyl(\"mail\")'): unknown function "
                "'events.hasRepyl'; expected one of events.hasReply, events.hasOpen, "
                "events.hasClick, events.hasBounce, events.has, events.count, "
                "events.callOutcome, events.hasCallOutcome, steps.visits",
            ),
            Problem(
                "check",
                "expression-unknown-step",
                "condition 5 ('events.hasOpen(\"mial\")'): events.hasOpen names step 'mial', "
                "which is not in this plan",
            ),
            Problem(
                "check",
                "expression-unknown-event-type",
                'condition 6 (\'events.count("opens", "mail") > 1\'): events.count names '
                "event type 'opens'; expected one of auto-reply, bounce, busy, call-answered, "
                "call-failed, call-outcome, click, delivered, dropped, no-answer, open, reply, "
                "spamreport, unsubscribe, voicemail",
            ),
        ],
    ),
    (
        # Several next steps for a wait; a labelled edge out of a wait; a branch edge its
        # conditions do not take; a default label that disagrees with the branch.
        "transition-shapes",
        plan(
            [
                WAIT,
                {**WAIT, "id": "other"},
                branch("check", ("events.hasReply()", "done"), ("default", "other")),
                END,
            ],
            [
                {"from": "pause", "to": "check"},
                {"from": "pause", "to": "other"},
                {"from": "other", "to": "check", "condition": "opened"},
                {"from": "check", "to": "pause", "condition": "opened"},
                {"from": "check", "to": "done", "condition": "default"},
            ],
        ),
        [
            Problem(
                "pause",
                "ambiguous-transition",
                "'pause' has transitions to 'check', 'other'; a wait step has one next step: "
                "use a branch to choose",
            ),
            Problem(
                "other",
                "condition-on-non-branch",
                "transition 3 ('other' -> 'check') has condition 'opened', but only "
                "transitions out of a branch step can: remove the condition or make the step "
                "a branch",
            ),
            Problem(
                "other",
                "no-way-forward",
                "no transition leaves 'other': add one from it to the next step (only end "
                "steps may stop)",
            ),
            Problem(
                "check",
                "transition-not-in-branch",
                "transition 4 ('check' -> 'pause') goes to 'pause', but no condition of the "
                "branch goes there; expected one of 'done', 'other'",
            ),
            Problem(
                "check",
                "transition-not-in-branch",
                "transition 5 ('check' -> 'done') is labelled default, but the branch's "
                "default goes to 'other'",
            ),
        ],
    ),
    (
        # Jinja2 syntax errors in a subject and in a template file.
        "template-syntax",
        plan(
            [email("mail", subject="Hi {{ contact.firstName"), email("other", template="bad"), END]
        ),
        [
            Problem(
                "mail",
                "template-syntax",
                "subject line 1: unexpected end of template, expected 'end of print "
                "statement'.; fix the Jinja2 syntax",
            ),
            Problem(
                "other",
                "template-syntax",
                "templates/bad.html line 2: Encountered unknown tag 'endfor'.; fix the Jinja2 "
                "syntax",
            ),
        ],
    ),
    (
        # A template that reaches for Python internals.
        "template-unsafe",
        plan([email("mail", template="sneaky"), END]),
        [
            Problem(
                "mail",
                "template-unsafe",
                "templates/sneaky.html line 1 reads attribute '__class__'; names starting "
                "with '_' are not available to templates",
            )
        ],
    ),
    (
        # Call outcomes, in a wait's until and a branch: of a step that is not a call, of a
        # step that does not exist (that problem only), and an outcome that does not exist;
        # a call's own outcome is fine.
        "call-outcomes",
        plan(
            [
                email("mail"),
                {
                    "type": "sendVoice",
                    "id": "ring",
                    "scriptId": "script",
                    "callerId": "+15551234567",
                },
                {**WAIT, "until": 'events.hasCallOutcome("mail", "busy")'},
                branch(
                    "after-call",
                    ('events.callOutcome("mail") == "voicemail"', "done"),
                    ('events.hasCallOutcome("rnig", "busy")', "done"),
                    ('events.hasCallOutcome("ring", "machine")', "done"),
                    ('events.callOutcome("ring") in ["busy", "no-answer"]', "done"),
                    ('events.hasCallOutcome("ring", "voicemail")', "done"),
                    ("default", "done"),
                ),
                END,
            ]
        ),
        [
            Problem(
                "pause",
                "expression-not-a-call-step",
                'until (\'events.hasCallOutcome("mail", "busy")\'): events.hasCallOutcome '
                "names step 'mail', which is not a sendVoice step: only a call has an outcome; "
                "name one of the plan's sendVoice steps",
            ),
            Problem(
                "after-call",
                "expression-not-a-call-step",
                'condition 1 (\'events.callOutcome("mail") == "voicemail"\'): '
                "events.callOutcome names step 'mail', which is not a sendVoice step: only a "
                "call has an outcome; name one of the plan's sendVoice steps",
            ),
            Problem(
                "after-call",
                "expression-unknown-step",
                'condition 2 (\'events.hasCallOutcome("rnig", "busy")\'): '
                "events.hasCallOutcome names step 'rnig', which is not in this plan",
            ),
            Problem(
                "after-call",
                "expression-unknown-call-outcome",
                'condition 3 (\'events.hasCallOutcome("ring", "machine")\'): '
                "events.hasCallOutcome names call outcome 'machine'; expected one of "
                "answered, voicemail, no-answer, busy, failed, canceled",
            ),
        ],
    ),
    (
        # No steps at all.
        "empty",
        plan([]),
        [
            Problem(
                None,
                "empty-plan",
                "a plan needs at least one step, ending in an end step",
            )
        ],
    ),
]

EXTRA_CONTENT = PlanContent(
    templates={
        **CONTENT.templates,
        "bad": EmailTemplate(html="<p>Hi</p>\n{% endfor %}"),
        "sneaky": EmailTemplate(html="{{ contact.__class__ }}"),
    },
    scripts=CONTENT.scripts,
)


@pytest.mark.parametrize(("name", "subject", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rule(name: str, subject: dee.ExecutionPlan, expected: list[Problem]) -> None:
    assert dee.validate_plan(subject, EXTRA_CONTENT) == expected


def test_step_limit_is_configurable() -> None:
    subject = plan([{**WAIT, "id": f"w{i}"} for i in range(5)] + [END])
    assert dee.validate_plan(subject, CONTENT) == []
    assert dee.validate_plan(subject, CONTENT, max_steps=3) == [
        Problem(
            None,
            "too-many-steps",
            "the plan has 6 steps; the limit is 3: split it into several plans",
        )
    ]


def test_default_step_limit_is_1000() -> None:
    big = plan([{**WAIT, "id": f"w{i}"} for i in range(1000)] + [END])
    assert [p.code for p in dee.validate_plan(big)] == ["too-many-steps"]


def test_long_chains_and_loops_validate_without_recursion() -> None:
    # 5,000 steps in one loop: deep enough to break a recursive graph walk.
    count = 5_000
    chain = [{**WAIT, "id": f"w{i}"} for i in range(count)]
    loop = branch("check", ("events.hasReply()", "done"), ("default", "w0"))
    assert dee.validate_plan(plan([*chain, loop, END]), max_steps=10_000) == []


def test_without_content_only_structure_is_checked() -> None:
    assert dee.validate_plan(plan([email("mail", template="anything"), END])) == []


def test_ensure_valid_raises_with_every_problem() -> None:
    with pytest.raises(PlanValidationError) as caught:
        ensure_valid(plan([WAIT, branch("check", ("default", "nowhere"))]))
    assert caught.value.plan_id == "p"
    assert caught.value.codes == ["unknown-step"]
    assert "plan 'p' has 1 problem:" in str(caught.value)


def test_successors_of_the_spec_plan() -> None:
    assert successors(spec_plan()) == {
        "intro-email": [("wait-for-reply", None)],
        "wait-for-reply": [("check-response", None)],
        "check-response": [
            ("end-sequence", 'events.hasReply("intro-email")'),
            ("warm-follow-up", 'events.hasOpen("intro-email")'),
            ("cold-follow-up", "default"),
        ],
        "warm-follow-up": [("end-sequence", None)],
        "cold-follow-up": [("follow-up-call", None)],
        "follow-up-call": [("end-sequence", None)],
        "end-sequence": [],
    }
