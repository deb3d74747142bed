"""The execution plan model: steps, transitions, timing and metadata.

Models describe the *shape* of a plan and are immutable (``frozen=True``) with unknown
fields rejected (``extra="forbid"``). Whether a plan makes sense as a whole (every step
reachable, every branch with a ``default``, every template present, ...) is decided by
:func:`dee.validate_plan`, so that all of a plan's problems can be reported in one pass.

Python names are snake_case; the document form (JSON and YAML) uses the spec's camelCase
names, and a model dumps itself in that form with :meth:`ExecutionPlan.to_document`.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "BranchStep",
    "Condition",
    "Duration",
    "EndStep",
    "ExecutionPlan",
    "PlanMetadata",
    "SendEmailStep",
    "SendVoiceStep",
    "Step",
    "StepType",
    "Tracking",
    "Transition",
    "Transitions",
    "Voicemail",
    "WaitStep",
]

#: Ids of plans, steps, templates and scripts: safe in file names, URLs, Temporal ids and
#: Mermaid graphs (no slashes, spaces, colons or leading dots).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
#: E.164 phone numbers, as Twilio expects them.
PHONE_PATTERN = r"^\+[1-9][0-9]{1,14}$"
#: One address, no display name and nothing that could start another header.
EMAIL_PATTERN = r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+$"
#: Outcomes end up in search attributes and metrics: keep them slugs.
OUTCOME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: A header line may not contain a line break (RFC 5322 header injection).
SINGLE_LINE_PATTERN = r"^[^\r\n]*$"

StepId = Annotated[str, Field(pattern=ID_PATTERN)]
ContentId = Annotated[str, Field(pattern=ID_PATTERN)]

StepType: TypeAlias = Literal["sendEmail", "sendVoice", "wait", "branch", "end"]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class Duration(_Model):
    """A length of time. Zero or negative durations are rejected by validation."""

    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    @model_validator(mode="before")
    @classmethod
    def _from_timedelta(cls, value: Any) -> Any:
        if isinstance(value, datetime.timedelta):
            whole = int(value.total_seconds())
            days, rest = divmod(whole, 86_400)
            hours, rest = divmod(rest, 3_600)
            minutes, seconds = divmod(rest, 60)
            return {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
        return value

    @property
    def total_seconds(self) -> int:
        return ((self.days * 24 + self.hours) * 60 + self.minutes) * 60 + self.seconds

    def to_timedelta(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.total_seconds)

    def __str__(self) -> str:
        total = self.total_seconds
        sign, total = ("-", -total) if total < 0 else ("", total)
        days, rest = divmod(total, 86_400)
        hours, rest = divmod(rest, 3_600)
        minutes, seconds = divmod(rest, 60)
        parts = [
            f"{value}{unit}"
            for value, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
            if value
        ]
        return sign + (" ".join(parts) or "0s")


class Tracking(_Model):
    """Which engagement an email tracks: a pixel for opens, rewritten links for clicks."""

    opens: bool = False
    clicks: bool = False


class Voicemail(_Model):
    """What a call does when a machine answers."""

    detect: bool = False
    message_id: ContentId | None = None


class SendEmailStep(_Model):
    """Send the contact an email rendered from template ``template_id``."""

    type: Literal["sendEmail"] = "sendEmail"
    id: StepId
    template_id: ContentId
    subject: Annotated[str, Field(min_length=1, max_length=998, pattern=SINGLE_LINE_PATTERN)]
    reply_to: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)] | None = None
    tracking: Tracking = Tracking()


class SendVoiceStep(_Model):
    """Call the contact and play script ``script_id``."""

    type: Literal["sendVoice"] = "sendVoice"
    id: StepId
    script_id: ContentId
    caller_id: Annotated[str, Field(pattern=PHONE_PATTERN)]
    max_duration: Duration | None = None
    voicemail: Voicemail = Voicemail()


class WaitStep(_Model):
    """Pause the run for ``duration`` (a durable timer)."""

    type: Literal["wait"] = "wait"
    id: StepId
    duration: Duration


class Condition(_Model):
    """One rule of a branch: when ``when`` holds, go to ``goto``.

    ``when`` is an expression (see :mod:`dee.plans.conditions`) or the word ``default``.
    """

    when: Annotated[str, Field(min_length=1)]
    goto: StepId

    @property
    def is_default(self) -> bool:
        return self.when.strip() == "default"


class BranchStep(_Model):
    """Route to the first condition that holds; ``default`` must come last."""

    type: Literal["branch"] = "branch"
    id: StepId
    conditions: Annotated[tuple[Condition, ...], Field(min_length=1)]


class EndStep(_Model):
    """Complete the run with ``outcome``."""

    type: Literal["end"] = "end"
    id: StepId
    outcome: Annotated[str, Field(pattern=OUTCOME_PATTERN)]


Step: TypeAlias = Annotated[
    SendEmailStep | SendVoiceStep | WaitStep | BranchStep | EndStep,
    Field(discriminator="type"),
]


class Transition(_Model):
    """An edge of the plan graph. ``condition`` labels an edge out of a branch."""

    from_: Annotated[StepId, Field(alias="from")]
    to: StepId
    condition: str | None = None


Transitions: TypeAlias = Literal["linear"] | tuple[Transition, ...]


class PlanMetadata(_Model):
    created_by: Annotated[str, Field(min_length=1, max_length=200)]
    description: str | None = None
    #: Assigned by the registry when the version is created.
    created_at: datetime.datetime | None = None


class ExecutionPlan(_Model):
    """A whole plan. ``version`` is ``None`` until the registry assigns one."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    version: Annotated[int, Field(ge=1)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)]
    steps: tuple[Step, ...]
    transitions: Transitions = "linear"
    metadata: PlanMetadata

    @property
    def first_step(self) -> Step | None:
        """The step where every run starts."""
        return self.steps[0] if self.steps else None

    def step(self, step_id: str) -> Step:
        """The step named ``step_id``; ``KeyError`` when there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def to_document(self) -> dict[str, Any]:
        """The plan as a JSON-ready document in the spec's camelCase form."""
        return self.model_dump(mode="json", exclude_none=True)
