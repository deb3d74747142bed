"""Plans drawn as Mermaid flowcharts (``dee plans graph``).

Each step is one node, shaped and labelled as its model says (``node_shape`` and
``node_label()``): sends are rectangles, waits are rounded, branches are rhombuses and ends
are stadiums. Edges follow :func:`dee.plans.validation.successors`; an edge out of a branch
is labelled with its condition. For the spec's example::

    flowchart TD
        start((start)) --> s0
        s0["intro-email<br/>email tmpl_intro"]
        s1("wait-for-reply<br/>wait 3d 12h")
        s2{"check-response"}
        ...
        s2 -->|"events.hasReply(#quot;intro-email#quot;)"| s6

Node ids are ``s<index>`` rather than step ids: ``end`` and ids with dots or dashes mean
something to Mermaid. The output depends only on the plan, so it diffs cleanly.
"""

from __future__ import annotations

from typing import Final

from dee.plans.model import ExecutionPlan, Step
from dee.plans.validation import successors

__all__ = ["escape_label", "to_mermaid"]

INDENT: Final = "    "

# Mermaid decodes "#name;" and "#123;" in labels. "#" goes first so that the codes added
# for the other characters are not escaped again. "<" and ">" would otherwise be read as
# HTML, "|" ends an edge label, a backtick starts a markdown string, and a line break ends
# the statement.
_ESCAPES: Final = (
    ("#", "#35;"),
    ('"', "#quot;"),
    ("&", "#amp;"),
    ("<", "#lt;"),
    (">", "#gt;"),
    ("|", "#124;"),
    ("`", "#96;"),
)


def escape_label(text: str) -> str:
    """``text`` made safe inside a quoted Mermaid label, on one line."""
    text = " ".join(text.split())
    for raw, code in _ESCAPES:
        text = text.replace(raw, code)
    return text


def to_mermaid(plan: ExecutionPlan) -> str:
    """A Mermaid ``flowchart TD`` of ``plan``, starting at its first step.

    Meant for valid plans, but an invalid one still draws: a ``goto`` or transition to a
    step that does not exist points at a node marked "no such step".
    """
    node_ids: dict[str, str] = {}
    for index, step in enumerate(plan.steps):
        node_ids.setdefault(step.id, f"s{index}")
    lines = ["flowchart TD"]
    if plan.steps:
        lines.append(f"{INDENT}start((start)) --> {node_ids[plan.steps[0].id]}")
    lines.extend(f"{INDENT}s{index}{_node(step)}" for index, step in enumerate(plan.steps))
    missing: dict[str, str] = {}
    edges: list[str] = []
    graph = successors(plan)
    for source, node in node_ids.items():
        for target, label in graph.get(source, []):
            target_node = node_ids.get(target) or missing.setdefault(target, f"x{len(missing)}")
            arrow = "-->" if label is None else f'-->|"{escape_label(label)}"|'
            edges.append(f"{INDENT}{node} {arrow} {target_node}")
    lines.extend(
        f'{INDENT}{node}["{escape_label(target)}<br/>no such step"]'
        for target, node in missing.items()
    )
    lines.extend(edges)
    return "\n".join(lines) + "\n"


def _node(step: Step) -> str:
    """The shape and label of ``step``'s node, without its id."""
    opening, closing = step.node_shape
    label = escape_label(step.id)
    if (words := step.node_label()) is not None:
        label += f"<br/>{escape_label(words)}"
    return f'{opening}"{label}"{closing}'
