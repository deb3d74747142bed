"""Reading plans from JSON and YAML documents.

The document form uses the spec's camelCase names and a ``type`` on every step::

    id: outbound-intro
    name: Intro sequence
    metadata: {createdBy: ana@example.com}
    steps:
      - {type: sendEmail, id: intro-email, templateId: tmpl_intro, subject: "Hi {{ product }}"}
      - {type: wait, id: wait-for-reply, duration: {days: 3, hours: 12}}
      - {type: end, id: done, outcome: finished}
    transitions: linear        # or a list of {from, to, condition}

``version`` and ``metadata.createdAt`` are assigned when the plan is created and may be left
out. A file that cannot be read or parsed raises :class:`~dee.errors.PlanLoadError` with the
line and column; a document of the wrong shape raises :class:`~dee.errors.PlanDataError`
listing every problem with the step it is in.

YAML anchors and aliases are refused (they let a small file expand into a huge one), and so
are duplicate keys in JSON and YAML, which would silently drop half of a definition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from dee.errors import PlanDataError, PlanLoadError, Problem
from dee.plans.model import (
    EMAIL_PATTERN,
    ID_PATTERN,
    OUTCOME_PATTERN,
    PHONE_PATTERN,
    SINGLE_LINE_PATTERN,
    STEP_TYPES,
    ExecutionPlan,
)

__all__ = ["MAX_DOCUMENT_BYTES", "load_plan", "parse_plan", "plan_from_document"]

MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024

# What each of the model's patterns means, said the way a person would fix it.
_PATTERN_HINTS: Final = {
    ID_PATTERN: "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 100",
    PHONE_PATTERN: "an E.164 phone number such as '+15551234567'",
    EMAIL_PATTERN: "one plain email address such as 'sales@example.com'",
    OUTCOME_PATTERN: "a lowercase slug such as 'replied' (a-z, 0-9, '_', '-')",
    SINGLE_LINE_PATTERN: "a single line (no line breaks)",
}


def load_plan(path: str | Path) -> ExecutionPlan:
    """Read a plan from a ``.json``, ``.yaml`` or ``.yml`` file."""
    file = Path(path)
    try:
        # What is read is capped, not what stat() says: /dev/zero, a FIFO or standard input
        # report no size and never end.
        with file.open("rb") as stream:
            data = stream.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise PlanLoadError(
                f"the file has more than {MAX_DOCUMENT_BYTES:,} bytes; a plan document may "
                f"have {MAX_DOCUMENT_BYTES:,}",
                path=str(file),
            )
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanLoadError(f"not UTF-8 text: {exc.reason}", path=str(file)) from exc
    except OSError as exc:
        raise PlanLoadError(f"cannot read the file: {exc.strerror}", path=str(file)) from exc
    kind = "json" if file.suffix.lower() == ".json" else "yaml"
    return parse_plan(text, kind=kind, path=str(file))


def parse_plan(text: str, *, kind: str = "yaml", path: str | None = None) -> ExecutionPlan:
    """Parse a plan document. ``kind`` is ``"json"`` or ``"yaml"`` (which also reads JSON)."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PlanLoadError(
            f"the document has {len(text):,} characters; the most is {MAX_DOCUMENT_BYTES:,}",
            path=path,
        )
    data = _parse_json(text, path) if kind == "json" else _parse_yaml(text, path)
    return plan_from_document(data)


def plan_from_document(data: Any) -> ExecutionPlan:
    """Build a plan from an already parsed document (a dict), or raise PlanDataError."""
    if not isinstance(data, Mapping):
        raise PlanDataError(
            [
                Problem(
                    None,
                    "invalid-document",
                    f"a plan document is a mapping with id, name, steps, transitions and "
                    f"metadata; got {type(data).__name__}",
                )
            ]
        )
    try:
        return ExecutionPlan.model_validate(data)
    except ValidationError as exc:
        plan_id = data.get("id") if isinstance(data.get("id"), str) else None
        raise PlanDataError(data_problems(exc, data), plan_id=plan_id) from None


def data_problems(error: ValidationError, document: Any) -> list[Problem]:
    """Turn pydantic's errors into problems that name the step and say what was expected."""
    problems: list[Problem] = []
    seen: set[tuple[str | None, str, str]] = set()
    for item in error.errors(include_url=False):
        loc = _clean_location(tuple(_camel(part) for part in item["loc"]), document)
        if loc is None:
            continue
        step_id = _step_id(loc, document)
        code, message = _explain(item, loc)
        key = (step_id, code, message)
        if key in seen:
            continue
        seen.add(key)
        problems.append(Problem(step_id, code, message, location=_format_location(loc)))
    return problems


def _camel(part: Any) -> Any:
    """Python names (``caller_id``) as the document spells them (``callerId``)."""
    if isinstance(part, str) and "_" in part.strip("_") and part not in STEP_TYPES:
        head, *rest = part.split("_")
        return head + "".join(word[:1].upper() + word[1:] for word in rest)
    return part


def _clean_location(loc: tuple[Any, ...], document: Any) -> tuple[Any, ...] | None:
    """Drop pydantic's union-member segments; ``None`` for errors of the branch not taken."""
    if len(loc) >= 3 and loc[0] == "steps" and isinstance(loc[1], int) and loc[2] in STEP_TYPES:
        return loc[:2] + loc[3:]
    if len(loc) >= 2 and loc[0] == "transitions" and isinstance(loc[1], str):
        raw = document.get("transitions") if isinstance(document, Mapping) else None
        if loc[1].startswith("literal"):
            # A list was given: the error about "linear" is noise.
            return None if isinstance(raw, list) else ("transitions",)
        return None if isinstance(raw, str) else ("transitions", *loc[2:])
    return loc


def _step_id(loc: Sequence[Any], document: Any) -> str | None:
    if len(loc) < 2 or loc[0] != "steps" or not isinstance(loc[1], int):
        if len(loc) >= 2 and loc[0] == "transitions" and isinstance(loc[1], int):
            transitions = document.get("transitions")
            if isinstance(transitions, list) and loc[1] < len(transitions):
                source = transitions[loc[1]]
                if isinstance(source, Mapping) and isinstance(source.get("from"), str):
                    return str(source["from"])
        return None
    steps = document.get("steps") if isinstance(document, Mapping) else None
    if isinstance(steps, list) and loc[1] < len(steps):
        step = steps[loc[1]]
        if isinstance(step, Mapping) and isinstance(step.get("id"), str):
            return str(step["id"])
    return None


def _format_location(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _explain(item: Any, loc: Sequence[Any]) -> tuple[str, str]:
    kind: str = item["type"]
    where = _format_location(loc) or "the document"
    if kind == "union_tag_invalid":
        tag = item.get("ctx", {}).get("tag")
        return (
            "unknown-step-type",
            f"{where}: step type {tag!r} does not exist; expected one of {', '.join(STEP_TYPES)}",
        )
    if kind == "union_tag_not_found":
        return (
            "missing-step-type",
            f"{where}: a step needs a type, one of {', '.join(STEP_TYPES)}",
        )
    if kind == "missing":
        return "missing-field", f"{where} is required"
    if kind == "extra_forbidden":
        return "unknown-field", f"{where} is not a field here; check its spelling (camelCase)"
    if kind == "string_pattern_mismatch":
        pattern = str(item["ctx"]["pattern"])
        hint = _PATTERN_HINTS.get(pattern, "a value matching " + pattern)
        return "invalid-value", f"{where} is {item['input']!r}; expected {hint}"
    if loc == ("transitions",):
        return (
            "invalid-value",
            "transitions must be 'linear' or a list of {from, to, condition}",
        )
    return "invalid-value", f"{where}: {item['msg']}"


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in plans", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node: Any) -> Any:
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:
            # Python refuses to read integers of more than 4,300 digits (CVE-2020-10735).
            raise yaml.constructor.ConstructorError(
                None, None, "a number of more than 4,300 digits", node.start_mark
            ) from exc

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _parse_yaml(text: str, path: str | None) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        if mark is None:
            raise PlanLoadError(f"invalid YAML: {reason}", path=path) from exc
        raise PlanLoadError(
            f"invalid YAML: {reason}", path=path, line=mark.line + 1, column=mark.column + 1
        ) from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise PlanLoadError(f"invalid YAML: {exc}", path=path) from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_json(text: str, path: str | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise PlanLoadError(
            f"invalid JSON: {exc.msg}", path=path, line=exc.lineno, column=exc.colno
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise PlanLoadError(f"invalid JSON: {exc}", path=path) from exc
