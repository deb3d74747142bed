"""Text the ``dee`` command prints: problem lines, plan and run tables, their details.

Everything here returns lines rather than printing, so :mod:`dee.cli.main` decides where they go.
Text from plans (names, subjects, conditions) is put on one line and stripped of control
characters, so a plan cannot break the layout or send escape sequences to a terminal.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from dee.errors import Problem
from dee.plans.model import ExecutionPlan, Step
from dee.plans.schedule import Schedule
from dee.plans.versions import PlanSummary, PlanVersion
from dee.runs.client import RunSummary
from dee.runs.model import RunFailure, RunState

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` with its whitespace collapsed and any control character shown as ``?``."""
    return _CONTROL.sub("?", " ".join(text.split()))


def count(number: int, noun: str) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def timestamp(moment: datetime.datetime) -> str:
    """``2025-01-31T09:30:00Z``: UTC, to the second."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return f"{moment.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


def problem_lines(label: str, problems: Sequence[Problem]) -> list[str]:
    """``LABEL: STEP: CODE: MESSAGE`` per problem; ``STEP`` is ``(plan)`` for plan-wide ones."""
    return [
        f"{label}: {problem.step_id if problem.step_id is not None else '(plan)'}: "
        f"{problem.code}: {one_line(problem.message)}"
        for problem in problems
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def plan_table(summaries: Sequence[PlanSummary]) -> list[str]:
    return table(
        ("ID", "NAME", "LATEST", "VERSIONS", "UPDATED"),
        [
            (
                summary.id,
                one_line(summary.name),
                f"v{summary.latest_version}",
                str(summary.versions),
                timestamp(summary.updated_at),
            )
            for summary in summaries
        ],
    )


def step_details(step: Step) -> str:
    """What one step does, in a line: the step's own description, terminal-safe."""
    # describe() keeps to one line; control characters are the terminal's business.
    return _CONTROL.sub("?", step.describe())


def _transition_lines(plan: ExecutionPlan) -> list[str]:
    if plan.transitions == "linear":
        return ["transitions: linear"]
    lines = ["transitions:"]
    for transition in plan.transitions:
        label = f" ({one_line(transition.condition)})" if transition.condition else ""
        lines.append(f"  {transition.from_} -> {transition.to}{label}")
    return lines


def plan_details(stored: PlanVersion) -> list[str]:
    """The human-readable form of ``dee plans show``."""
    plan = stored.plan
    fields = [
        ("plan", f"{plan.id} v{stored.version}"),
        ("name", one_line(plan.name)),
        ("created by", one_line(plan.metadata.created_by or "")),
        ("created at", timestamp(stored.created_at)),
    ]
    if plan.metadata.description:
        fields.append(("description", one_line(plan.metadata.description)))
    if plan.schedule != Schedule():
        fields.append(("schedule", one_line(plan.schedule.describe())))
    fields.append(("digest", stored.digest))
    lines = [f"{name + ':':<13}{value}" for name, value in fields]
    lines += ["", f"steps ({len(plan.steps)}):"]
    lines += _indented([(step.id, step.type, step_details(step)) for step in plan.steps])
    lines += ["", *_transition_lines(plan), ""]
    digests = stored.content.digests()
    if not digests:
        lines.append("content: none")
    else:
        lines.append(f"content ({count(len(digests), 'file')}):")
        lines += _indented([(name, f"sha256 {sha}") for name, sha in digests.items()])
    return lines


def _indented(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` as a table without a header, two spaces in."""
    if not rows:
        return []
    return [f"  {line}" for line in table([""] * len(rows[0]), rows)[1:]]


# -- runs ------------------------------------------------------------------------------


def _field_lines(fields: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in fields) + 2
    return [f"{name + ':':<{width}}{value}" for name, value in fields]


def run_table(summaries: Sequence[RunSummary]) -> list[str]:
    """The table of ``dee runs list``."""
    return table(
        ("RUN ID", "STATUS", "PLAN", "CONTACT", "STEP", "OUTCOME", "STARTED", "CLOSED"),
        [
            (
                one_line(summary.run_id),
                summary.status,
                f"{summary.plan_id} v{summary.plan_version}" if summary.plan_id else "-",
                one_line(summary.contact_id or "-"),
                summary.current_step or "-",
                summary.outcome or "-",
                timestamp(summary.started_at),
                timestamp(summary.closed_at) if summary.closed_at else "-",
            )
            for summary in summaries
        ],
    )


def _failure(failure: RunFailure) -> str:
    kind = f"{failure.kind}: " if failure.kind else ""
    return f"{failure.step_id or '(run)'}: {kind}{one_line(failure.reason)}"


def run_details(run_id: str, state: RunState) -> list[str]:
    """The human-readable form of ``dee runs show``."""
    fields = [
        ("run", one_line(run_id)),
        ("plan", f"{state.plan_id} v{state.plan_version}"),
        ("contact", one_line(state.contact_id)),
        ("status", state.status),
        ("current step", state.current_step or "-"),
    ]
    if state.outcome is not None:
        fields.append(("outcome", state.outcome))
    if state.failure is not None:
        fields.append(("failure", _failure(state.failure)))
    if state.holding is not None:
        # "until 2026-12-07T14:00:00Z (send window of intro-email opens 2026-12-07 09:00 ...)"
        until = timestamp(state.holding.until)
        fields.append(("holding", f"{until} ({one_line(state.holding.reason)})"))
    lines = _field_lines(fields)
    lines += ["", f"history ({count(len(state.history), 'step')}):"]
    if state.history:
        lines += [
            f"  {line}"
            for line in table(
                ("STARTED", "FINISHED", "STEP", "TYPE", "RESULT"),
                [
                    (
                        timestamp(visit.started_at),
                        timestamp(visit.finished_at) if visit.finished_at else "-",
                        visit.step_id if visit.visit == 1 else f"{visit.step_id} #{visit.visit}",
                        visit.type,
                        one_line(visit.result) if visit.result else "(in progress)",
                    )
                    for visit in state.history
                ],
            )
        ]
    if state.calls:
        lines += ["", f"calls ({count(len(state.calls), 'call')}):"]
        lines += [
            f"  {line}"
            for line in table(
                ("STEP", "CALL", "OUTCOME", "FROM"),
                [
                    (
                        call.step_id if call.visit == 1 else f"{call.step_id} #{call.visit}",
                        one_line(call.call_sid),
                        one_line(call.outcome),
                        call.source,
                    )
                    for call in state.calls
                ],
            )
        ]
    lines += ["", f"events ({count(len(state.events), 'event')}):"]
    if state.events:
        lines += [
            f"  {line}"
            for line in table(
                ("AT", "TYPE", "STEP", "EVENT ID"),
                [
                    (
                        timestamp(event.at),
                        event.type,
                        event.step_id or "-",
                        one_line(event.event_id),
                    )
                    for event in state.events
                ],
            )
        ]
    return lines
