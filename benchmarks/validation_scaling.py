"""Validation time against plan size: validation is meant to be O(steps + transitions).

Builds plans of growing size, each a chain of email -> wait -> branch blocks where every
branch loops back to the start of its block unless the contact replied (so the plans have
as many cycles as blocks), and times :func:`dee.validate_plan` on each, best of five.
The time per step should stay flat as plans grow.

    .venv/bin/python benchmarks/validation_scaling.py
"""

from __future__ import annotations

import time
from typing import Any

import dee
from dee.plans.conditions import clear_caches
from dee.plans.content import EmailTemplate, PlanContent


def build(blocks: int) -> dee.ExecutionPlan:
    steps: list[dict[str, Any]] = []
    for block in range(blocks):
        mail, wait, check = f"mail-{block}", f"wait-{block}", f"check-{block}"
        following = f"mail-{block + 1}" if block + 1 < blocks else "done"
        steps += [
            {"type": "sendEmail", "id": mail, "templateId": "t", "subject": "Hi {{ name }}"},
            {"type": "wait", "id": wait, "duration": {"days": 1}},
            {
                "type": "branch",
                "id": check,
                "conditions": [
                    {"when": f'events.hasReply("{mail}")', "goto": following},
                    {"when": f'steps.visits("{check}") < 3', "goto": mail},
                    {"when": "default", "goto": following},
                ],
            },
        ]
    steps.append({"type": "end", "id": "done", "outcome": "finished"})
    return dee.plan_from_document(
        {"id": "bench", "name": "Bench", "metadata": {"createdBy": "bench"}, "steps": steps}
    )


def main() -> None:
    content = PlanContent(templates={"t": EmailTemplate(html="<p>{{ name }}</p>")})
    print(f"{'steps':>8} {'seconds':>9} {'µs/step':>8}")
    for blocks in (100, 300, 1_000, 3_000, 10_000):
        plan = build(blocks)
        best = float("inf")
        for _ in range(5):
            clear_caches()  # time cold parsing, as for a plan validated once
            start = time.perf_counter()
            problems = dee.validate_plan(plan, content, max_steps=len(plan.steps))
            best = min(best, time.perf_counter() - start)
        assert problems == [], problems[:3]
        steps = len(plan.steps)
        print(f"{steps:>8} {best:>9.4f} {best / steps * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
