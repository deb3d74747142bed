"""The product spec's example plan, built in Python.

Run it to validate the plan against the example content and print it as a Mermaid graph::

    python examples/spec_plan.py
"""

from __future__ import annotations

from pathlib import Path

import dee
from dee import steps, transitions


def build() -> dee.ExecutionPlan:
    return dee.execution_plan(
        id="outbound-intro",
        name="Intro sequence with a follow-up call",
        created_by="sales-ops@example.com",
        description=(
            "Intro email, wait three and a half days, then follow up by how the contact engaged."
        ),
        steps=[
            steps.send_email(
                id="intro-email",
                template_id="tmpl_intro",
                subject="Introducing {{product}}",
                reply_to="sales@example.com",
                tracking={"opens": True, "clicks": True},
            ),
            steps.wait(id="wait-for-reply", duration={"days": 3, "hours": 12}),
            steps.branch(
                id="check-response",
                conditions=[
                    {"when": 'events.hasReply("intro-email")', "goto": "end-sequence"},
                    {"when": 'events.hasOpen("intro-email")', "goto": "warm-follow-up"},
                    {"when": "default", "goto": "cold-follow-up"},
                ],
            ),
            steps.send_email(
                id="warm-follow-up",
                template_id="tmpl_warm_follow_up",
                subject="Following up on {{product}}",
                reply_to="sales@example.com",
            ),
            steps.send_email(
                id="cold-follow-up",
                template_id="tmpl_cold_follow_up",
                subject="Did you see my note about {{product}}?",
                reply_to="sales@example.com",
            ),
            steps.send_voice(
                id="follow-up-call",
                script_id="script_follow_up",
                caller_id="+15551234567",
                max_duration={"minutes": 5},
                voicemail={"detect": True, "message_id": "vm_follow_up"},
            ),
            steps.end(id="end-sequence", outcome="replied"),
        ],
        transitions=transitions.explicit(
            [
                {"from": "intro-email", "to": "wait-for-reply"},
                {"from": "wait-for-reply", "to": "check-response"},
                {"from": "check-response", "to": "warm-follow-up", "condition": "opened"},
                {"from": "check-response", "to": "cold-follow-up", "condition": "default"},
                {"from": "warm-follow-up", "to": "end-sequence"},
                {"from": "cold-follow-up", "to": "follow-up-call"},
                {"from": "follow-up-call", "to": "end-sequence"},
            ]
        ),
    )


def main() -> None:
    plan = build()
    content = dee.load_content(Path(__file__).parent / "content", plan)
    problems = dee.validate_plan(plan, content)
    for problem in problems:
        print(problem)
    print(f"{plan.id}: {len(plan.steps)} steps, {len(problems)} problems")
    print("needs:", ", ".join(sorted(dee.required_variables(plan, content))))
    print(dee.to_mermaid(plan))


if __name__ == "__main__":
    main()
