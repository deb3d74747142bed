"""Property tests: random and mutated documents meet validation problems, never a crash."""

from __future__ import annotations

import contextlib
import copy
import json
from collections import deque
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dee
from dee.errors import ConditionError, PlanDataError, PlanLoadError, Problem
from dee.plans.conditions import ConditionContext, EventTally, check_condition, evaluate_condition
from dee.plans.validation import successors
from tests.helpers.spec import SPEC_CONTENT, SPEC_YAML

SPEC_DOCUMENT = dee.load_plan(SPEC_YAML).to_document()
SPEC_CONTENT_LOADED = dee.load_content(SPEC_CONTENT, dee.load_plan(SPEC_YAML))
STEP_IDS = [step["id"] for step in SPEC_DOCUMENT["steps"]]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(STEP_IDS + ["linear", "default", "sendEmail", "wait", "branch", "end"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["id", "type", "steps", "from", "to", "when", "goto", "duration", "hours", "x"]
            )
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)

expression_tokens = st.sampled_from(
    [
        "events.hasReply(",
        "events.hasOpen(",
        "events.count(",
        "steps.visits(",
        "contact.",
        "contact[",
        '"intro-email"',
        '"open"',
        "'x'",
        ")",
        "]",
        "(",
        "[",
        ",",
        " and ",
        " or ",
        " not ",
        " == ",
        " < ",
        " in ",
        "1",
        "none",
        "true",
        "__class__",
        "score",
        "|",
        ".",
        "*",
        "default",
        "{{",
        "%}",
    ]
)
expressions = st.lists(expression_tokens, max_size=12).map("".join) | st.text(max_size=60)


def _mutate(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        target = data.draw(st.sampled_from(["step", "field", "transition", "top", "condition"]))
        steps = mutated.get("steps")
        if target == "top":
            key = data.draw(st.sampled_from(["id", "name", "steps", "transitions", "metadata"]))
            if data.draw(st.booleans()):
                mutated.pop(key, None)
            else:
                mutated[key] = data.draw(json_values)
        elif not isinstance(steps, list) or not steps:
            continue
        elif target == "step":
            index = data.draw(st.integers(min_value=0, max_value=len(steps) - 1))
            action = data.draw(st.sampled_from(["drop", "duplicate", "move", "replace"]))
            if action == "drop":
                steps.pop(index)
            elif action == "duplicate":
                steps.insert(index, copy.deepcopy(steps[index]))
            elif action == "move":
                steps.append(steps.pop(index))
            else:
                steps[index] = data.draw(json_values)
        elif target == "field":
            step = data.draw(st.sampled_from(steps))
            if isinstance(step, dict) and step:
                key = data.draw(st.sampled_from(sorted(step)))
                if data.draw(st.booleans()):
                    step.pop(key)
                else:
                    step[key] = data.draw(json_values | st.sampled_from(STEP_IDS))
        elif target == "condition":
            for step in steps:
                if isinstance(step, dict) and isinstance(step.get("conditions"), list):
                    rules = step["conditions"]
                    if rules and isinstance(rules[0], dict):
                        rules[0]["when"] = data.draw(expressions)
                    # An earlier mutation may have replaced the last rule with a non-object.
                    if rules and isinstance(rules[-1], dict):
                        rules[-1]["goto"] = data.draw(st.sampled_from(STEP_IDS + ["nowhere"]))
        else:
            transitions = mutated.get("transitions")
            if isinstance(transitions, list) and transitions:
                index = data.draw(st.integers(min_value=0, max_value=len(transitions) - 1))
                edge = transitions[index]
                if isinstance(edge, dict):
                    edge[data.draw(st.sampled_from(["from", "to", "condition"]))] = data.draw(
                        st.sampled_from(STEP_IDS + ["nowhere", "default"])
                    )
            else:
                mutated["transitions"] = "linear"
    return mutated


def _judge(document: Any) -> list[Problem]:
    """Load and validate, returning the problems; anything but a DEE problem propagates."""
    try:
        plan = dee.plan_from_document(document)
    except PlanDataError as exc:
        assert exc.problems, "a data error must list its problems"
        return list(exc.problems)
    return dee.validate_plan(plan, SPEC_CONTENT_LOADED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_values)
def test_random_documents_only_meet_problems(document: Any) -> None:
    for problem in _judge(document):
        assert problem.code and problem.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_spec_documents_only_meet_problems(data: st.DataObject) -> None:
    for problem in _judge(_mutate(SPEC_DOCUMENT, data)):
        assert problem.code and problem.message
        assert problem.step_id is None or isinstance(problem.step_id, str)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), kind=st.sampled_from(["json", "yaml"]))
def test_random_text_is_a_load_or_data_error(text: str, kind: str) -> None:
    with contextlib.suppress(PlanLoadError, PlanDataError):
        dee.parse_plan(text, kind=kind)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["json", "yaml"]))
def test_mutated_spec_text_is_a_load_or_data_error(data: st.DataObject, kind: str) -> None:
    text = json.dumps(SPEC_DOCUMENT) if kind == "json" else SPEC_YAML.read_text()
    position = data.draw(st.integers(min_value=0, max_value=len(text)))
    cut = data.draw(st.integers(min_value=0, max_value=10))
    insert = data.draw(st.text(max_size=5))
    with contextlib.suppress(PlanLoadError, PlanDataError):
        dee.parse_plan(text[:position] + insert + text[position + cut :], kind=kind)


@settings(max_examples=500, deadline=None)
@given(source=expressions)
def test_expressions_are_checked_or_evaluated_never_crash(source: str) -> None:
    problems = check_condition(source, step_ids=STEP_IDS)
    context = ConditionContext(
        events=EventTally([("open", "intro-email")]), contact={"score": 3}, variables={}
    )
    try:
        result = evaluate_condition(source, context)
    except ConditionError:
        assert problems, f"{source!r} passed the check but failed evaluation"
    else:
        assert isinstance(result, bool)
        assert all(p.code in {"expression-unknown-step"} for p in problems), problems


@st.composite
def random_graphs(draw: st.DrawFn) -> dee.ExecutionPlan:
    """Plans of valid shape whose graph is random: waits, branches and ends."""
    count = draw(st.integers(min_value=1, max_value=12))
    ids = [f"s{i}" for i in range(count)]
    kinds = [draw(st.sampled_from(["wait", "branch", "end", "email"])) for _ in ids[:-1]]
    kinds.append("end")
    steps: list[dict[str, Any]] = []
    transitions: list[dict[str, str]] = []
    for step_id, kind in zip(ids, kinds, strict=True):
        if kind == "wait":
            steps.append({"type": "wait", "id": step_id, "duration": {"hours": 1}})
        elif kind == "email":
            steps.append({"type": "sendEmail", "id": step_id, "templateId": "t", "subject": "x"})
        elif kind == "end":
            steps.append({"type": "end", "id": step_id, "outcome": "done"})
        else:
            targets = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3))
            rules = [{"when": "events.hasReply()", "goto": t} for t in targets[:-1]]
            rules.append({"when": "default", "goto": targets[-1]})
            steps.append({"type": "branch", "id": step_id, "conditions": rules})
        if kind in {"wait", "email"}:
            for target in draw(st.lists(st.sampled_from(ids), max_size=2)):
                transitions.append({"from": step_id, "to": target})
    return dee.plan_from_document(
        {
            "id": "g",
            "name": "G",
            "metadata": {"createdBy": "hypothesis"},
            "steps": steps,
            "transitions": draw(st.sampled_from(["linear", transitions])),
        }
    )


@settings(max_examples=500, deadline=None)
@given(plan=random_graphs())
def test_a_valid_plan_always_reaches_an_end(plan: dee.ExecutionPlan) -> None:
    if dee.validate_plan(plan):
        return
    graph = {step: [target for target, _ in edges] for step, edges in successors(plan).items()}
    ends = {step.id for step in plan.steps if isinstance(step, dee.EndStep)}
    reachable = _reach(graph, [plan.steps[0].id])
    assert reachable == {step.id for step in plan.steps}
    # From every step some end is reachable, and every cycle has a wait on it.
    for step in plan.steps:
        assert _reach(graph, [step.id]) & ends
    waits = {step.id for step in plan.steps if isinstance(step, dee.WaitStep)}
    without_waits = {
        s: [t for t in ts if t not in waits] for s, ts in graph.items() if s not in waits
    }
    for step_id in without_waits:
        assert step_id not in _reach(without_waits, without_waits[step_id])


def _reach(graph: dict[str, list[str]], start: list[str]) -> set[str]:
    seen = set(start)
    queue = deque(start)
    while queue:
        for target in graph.get(queue.popleft(), []):
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen
