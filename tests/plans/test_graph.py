"""Mermaid flowcharts of plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dee.plans.graph import escape_label, to_mermaid
from dee.plans.loader import load_plan
from dee.plans.model import ExecutionPlan

SPEC_PLAN = Path(__file__).resolve().parents[2] / "examples" / "spec-plan.yaml"


def make_plan(steps: list[dict[str, Any]], transitions: Any = "linear") -> ExecutionPlan:
    return ExecutionPlan.model_validate(
        {
            "id": "graph-test",
            "name": "Graph test",
            "metadata": {"createdBy": "tests"},
            "steps": steps,
            "transitions": transitions,
        }
    )


def test_every_step_type_has_its_shape() -> None:
    plan = make_plan(
        [
            {"type": "sendEmail", "id": "hello", "templateId": "intro", "subject": "Hi"},
            {"type": "wait", "id": "pause", "duration": {"days": 2, "minutes": 30}},
            {
                "type": "branch",
                "id": "route",
                "conditions": [
                    {"when": 'events.hasOpen("hello")', "goto": "call"},
                    {"when": "default", "goto": "end"},
                ],
            },
            {"type": "sendVoice", "id": "call", "scriptId": "pitch", "callerId": "+15551234567"},
            # "end" is a Mermaid keyword: node ids must not be step ids.
            {"type": "end", "id": "end", "outcome": "finished"},
        ]
    )

    assert to_mermaid(plan) == (
        "flowchart TD\n"
        "    start((start)) --> s0\n"
        '    s0["hello<br/>email intro"]\n'
        '    s1("pause<br/>wait 2d 30m")\n'
        '    s2{"route"}\n'
        '    s3["call<br/>voice pitch"]\n'
        '    s4(["end<br/>outcome finished"])\n'
        "    s0 --> s1\n"
        "    s1 --> s2\n"
        '    s2 -->|"events.hasOpen(#quot;hello#quot;)"| s3\n'
        '    s2 -->|"default"| s4\n'
        "    s3 --> s4\n"
    )


def test_explicit_transitions_are_drawn_in_step_order() -> None:
    plan = make_plan(
        [
            {"type": "wait", "id": "a.1", "duration": {"hours": 1}},
            {"type": "end", "id": "b_2", "outcome": "done"},
            {"type": "wait", "id": "c-3", "duration": {"seconds": 5}},
        ],
        [{"from": "a.1", "to": "c-3"}, {"from": "c-3", "to": "b_2"}],
    )

    assert to_mermaid(plan).splitlines()[-2:] == ["    s0 --> s2", "    s2 --> s1"]


def test_spec_example() -> None:
    lines = to_mermaid(load_plan(SPEC_PLAN)).splitlines()

    assert lines[:3] == [
        "flowchart TD",
        "    start((start)) --> s0",
        '    s0["intro-email<br/>email tmpl_intro"]',
    ]
    assert '    s1("wait-for-reply<br/>wait 3d 12h")' in lines
    assert '    s2{"check-response"}' in lines
    assert '    s5["follow-up-call<br/>voice script_follow_up"]' in lines
    assert '    s6(["end-sequence<br/>outcome replied"])' in lines
    assert [line for line in lines if line.startswith("    s2 -->")] == [
        '    s2 -->|"events.hasReply(#quot;intro-email#quot;)"| s6',
        '    s2 -->|"events.hasOpen(#quot;intro-email#quot;)"| s3',
        '    s2 -->|"default"| s4',
    ]
    # The start edge, one per linear step, three out of the branch.
    assert len([line for line in lines if "-->" in line]) == 1 + 5 + 3


def test_output_is_deterministic() -> None:
    assert to_mermaid(load_plan(SPEC_PLAN)) == to_mermaid(load_plan(SPEC_PLAN))


def test_targets_that_do_not_exist_get_a_node_of_their_own() -> None:
    plan = make_plan(
        [
            {
                "type": "branch",
                "id": "route",
                "conditions": [
                    {"when": "contact.vip", "goto": "gone"},
                    {"when": "default", "goto": "done"},
                ],
            },
            {"type": "end", "id": "done", "outcome": "done"},
        ]
    )

    assert to_mermaid(plan).splitlines()[4:] == [
        '    x0["gone<br/>no such step"]',
        '    s0 -->|"contact.vip"| x0',
        '    s0 -->|"default"| s1',
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Quotes would end the label.
        ('a "b"', "a #quot;b#quot;"),
        # Angle brackets and ampersands would be read as HTML.
        ("x < 3 && y > 2", "x #lt; 3 #amp;#amp; y #gt; 2"),
        # A pipe ends an edge label.
        ("a | b", "a #124; b"),
        # A "#" could start an entity code: it is escaped before the codes are added.
        ("#quot;", "#35;quot;"),
        # A backtick starts a markdown string.
        ("`x`", "#96;x#96;"),
        # A line break would end the statement.
        ("a\n  and b", "a and b"),
    ],
)
def test_escape_label(text: str, expected: str) -> None:
    assert escape_label(text) == expected
