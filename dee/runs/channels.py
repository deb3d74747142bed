"""What the workflow asks a channel to do, and what the channel answers.

Each channel is one activity taking one ``...Input`` model and returning one ``...Result``.
The activity's interface is declared here, as a :class:`typing.Protocol` whose method
carries the activity's name (``@activity.defn``): the workflow calls the activity through
that method (by reference, typed), and the implementation in ``activities/`` satisfies the
protocol. So the workflow imports these models only, never an SMTP or Twilio client, and
the worker's sandbox passes through DEE's models and pydantic, nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Literal, Protocol

from pydantic import ConfigDict, JsonValue
from temporalio import activity
from temporalio.common import RetryPolicy

from dee.plans.content import EmailTemplate
from dee.plans.decoding import TolerantModel
from dee.plans.model import SendEmailStep, SendVoiceStep
from dee.runs.model import Contact
from dee.runs.windows import WindowCheck

#: Sends retry with exponential backoff for about 20 minutes in all, then fail the run.
SEND_RETRY_POLICY: Final = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=15,
)
SEND_TIMEOUT: Final = timedelta(minutes=2)
#: Sends heartbeat every 2 s (activities._attempt): a lost attempt is retried this soon.
SEND_HEARTBEAT_TIMEOUT: Final = timedelta(seconds=10)

__all__ = [
    "SEND_HEARTBEAT_TIMEOUT",
    "SEND_RETRY_POLICY",
    "SEND_TIMEOUT",
    "CallOutcomeInput",
    "CallOutcomeResult",
    "EmailChannel",
    "PlaceCallInput",
    "PlaceCallResult",
    "SendEmailInput",
    "SendEmailResult",
    "VoiceChannel",
]


class _Message(TolerantModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SendEmailInput(_Message):
    """One send of one email step to one contact."""

    #: DEE's run id (the workflow id); goes into tracking links and ``X-DEE-Run``.
    run_id: str
    #: The run execution (see :attr:`dee.runs.model.RunEvent.execution`); carried in
    #: every token and ledger row this send makes. ``None`` from older workflows.
    execution: str | None = None
    plan_id: str
    plan_version: int
    step: SendEmailStep
    #: 1 the first time the run enters the step; loops make 2, 3, ...
    visit: int
    template: EmailTemplate
    contact: Contact
    variables: dict[str, JsonValue] = {}
    #: ``From``; ``DEE_FROM_ADDRESS`` when ``None``.
    sender: str | None = None
    #: The send window the attempt checks first (:mod:`dee.runs.windows`); ``None``: none.
    window: WindowCheck | None = None


class SendEmailResult(_Message):
    #: The ``Message-ID`` header, with its angle brackets.
    message_id: str
    #: ``suppressed``: the recipient is on the suppression list, nothing was sent.
    status: Literal["sent", "already-sent", "suppressed"]
    #: Only the domain: results land in workflow histories, addresses should not.
    recipient_domain: str


class PlaceCallInput(_Message):
    """One call of one voice step to one contact."""

    run_id: str
    #: The run execution (see :attr:`dee.runs.model.RunEvent.execution`); carried in
    #: every token and ledger row this send makes. ``None`` from older workflows.
    execution: str | None = None
    plan_id: str
    plan_version: int
    step: SendVoiceStep
    #: Which time the run enters this step (1, 2, ...): one call per visit.
    visit: int
    #: The script's template source (``scripts/<step.script_id>.txt``).
    script: str
    #: The voicemail message's template source, when the step names one.
    voicemail_message: str | None = None
    contact: Contact
    variables: dict[str, JsonValue] = {}
    #: The call window the attempt checks first (:mod:`dee.runs.windows`); ``None``: none.
    window: WindowCheck | None = None


class PlaceCallResult(_Message):
    #: Twilio's SID of the call; ``-`` when none was placed (``suppressed``).
    call_sid: str
    #: ``already-placed`` when an earlier attempt had placed this call; ``suppressed``: the
    #: number is on the suppression list (the do-not-call list), nobody was called.
    status: Literal["placed", "already-placed", "suppressed"]


class CallOutcomeInput(_Message):
    """Ask Twilio how call ``call_sid`` (of step ``step_id``) went."""

    run_id: str
    step_id: str
    call_sid: str


class CallOutcomeResult(_Message):
    #: Twilio's ``status`` and ``answered_by`` for the call, as fetched.
    status: str
    answered_by: str | None = None
    #: The call's outcome (:data:`dee.plans.call_outcomes.CALL_OUTCOMES`), also for a call
    #: that is not over (see ``activities.voice``).
    outcome: str


class EmailChannel(Protocol):
    """The email activity (``activities.email.EmailActivities``)."""

    @activity.defn(name="send_email")
    async def send_email(self, input: SendEmailInput) -> SendEmailResult:
        """Send ``input.step``'s email to ``input.contact`` unless an attempt already did."""
        ...


class VoiceChannel(Protocol):
    """The voice activity (``activities.voice.VoiceActivities``)."""

    @activity.defn(name="place_call")
    async def place_call(self, input: PlaceCallInput) -> PlaceCallResult:
        """Call ``input.contact`` for ``input.step`` unless an attempt already did."""
        ...

    @activity.defn(name="call_outcome")
    async def call_outcome(self, input: CallOutcomeInput) -> CallOutcomeResult:
        """How call ``input.call_sid`` went, as Twilio has it now."""
        ...
