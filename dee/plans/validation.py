"""Plan validation: every problem in one pass, in O(steps + transitions).

:func:`validate_plan` returns a list of :class:`~dee.errors.Problem`, each with the step it
is about, a stable code and a message that says what was expected. The codes:

==============================  ===========================================================
``empty-plan``                  the plan has no steps
``too-many-steps``              more steps than the limit (1,000 unless configured)
``duplicate-step-id``           two steps share an id
``unknown-step``                a transition or a branch ``goto`` names no step of the plan
``unreachable-step``            no path leads from the first step to this one
``no-way-forward``              a step that is not an ``end`` has nowhere to go next
``ambiguous-transition``        a step that is not a branch has several next steps
``end-has-transitions``         an ``end`` step has outgoing transitions
``condition-on-non-branch``     a transition has a ``condition`` but leaves a non-branch
``transition-not-in-branch``    a transition leaves a branch for a step none of its
                                conditions go to, or its ``default`` label disagrees
``branch-without-default``      a branch has no ``default`` condition
``default-not-last``            a branch has conditions after its ``default``
``cycle-without-wait``          a cycle of steps does not pass through a ``wait``
``cycle-without-exit``          a cycle does not pass through a branch that can leave it
``invalid-duration``            a wait or a call's maxDuration is zero or negative
``duration-too-long``           a wait over 365 days, or a call over 4 hours
``missing-template``            ``templates/<id>.html`` is not in the content
``missing-script``              ``scripts/<id>.txt`` is not in the content
``missing-voicemail-message``   the voicemail message is not in the content
``template-syntax``             a subject, template or script is not valid Jinja2
``template-unsafe``             a template reads an attribute starting with ``_``
``content-too-large``           a template or script over 512 KiB
``expression-syntax``           a ``when`` is not a valid expression
``expression-too-large``        a ``when`` is too long or too deeply nested
``expression-forbidden``        a ``when`` uses something outside the expression language
``expression-unknown-function`` a ``when`` calls a function that does not exist
``expression-bad-arguments``    a function gets the wrong number or kind of arguments
``expression-unknown-step``     a ``when`` names a step that is not in the plan
``expression-unknown-event-type``  a ``when`` names an event type DEE does not know
``expression-not-a-call-step``  ``callOutcome`` / ``hasCallOutcome`` names a step that is
                                not a ``sendVoice`` step
``expression-unknown-call-outcome``  ``hasCallOutcome`` names an outcome that does not exist
``until-always-holds``         a wait's ``until`` is ``default``
``unknown-exit-event``         ``exitOn`` names an event it does not know
``invalid-timezone``            the schedule names a zone that does not exist
``invalid-window``              a window's times are not HH:MM, or ``from`` is not before ``to``
``unknown-day``                 a window names a day that is not mon ... sun
``outside-calling-hours``       a call window reaches outside 08:00-21:00 local time
``unknown-holidays``            the schedule's ``holidays`` is not a known calendar
==============================  ===========================================================

Problems with the document's shape (wrong types, unknown fields, an unknown step type) are
raised by the loader as :class:`~dee.errors.PlanDataError`; see :mod:`dee.plans.loader`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Final

from dee.errors import PlanValidationError, Problem
from dee.plans.conditions import DEFAULT, check_condition
from dee.plans.content import PlanContent, check_content, content_path
from dee.plans.exits import EXIT_EVENTS
from dee.plans.model import (
    BranchStep,
    Duration,
    EndStep,
    ExecutionPlan,
    SendVoiceStep,
    Step,
    WaitStep,
)
from dee.plans.schedule_checks import SCHEDULE, check_schedule

__all__ = ["DEFAULT_MAX_STEPS", "ensure_valid", "successors", "validate_plan"]

DEFAULT_MAX_STEPS: Final = 1_000


def validate_plan(
    plan: ExecutionPlan,
    content: PlanContent | None = None,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> list[Problem]:
    """Every problem with ``plan``; an empty list when it is valid.

    ``content`` holds the templates and scripts the plan references. When it is ``None``
    only the plan's structure is checked; the registry always checks content.
    """
    return _Validator(plan, content, max_steps).run()


def ensure_valid(
    plan: ExecutionPlan,
    content: PlanContent | None = None,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> None:
    """Raise :class:`PlanValidationError` listing every problem, if there are any."""
    problems = validate_plan(plan, content, max_steps=max_steps)
    if problems:
        raise PlanValidationError(problems, plan_id=plan.id)


def successors(plan: ExecutionPlan) -> dict[str, list[tuple[str, str | None]]]:
    """Each step's next steps as ``(step id, label)``, label being a branch's ``when``.

    Steps that choose their own way (branches) or stop (ends) say where they go
    (:meth:`~dee.plans.model.BranchStep.routes`). Meant for valid plans: any other step gets
    its first transition only.
    """
    explicit: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    if plan.transitions != "linear":
        for transition in plan.transitions:
            explicit[transition.from_].append((transition.to, None))
    graph: dict[str, list[tuple[str, str | None]]] = {}
    for index, step in enumerate(plan.steps):
        if not step.follows_transitions:
            graph[step.id] = list(step.routes())
        elif plan.transitions == "linear":
            following = plan.steps[index + 1 : index + 2]
            graph[step.id] = [(following[0].id, None)] if following else []
        else:
            graph[step.id] = explicit[step.id][:1]
    return graph


class _Validator:
    def __init__(self, plan: ExecutionPlan, content: PlanContent | None, max_steps: int) -> None:
        self.plan = plan
        self.content = content
        self.max_steps = max_steps
        self.problems: list[Problem] = []
        self.ids: dict[str, Step] = {}
        self.edges: dict[str, list[str]] = defaultdict(list)
        self.id_set: frozenset[str] = frozenset()
        self.call_steps = frozenset(s.id for s in plan.steps if isinstance(s, SendVoiceStep))

    def add(self, step_id: str | None, code: str, message: str) -> None:
        self.problems.append(Problem(step_id, code, message))

    def run(self) -> list[Problem]:
        steps = self.plan.steps
        if not steps:
            self.add(None, "empty-plan", "a plan needs at least one step, ending in an end step")
            return self.problems
        if len(steps) > self.max_steps:
            self.add(
                None,
                "too-many-steps",
                f"the plan has {len(steps):,} steps; the limit is {self.max_steps:,}: "
                "split it into several plans",
            )
        for index, step in enumerate(steps):
            if step.id in self.ids:
                self.add(
                    step.id,
                    "duplicate-step-id",
                    f"step {index + 1} reuses id {step.id!r}; every step needs its own id",
                )
            else:
                self.ids[step.id] = step
        self.id_set = frozenset(self.ids)
        for step in steps:
            self.check_step(step)
        for name in self.plan.exit_on or ():
            if name not in EXIT_EVENTS:
                self.add(
                    None,
                    "unknown-exit-event",
                    f"exitOn names {name!r}; expected some of {', '.join(EXIT_EVENTS)}",
                )
        self.check_transitions()
        self.problems.extend(check_schedule(self.plan))
        if self.content is not None:
            self.problems.extend(check_content(self.plan, self.content))
        # With two steps of one id the graph is ambiguous: report that alone and check
        # reachability and cycles once the ids are fixed.
        if len(self.ids) == len(steps):
            self.check_reachable()
            self.check_cycles()
        order = {step.id: index for index, step in enumerate(steps)}
        # Plan-wide problems first, then in step order; stable within a step.
        self.problems.sort(
            key=lambda p: -1 if p.step_id in (None, SCHEDULE) else order.get(p.step_id, len(order))
        )
        return self.problems

    # -- steps ---------------------------------------------------------------------------

    def check_step(self, step: Step) -> None:
        if self.content is not None:
            for ref in step.content_refs():
                if not self.content.has(ref):
                    self.add(
                        step.id,
                        f"missing-{ref.role.replace(' ', '-')}",
                        f"{ref.role} {ref.id!r} not found: expected {content_path(ref)} "
                        "in the content folder",
                    )
        for name, duration, limit in step.durations():
            self.check_duration(step.id, name, duration, limit)
        if isinstance(step, BranchStep):
            self.check_branch(step)
        elif isinstance(step, WaitStep) and step.until is not None:
            if step.until.strip() == DEFAULT:
                self.add(
                    step.id,
                    "until-always-holds",
                    "until is 'default', which always holds, so the wait would end at once: "
                    "write a condition such as 'events.hasReply(\"intro-email\")' or drop until",
                )
            problems = check_condition(step.until, step_ids=self.id_set, call_steps=self.call_steps)
            for problem in problems:
                self.add(step.id, problem.code, f"until ({step.until[:80]!r}): {problem.message}")

    def check_duration(self, step_id: str, name: str, duration: Duration, limit: int) -> None:
        total = duration.total_seconds
        if total <= 0:
            self.add(
                step_id,
                "invalid-duration",
                f"{name} is {total:,} seconds; expected a positive duration such as "
                "{hours: 1} (days, hours, minutes, seconds)",
            )
        elif total > limit:
            self.add(
                step_id,
                "duration-too-long",
                f"{name} is {duration}; the longest allowed is {Duration(seconds=limit)}",
            )

    def check_branch(self, step: BranchStep) -> None:
        defaults = [i for i, c in enumerate(step.conditions) if c.is_default]
        if not defaults:
            self.add(
                step.id,
                "branch-without-default",
                "the branch has no default: add {when: default, goto: <step>} as its "
                "last condition so every run has somewhere to go",
            )
        elif defaults[0] != len(step.conditions) - 1:
            self.add(
                step.id,
                "default-not-last",
                f"condition {defaults[0] + 1} of {len(step.conditions)} is default; move it "
                "to the end: conditions are tried in order and default always holds",
            )
        for index, condition in enumerate(step.conditions):
            if condition.goto not in self.ids:
                self.add(
                    step.id,
                    "unknown-step",
                    f"condition {index + 1} goes to {condition.goto!r}, which is not a "
                    "step of this plan",
                )
            else:
                self.edges[step.id].append(condition.goto)
            problems = check_condition(
                condition.when, step_ids=self.id_set, call_steps=self.call_steps
            )
            for problem in problems:
                self.add(
                    step.id,
                    problem.code,
                    f"condition {index + 1} ({condition.when[:80]!r}): {problem.message}",
                )

    # -- transitions ---------------------------------------------------------------------

    def check_transitions(self) -> None:
        steps = self.plan.steps
        every_id = self.id_set
        if self.plan.transitions == "linear":
            for index, step in enumerate(steps):
                if not step.follows_transitions:
                    continue
                if index + 1 < len(steps):
                    self.edges[step.id].append(steps[index + 1].id)
                else:
                    self.add(
                        step.id,
                        "no-way-forward",
                        f"{step.id!r} is the last step but not an end step: "
                        "add an end step after it",
                    )
            return
        outgoing: dict[str, list[str]] = defaultdict(list)
        for index, transition in enumerate(self.plan.transitions):
            source, target = transition.from_, transition.to
            label = f"transition {index + 1} ({source!r} -> {target!r})"
            if source not in every_id:
                self.add(
                    None,
                    "unknown-step",
                    f"{label} starts at {source!r}, which is not a step of this plan",
                )
                continue
            if target not in every_id:
                self.add(
                    source,
                    "unknown-step",
                    f"{label} goes to {target!r}, which is not a step of this plan",
                )
                continue
            step = self.ids[source]
            if isinstance(step, EndStep):
                self.add(
                    source,
                    "end-has-transitions",
                    f"{label} leaves an end step; a run stops at an end step: remove it",
                )
            elif isinstance(step, BranchStep):
                self.check_branch_transition(step, label, target, transition.condition)
            elif transition.condition is not None:
                self.add(
                    source,
                    "condition-on-non-branch",
                    f"{label} has condition {transition.condition!r}, but only transitions "
                    "out of a branch step can: remove the condition or make the step a branch",
                )
            elif target not in outgoing[source]:
                outgoing[source].append(target)
        for step in steps:
            if not step.follows_transitions:
                continue
            targets = outgoing[step.id]
            if not targets:
                self.add(
                    step.id,
                    "no-way-forward",
                    f"no transition leaves {step.id!r}: add one from it to the next step "
                    "(only end steps may stop)",
                )
            elif len(targets) > 1:
                # Keep every edge so the rest of the graph is judged as the author drew it.
                self.edges[step.id].extend(targets)
                self.add(
                    step.id,
                    "ambiguous-transition",
                    f"{step.id!r} has transitions to {', '.join(map(repr, targets))}; a "
                    f"{step.type} step has one next step: use a branch to choose",
                )
            else:
                self.edges[step.id].append(targets[0])

    def check_branch_transition(
        self, step: BranchStep, label: str, target: str, condition: str | None
    ) -> None:
        gotos = [c.goto for c in step.conditions]
        if target not in gotos:
            self.add(
                step.id,
                "transition-not-in-branch",
                f"{label} goes to {target!r}, but no condition of the branch goes there; "
                f"expected one of {', '.join(map(repr, dict.fromkeys(gotos)))}",
            )
            return
        default = next((c.goto for c in step.conditions if c.is_default), None)
        if condition == "default" and default is not None and default != target:
            self.add(
                step.id,
                "transition-not-in-branch",
                f"{label} is labelled default, but the branch's default goes to {default!r}",
            )

    # -- the graph -----------------------------------------------------------------------

    def check_reachable(self) -> None:
        start = self.plan.steps[0].id
        seen = {start}
        stack = [start]
        while stack:
            for target in self.edges[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        for step in self.ids.values():
            if step.id not in seen:
                self.add(
                    step.id,
                    "unreachable-step",
                    f"no path leads from the first step {start!r} to {step.id!r}: "
                    "add a transition or a branch condition that goes to it, or remove it",
                )

    def check_cycles(self) -> None:
        nodes = list(self.ids)
        order = {step_id: i for i, step_id in enumerate(nodes)}
        for component in _strongly_connected(nodes, self.edges):
            members = set(component)
            waits = {s for s in component if isinstance(self.ids[s], WaitStep)}
            exits = {
                s
                for s in component
                if isinstance(step := self.ids[s], BranchStep)
                and any(c.goto not in members for c in step.conditions)
            }
            for blocked, code, expected in (
                (waits, "cycle-without-wait", "a wait step, so a loop cannot spin"),
                (
                    exits,
                    "cycle-without-exit",
                    "a branch with a condition that leaves the cycle, so a run can end",
                ),
            ):
                cycle = _cycle_avoiding(component, self.edges, blocked)
                if cycle:
                    first = min(cycle, key=order.__getitem__)
                    path = " -> ".join(repr(s) for s in _rotate(cycle, first)[:12])
                    self.add(
                        first,
                        code,
                        f"the cycle {path} -> {first!r} does not pass through {expected}",
                    )


def _rotate(cycle: Sequence[str], first: str) -> list[str]:
    index = list(cycle).index(first)
    return list(cycle[index:]) + list(cycle[:index])


def _strongly_connected(
    nodes: Sequence[str], edges: dict[str, list[str]], allowed: set[str] | None = None
) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components that contain a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    adjacency = {
        node: [t for t in edges.get(node, ()) if allowed is None or t in allowed] for node in nodes
    }
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = adjacency.get(node, [])
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                component.reverse()
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _cycle_avoiding(
    component: Sequence[str], edges: dict[str, list[str]], blocked: set[str]
) -> list[str] | None:
    """A cycle inside ``component`` that passes through none of ``blocked``, if any."""
    allowed = set(component) - blocked
    for sub in _strongly_connected([s for s in component if s in allowed], edges, allowed):
        members = set(sub)
        # Walk inside the sub-component until a step repeats: that walk is a cycle.
        path: list[str] = [sub[0]]
        position = {sub[0]: 0}
        while True:
            here = path[-1]
            step = next(t for t in edges[here] if t in members)
            if step in position:
                return path[position[step] :]
            position[step] = len(path)
            path.append(step)
    return None
