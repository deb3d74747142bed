"""The execution plan model: steps, transitions, timing and metadata.

Models describe the *shape* of a plan and are immutable (``frozen=True``) with unknown
fields rejected (``extra="forbid"``). Whether a plan makes sense as a whole (every step
reachable, every branch with a ``default``, every template present, ...) is decided by
:func:`dee.validate_plan`, so that all of a plan's problems can be reported in one pass.

Python names are snake_case; the document form (JSON and YAML) uses the spec's camelCase
names, and a model dumps itself in that form with :meth:`ExecutionPlan.to_document`.

A step type is declared once, here: its model joins the :data:`Step` union (and its tag
:data:`StepType`), and its methods say what the rest of DEE needs to know about it (how
it reads in a line and in a graph, the content it uses, the durations to check, where a run
goes after it). The loader, the builder, validation, the graph and the CLI derive from
:data:`STEP_MODELS`; the workflow has one method per step type.
"""

from __future__ import annotations

import abc
import datetime
import json
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple, TypeAlias, get_args

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from dee.plans.decoding import TolerantModel

__all__ = [
    "MAX_CALL_SECONDS",
    "MAX_WAIT_SECONDS",
    "STEP_MODELS",
    "STEP_TYPES",
    "AutoReplyPause",
    "BoundedDuration",
    "BranchStep",
    "Condition",
    "ContentRef",
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

#: The longest wait: a year.
MAX_WAIT_SECONDS: Final = 365 * 86_400
#: Twilio's longest call (``time_limit``) is four hours.
MAX_CALL_SECONDS: Final = 4 * 3_600


class _Model(TolerantModel):
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


class ContentRef(NamedTuple):
    """Content a step uses: a ``template`` (``templates/<id>.html``, and optionally
    ``.txt``) or a ``script`` (``scripts/<id>.txt``), and what the step uses it as
    (``voicemail message``), which names its problems (``missing-voicemail-message``)."""

    kind: Literal["template", "script"]
    id: str
    role: str


class BoundedDuration(NamedTuple):
    """A duration field of a step, by its document name, and the longest it may be."""

    name: str
    duration: Duration
    limit_seconds: int


def _single_line(text: str) -> str:
    return " ".join(text.split())


class _StepModel(_Model, abc.ABC):
    """What every step type says about itself. Subclasses add the fields, ``type`` first."""

    #: The brackets around the step's node in a Mermaid flowchart (a rectangle here).
    node_shape: ClassVar[tuple[str, str]] = ("[", "]")
    #: Whether the run goes on from the step to one next step: the next in the list in a
    #: linear plan, the step's one transition otherwise. ``False`` for steps that choose
    #: their own way (:meth:`routes`) or stop the run.
    follows_transitions: ClassVar[bool] = True

    @abc.abstractmethod
    def describe(self) -> str:
        """What the step does, in one line (``dee plans show``)."""

    def node_label(self) -> str | None:
        """A few words under the step's id in a graph (``email tmpl_intro``), if any."""
        return None

    def routes(self) -> tuple[tuple[str, str], ...]:
        """Where a step that does not follow transitions goes: ``(step id, condition)``
        pairs, tried in order. Empty for the others, and for a step that stops the run."""
        return ()

    def content_refs(self) -> tuple[ContentRef, ...]:
        """The templates and scripts the step uses."""
        return ()

    def inline_templates(self) -> tuple[tuple[str, str], ...]:
        """Templates written in the step itself, as ``(what, source)`` (an email subject)."""
        return ()

    def durations(self) -> tuple[BoundedDuration, ...]:
        """The step's durations, to be checked positive and within their limit."""
        return ()


class SendEmailStep(_StepModel):
    """Send the contact an email rendered from template ``template_id``."""

    type: Literal["sendEmail"] = "sendEmail"
    id: StepId
    template_id: ContentId
    subject: Annotated[str, Field(min_length=1, max_length=998, pattern=SINGLE_LINE_PATTERN)]
    reply_to: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)] | None = None
    tracking: Tracking = Tracking()

    def describe(self) -> str:
        subject = _single_line(json.dumps(self.subject, ensure_ascii=False))
        parts = [f"template {self.template_id}", f"subject {subject}"]
        if self.reply_to is not None:
            parts.append(f"reply-to {self.reply_to}")
        tracked = [name for name in ("opens", "clicks") if getattr(self.tracking, name)]
        if tracked:
            parts.append(f"tracking {'+'.join(tracked)}")
        return ", ".join(parts)

    def node_label(self) -> str:
        return f"email {self.template_id}"

    def content_refs(self) -> tuple[ContentRef, ...]:
        return (ContentRef("template", self.template_id, "template"),)

    def inline_templates(self) -> tuple[tuple[str, str], ...]:
        return (("subject", self.subject),)


class SendVoiceStep(_StepModel):
    """Call the contact and play script ``script_id``."""

    type: Literal["sendVoice"] = "sendVoice"
    id: StepId
    script_id: ContentId
    caller_id: Annotated[str, Field(pattern=PHONE_PATTERN)]
    max_duration: Duration | None = None
    voicemail: Voicemail = Voicemail()

    def describe(self) -> str:
        parts = [f"script {self.script_id}", f"caller {self.caller_id}"]
        if self.max_duration is not None:
            parts.append(f"max {self.max_duration}")
        if self.voicemail.detect:
            parts.append("voicemail detection")
        if self.voicemail.message_id is not None:
            parts.append(f"voicemail message {self.voicemail.message_id}")
        return ", ".join(parts)

    def node_label(self) -> str:
        return f"voice {self.script_id}"

    def content_refs(self) -> tuple[ContentRef, ...]:
        refs = [ContentRef("script", self.script_id, "script")]
        if self.voicemail.message_id is not None:
            refs.append(ContentRef("script", self.voicemail.message_id, "voicemail message"))
        return tuple(refs)

    def durations(self) -> tuple[BoundedDuration, ...]:
        if self.max_duration is None:
            return ()
        return (BoundedDuration("maxDuration", self.max_duration, MAX_CALL_SECONDS),)


class WaitStep(_StepModel):
    """Pause the run for ``duration`` (a durable timer), or until ``until`` holds when the
    wait has a condition (an expression like a branch's, see :mod:`dee.plans.conditions`)."""

    node_shape: ClassVar[tuple[str, str]] = ("(", ")")

    type: Literal["wait"] = "wait"
    id: StepId
    duration: Duration
    until: Annotated[str, Field(min_length=1)] | None = None

    def describe(self) -> str:
        if self.until is None:
            return str(self.duration)
        return f"{self.duration}, until {_single_line(self.until)}"

    def node_label(self) -> str:
        return f"wait {self.duration}" + ("" if self.until is None else " or until")

    def durations(self) -> tuple[BoundedDuration, ...]:
        return (BoundedDuration("duration", self.duration, MAX_WAIT_SECONDS),)


class Condition(_Model):
    """One rule of a branch: when ``when`` holds, go to ``goto``.

    ``when`` is an expression (see :mod:`dee.plans.conditions`) or the word ``default``.
    """

    when: Annotated[str, Field(min_length=1)]
    goto: StepId

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        # ("default", "done") in Python; documents only have mappings (YAML and JSON
        # lists are not tuples).
        if isinstance(value, tuple) and len(value) == 2:
            return {"when": value[0], "goto": value[1]}
        return value

    @property
    def is_default(self) -> bool:
        return self.when.strip() == "default"


class BranchStep(_StepModel):
    """Route to the first condition that holds; ``default`` must come last."""

    node_shape: ClassVar[tuple[str, str]] = ("{", "}")
    follows_transitions: ClassVar[bool] = False

    type: Literal["branch"] = "branch"
    id: StepId
    conditions: Annotated[tuple[Condition, ...], Field(min_length=1)]

    def describe(self) -> str:
        return "; ".join(f"{_single_line(c.when)} -> {c.goto}" for c in self.conditions)

    def routes(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.goto, c.when) for c in self.conditions)


class EndStep(_StepModel):
    """Complete the run with ``outcome``."""

    node_shape: ClassVar[tuple[str, str]] = ("([", "])")
    follows_transitions: ClassVar[bool] = False

    type: Literal["end"] = "end"
    id: StepId
    outcome: Annotated[str, Field(pattern=OUTCOME_PATTERN)]

    def describe(self) -> str:
        return f"outcome {self.outcome}"

    def node_label(self) -> str:
        return f"outcome {self.outcome}"


#: A step of a plan: one of the step models, told apart by ``type``. A new step type's model
#: is added here; everything that lists step types at run time reads :data:`STEP_MODELS`.
Step: TypeAlias = Annotated[
    SendEmailStep | SendVoiceStep | WaitStep | BranchStep | EndStep,
    Field(discriminator="type"),
]
#: The ``type`` tags of :data:`Step`'s models, for type hints. A type checker cannot derive
#: a Literal, so this one is written out; tests/plans/test_model.py checks it against STEP_TYPES.
StepType: TypeAlias = Literal["sendEmail", "sendVoice", "wait", "branch", "end"]

#: The step models, in the order of :data:`Step`.
STEP_MODELS: Final[tuple[type[Step], ...]] = get_args(get_args(Step)[0])
#: Their ``type`` tags, in the same order: ``("sendEmail", "sendVoice", ...)``.
STEP_TYPES: Final[tuple[str, ...]] = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in STEP_MODELS
)


class Transition(_Model):
    """An edge of the plan graph. ``condition`` labels an edge out of a branch."""

    from_: Annotated[StepId, Field(alias="from")]
    to: StepId
    condition: str | None = None


Transitions: TypeAlias = Literal["linear"] | tuple[Transition, ...]


class PlanMetadata(_Model):
    #: Who created the plan; when a document leaves it out, the creator's name: the API
    #: key's on the API, ``--created-by`` or the OS user on the CLI (the registry fills it).
    created_by: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: str | None = None
    #: Assigned by the registry when the version is created.
    created_at: datetime.datetime | None = None


class AutoReplyPause(_Model):
    """``pauseOnAutoReply``: an out-of-office reply that names a return date holds the run's
    next send until the day after that date, and at most ``max_days`` after the reply."""

    max_days: Annotated[int, Field(ge=1, le=365)] = 14


class ExecutionPlan(_Model):
    """A whole plan. ``version`` is ``None`` until the registry assigns one."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    version: Annotated[int, Field(ge=1)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)]
    steps: tuple[Step, ...]
    transitions: Transitions = "linear"
    #: Events that end a run wherever it is (:mod:`dee.plans.exits`); ``None``: the default,
    #: ``[unsubscribe, bounce, complaint]``.
    exit_on: tuple[Annotated[str, Field(max_length=50)], ...] | None = None
    pause_on_auto_reply: AutoReplyPause | None = None
    metadata: PlanMetadata = PlanMetadata()

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
