"""Reading plan documents: parse errors with positions, shape errors with the step."""

from __future__ import annotations

from pathlib import Path

import pytest

import dee
from dee.errors import PlanDataError, PlanLoadError, Problem
from dee.plans.loader import MAX_DOCUMENT_BYTES

HEAD = "id: p\nname: P\nmetadata: {createdBy: tests}\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "message", "line", "column"),
    [
        # An unclosed flow mapping in YAML.
        ("bad.yaml", HEAD + "steps:\n  - {type: end, id: done\n", "invalid YAML", 6, 1),
        # A missing comma in JSON.
        (
            "bad.json",
            '{\n  "id": "p"\n  "name": "P"\n}',
            "invalid JSON: Expecting ',' delimiter",
            3,
            3,
        ),
        # A key given twice would silently lose the first definition.
        ("dup.yaml", HEAD + "steps: []\nsteps: []\n", "invalid YAML: duplicate key 'steps'", 5, 1),
        # Aliases can expand a small file into a huge document.
        (
            "alias.yaml",
            HEAD + "x: &a [1, 2]\nsteps: *a\n",
            "invalid YAML: YAML aliases (*name) are not allowed in plans",
            5,
            8,
        ),
    ],
)
def test_unparsable_files_report_line_and_column(
    tmp_path: Path, name: str, text: str, message: str, line: int, column: int
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(PlanLoadError) as caught:
        dee.load_plan(path)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert str(caught.value).startswith(f"{path}:{line}:{column}: {message}")


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanLoadError, match="duplicate key 'id'"):
        dee.load_plan(write(tmp_path, "dup.json", '{"id": "a", "id": "b"}'))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PlanLoadError, match="cannot read the file: No such file or directory"):
        dee.load_plan(tmp_path / "missing.yaml")
    with pytest.raises(PlanLoadError, match="not UTF-8 text"):
        dee.load_plan(write(tmp_path, "latin.yaml", "name: caf\xe9".encode("latin-1")))
    with pytest.raises(PlanLoadError, match="a plan document may have 4,194,304"):
        dee.load_plan(write(tmp_path, "big.yaml", "#" * (MAX_DOCUMENT_BYTES + 1)))


@pytest.mark.parametrize(
    ("steps", "transitions", "expected"),
    [
        (
            # A step type the engine does not have.
            "[{type: sendSms, id: text}, {type: end, id: done, outcome: ok}]",
            "linear",
            [
                Problem(
                    "text",
                    "unknown-step-type",
                    "steps[0]: step type 'sendSms' does not exist; expected one of sendEmail, "
                    "sendVoice, wait, branch, end",
                    "steps[0]",
                )
            ],
        ),
        (
            # A step with no type at all.
            "[{id: mystery}]",
            "linear",
            [
                Problem(
                    "mystery",
                    "missing-step-type",
                    "steps[0]: a step needs a type, one of sendEmail, sendVoice, wait, branch, end",
                    "steps[0]",
                )
            ],
        ),
        (
            # A wait without its duration, and a misspelled field.
            "[{type: wait, id: pause, durration: {hours: 1}}]",
            "linear",
            [
                Problem(
                    "pause", "missing-field", "steps[0].duration is required", "steps[0].duration"
                ),
                Problem(
                    "pause",
                    "unknown-field",
                    "steps[0].durration is not a field here; check its spelling (camelCase)",
                    "steps[0].durration",
                ),
            ],
        ),
        (
            # Hours that are not a number.
            "[{type: wait, id: pause, duration: {hours: soon}}]",
            "linear",
            [
                Problem(
                    "pause",
                    "invalid-value",
                    "steps[0].duration.hours: Input should be a valid integer, unable to "
                    "parse string as an integer",
                    "steps[0].duration.hours",
                )
            ],
        ),
        (
            # Transitions that are neither 'linear' nor a list.
            "[{type: end, id: done, outcome: ok}]",
            "sequential",
            [
                Problem(
                    None,
                    "invalid-value",
                    "transitions must be 'linear' or a list of {from, to, condition}",
                    "transitions",
                )
            ],
        ),
        (
            # A transition without its target.
            "[{type: end, id: done, outcome: ok}]",
            "[{from: done}]",
            [
                Problem(
                    "done",
                    "missing-field",
                    "transitions[0].to is required",
                    "transitions[0].to",
                )
            ],
        ),
    ],
)
def test_shape_problems_name_the_step(
    steps: str, transitions: str, expected: list[Problem]
) -> None:
    with pytest.raises(PlanDataError) as caught:
        dee.parse_plan(f"{HEAD}steps: {steps}\ntransitions: {transitions}\n")
    assert list(caught.value.problems) == expected
    assert caught.value.plan_id == "p"


def test_a_document_must_be_a_mapping() -> None:
    with pytest.raises(PlanDataError) as caught:
        dee.parse_plan("- just\n- a list\n")
    assert caught.value.problems == (
        Problem(
            None,
            "invalid-document",
            "a plan document is a mapping with id, name, steps, transitions and metadata; got list",
        ),
    )


def test_version_and_created_at_may_be_given() -> None:
    plan = dee.parse_plan(
        HEAD.replace("{createdBy: tests}", "{createdBy: tests, createdAt: 2026-01-02T03:04:05Z}")
        + "version: 3\nsteps: [{type: end, id: done, outcome: ok}]\n"
    )
    assert plan.version == 3
    assert plan.metadata.created_at is not None and plan.metadata.created_at.year == 2026
