"""A Python builder that mirrors the spec's ``steps.*`` and ``transitions.*``.

::

    from datetime import timedelta
    from dee import execution_plan, steps, transitions

    plan = execution_plan(
        id="outbound-intro",
        name="Intro sequence",
        created_by="ana@example.com",
        steps=[
            steps.send_email(
                id="intro-email",
                template_id="tmpl_intro",
                subject="Introducing {{product}}",
                tracking={"opens": True, "clicks": True},
            ),
            steps.wait(id="wait-for-reply", duration={"days": 3, "hours": 12}),
            steps.branch(
                id="check-response",
                conditions=[
                    {"when": 'events.hasReply("intro-email")', "goto": "end-sequence"},
                    {"when": "default", "goto": "end-sequence"},
                ],
            ),
            steps.end(id="end-sequence", outcome="replied"),
        ],
        transitions=transitions.linear(),
    )

Every function checks its arguments at once and raises :class:`~dee.errors.PlanDataError`
naming the step; whole-plan rules are checked by :func:`dee.validate_plan`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_snake

from dee.errors import PlanDataError, Problem
from dee.plans.loader import data_problems
from dee.plans.model import (
    STEP_MODELS,
    STEP_TYPES,
    AutoReplyPause,
    ExecutionPlan,
    Step,
    Transition,
    Transitions,
)

__all__ = ["execution_plan", "steps", "transitions"]

_M = TypeVar("_M", bound=BaseModel)


def _build(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Report it as the document form would, naming the step (or a transition's source).
        owner = data.get("id") if model is not Transition else data.get("from")
        step_id = owner if isinstance(owner, str) else None
        problems = [
            p if p.step_id is not None else Problem(step_id, p.code, p.message, p.location)
            for p in data_problems(exc, data)
        ]
        raise PlanDataError(problems) from None


def _step(model: type[_M], **fields: Any) -> _M:
    return _build(model, {key: value for key, value in fields.items() if value is not None})


def _step_function(tag: str, model: type[Step]) -> Callable[..., Step]:
    """``steps.<tag in snake_case>``: ``model`` built from keyword arguments."""

    def build(**fields: Any) -> Step:
        return _step(model, type=tag, **fields)

    build.__name__ = build.__qualname__ = to_snake(tag)
    build.__doc__ = model.__doc__
    # What help(steps.send_email) shows: the model's fields, by their Python names.
    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if field.is_required() else None,
                annotation=field.annotation,
            )
            for name, field in model.model_fields.items()
            if name != "type"
        ],
        return_annotation=model,
    )
    return build


#: ``send_email`` -> the function that builds a SendEmailStep, for every step type.
_STEP_FUNCTIONS: Final = {
    to_snake(tag): _step_function(tag, model)
    for tag, model in zip(STEP_TYPES, STEP_MODELS, strict=True)
}


class StepBuilder:
    """``steps.send_email(...)``, ``steps.send_voice(...)``, ``steps.wait(...)``, ...

    One function per step type, made from its model: ``steps.<type in snake_case>`` takes
    the model's fields as keyword arguments (``None`` meaning "the default") and returns
    that model (a :class:`~dee.SendEmailStep` from ``send_email``, although the type
    checker only knows it is a ``Step``). Values are what the model accepts: a duration as
    a :class:`datetime.timedelta`, a mapping of days, hours, minutes and seconds, or a
    :class:`~dee.Duration`; a branch condition as a :class:`~dee.Condition`, a
    ``{"when": ..., "goto": ...}`` mapping or a ``(when, goto)`` pair.
    """

    def __getattr__(self, name: str) -> Callable[..., Step]:
        function = _STEP_FUNCTIONS.get(name)
        if function is None:
            raise AttributeError(
                f"steps has no {name!r}; the step types are {', '.join(_STEP_FUNCTIONS)}"
            )
        return function

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_STEP_FUNCTIONS})


class TransitionBuilder:
    """``transitions.linear()`` and ``transitions.explicit([...])``."""

    def linear(self) -> Literal["linear"]:
        """Each step flows to the next in order; branches follow their conditions."""
        return "linear"

    def explicit(
        self,
        edges: Iterable[Transition | Mapping[str, str] | tuple[str, str] | tuple[str, str, str]],
    ) -> tuple[Transition, ...]:
        """Edges as ``{"from": a, "to": b, "condition": label}`` mappings or tuples."""
        built: list[Transition] = []
        for edge in edges:
            if isinstance(edge, Transition):
                built.append(edge)
                continue
            if isinstance(edge, tuple):
                data: dict[str, Any] = {"from": edge[0], "to": edge[1]}
                if len(edge) > 2:
                    data["condition"] = edge[2]
            else:
                data = dict(edge)
            built.append(_build(Transition, data))
        return tuple(built)


steps: Final = StepBuilder()
transitions: Final = TransitionBuilder()


def execution_plan(
    *,
    id: str,
    name: str,
    steps: Iterable[Step],
    created_by: str | None = None,
    transitions: Transitions = "linear",
    description: str | None = None,
    exit_on: Iterable[str] | None = None,
    pause_on_auto_reply: Mapping[str, Any] | AutoReplyPause | None = None,
) -> ExecutionPlan:
    """A plan ready for :func:`dee.validate_plan` and :meth:`dee.PlanRegistry.create`.

    ``created_by`` may be left out: the registry then names whoever creates the version.
    ``exit_on`` lists the events that end a run wherever it is (:mod:`dee.plans.exits`).
    """
    metadata: dict[str, Any] = {}
    if created_by is not None:
        metadata["created_by"] = created_by
    if description is not None:
        metadata["description"] = description
    document: dict[str, Any] = {
        "id": id,
        "name": name,
        "steps": tuple(steps),
        "transitions": transitions,
        "metadata": metadata,
    }
    if exit_on is not None:
        document["exit_on"] = tuple(exit_on)
    if pause_on_auto_reply is not None:
        document["pause_on_auto_reply"] = pause_on_auto_reply
    return _build(ExecutionPlan, document)
