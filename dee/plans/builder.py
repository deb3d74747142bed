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

import datetime
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from dee.errors import PlanDataError, Problem
from dee.plans.loader import data_problems
from dee.plans.model import (
    BranchStep,
    Condition,
    Duration,
    EndStep,
    ExecutionPlan,
    SendEmailStep,
    SendVoiceStep,
    Step,
    Tracking,
    Transition,
    Transitions,
    Voicemail,
    WaitStep,
)

__all__ = ["execution_plan", "steps", "transitions"]

DurationLike = Duration | datetime.timedelta | Mapping[str, int]
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


class StepBuilder:
    """``steps.send_email(...)``, ``steps.send_voice(...)``, ``steps.wait(...)``, ..."""

    def send_email(
        self,
        *,
        id: str,
        template_id: str,
        subject: str,
        reply_to: str | None = None,
        tracking: Tracking | Mapping[str, bool] | None = None,
    ) -> SendEmailStep:
        """Send the contact the email made from ``templates/<template_id>.html``."""
        return _step(
            SendEmailStep,
            type="sendEmail",
            id=id,
            template_id=template_id,
            subject=subject,
            reply_to=reply_to,
            tracking=tracking,
        )

    def send_voice(
        self,
        *,
        id: str,
        script_id: str,
        caller_id: str,
        max_duration: DurationLike | None = None,
        voicemail: Voicemail | Mapping[str, Any] | None = None,
    ) -> SendVoiceStep:
        """Call the contact from ``caller_id`` and read ``scripts/<script_id>.txt``."""
        return _step(
            SendVoiceStep,
            type="sendVoice",
            id=id,
            script_id=script_id,
            caller_id=caller_id,
            max_duration=max_duration,
            voicemail=voicemail,
        )

    def wait(self, *, id: str, duration: DurationLike) -> WaitStep:
        """Pause the run for ``duration``: a mapping of days, hours, minutes and seconds,
        a :class:`datetime.timedelta` or a :class:`Duration`."""
        return _step(WaitStep, type="wait", id=id, duration=duration)

    def branch(
        self,
        *,
        id: str,
        conditions: Iterable[Condition | Mapping[str, str] | tuple[str, str]],
    ) -> BranchStep:
        """Go to the ``goto`` of the first condition whose ``when`` holds."""
        rules = [
            {"when": rule[0], "goto": rule[1]} if isinstance(rule, tuple) else rule
            for rule in conditions
        ]
        return _step(BranchStep, type="branch", id=id, conditions=rules)

    def end(self, *, id: str, outcome: str) -> EndStep:
        """Complete the run with ``outcome``."""
        return _step(EndStep, type="end", id=id, outcome=outcome)


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
    created_by: str,
    transitions: Transitions = "linear",
    description: str | None = None,
) -> ExecutionPlan:
    """A plan ready for :func:`dee.validate_plan` and :meth:`dee.PlanRegistry.create`."""
    metadata: dict[str, Any] = {"created_by": created_by}
    if description is not None:
        metadata["description"] = description
    return _build(
        ExecutionPlan,
        {
            "id": id,
            "name": name,
            "steps": tuple(steps),
            "transitions": transitions,
            "metadata": metadata,
        },
    )
