"""How the interpreter (:mod:`workflows._interpreter`) sends: one channel activity a send,
with the send options every channel shares (:mod:`dee.runs.channels`).

Engine 3 gives each send its window (:mod:`dee.runs.windows`): the activity decides from
the server's clock whether the window is open and, when it is not, fails with
``OutsideWindow`` and the opening time. The send is then held on a durable timer until
then (summarised ``send window of <step> opens <local time> <zone>``) and tried again; an
event that ends the run (an unsubscribe) ends it during the hold at once.

Deterministic like the interpreter, and passed through Temporal's sandbox with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any, Final, NoReturn, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from dee.plans.decoding import DECODING
    from dee.plans.model import SendEmailStep, SendVoiceStep, Step
    from dee.runs.channels import (
        SEND_HEARTBEAT_TIMEOUT,
        SEND_RETRY_POLICY,
        SEND_TIMEOUT,
        CallOutcomeInput,
        CallOutcomeResult,
        EmailChannel,
        PlaceCallInput,
        PlaceCallResult,
        SendEmailInput,
        VoiceChannel,
    )
    from dee.runs.model import Hold, RunFailure, RunInput
    from dee.runs.windows import OUTSIDE_WINDOW, WindowCheck, WindowClosed, window_check

__all__ = ["MAX_HOLDS", "SendFailed", "SendInterrupted", "Sends"]

#: How often one send may be held for its window before the run fails: each hold ends when
#: the window opens, so only retries that keep failing until it closes again add more.
MAX_HOLDS: Final = 50

_I = TypeVar("_I")
_R = TypeVar("_R")


class SendFailed(Exception):
    """A send failed for good (its retries ran out, or it was refused for good): the run
    ends with outcome ``failed`` and this failure."""

    def __init__(self, failure: RunFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class SendInterrupted(Exception):
    """An event ended the run while a send was held for its window (nothing was sent)."""

    def __init__(self, step_id: str) -> None:
        super().__init__(step_id)
        self.step_id = step_id


class Sends:
    """The sends of one run execution.

    ``show_step`` makes a step the run's searchable current step; engine 1 called it at
    every send, later engines only where a run waits (and where a send is held).
    ``interrupted`` says whether an event has ended the run, to stop a hold; ``resume_on``
    the local date an out-of-office reply holds sends until (``pauseOnAutoReply``).
    """

    def __init__(
        self,
        input: RunInput,
        execution: str,
        *,
        engine: int,
        show_step: Callable[[str], None],
        interrupted: Callable[[], bool],
        resume_on: Callable[[], date | None] = lambda: None,
    ) -> None:
        self._input = input
        self._execution = execution
        self._engine = engine
        self._show_step = show_step
        self._interrupted = interrupted
        self._resume_on = resume_on
        #: The send held until its window opens, for the run's state.
        self.holding: Hold | None = None

    def _window(self, step: SendEmailStep | SendVoiceStep) -> WindowCheck | None:
        # Older engines never check windows: their runs keep sending as they did.
        if self._engine < 3:
            return None
        resume_on = self._resume_on()
        if resume_on is not None and resume_on <= workflow.now().date() - timedelta(days=1):
            resume_on = None  # long past in every zone: nothing to hold for
        return window_check(self._input.plan, step, not_before=resume_on)

    async def email(self, step: SendEmailStep, *, visit: int) -> str:
        """Send the step's email; the step's result (``sent <message id>``)."""
        input = self._input
        assert input.plan.version is not None
        message = SendEmailInput(
            run_id=workflow.info().workflow_id,
            execution=self._execution,
            plan_id=input.plan.id,
            plan_version=input.plan.version,
            step=step,
            visit=visit,
            template=input.content.templates[step.template_id],
            contact=input.contact,
            variables=input.variables,
            sender=input.sender,
            window=self._window(step),
        )
        result = await self._send(step, EmailChannel.send_email, message, f"email {step.id}")
        return f"{result.status} {result.message_id}"

    async def call(self, step: SendVoiceStep, *, visit: int) -> str:
        """Place the step's call; the step's result (``placed <call sid>``)."""
        result = await self.place_call(step, visit=visit)
        return f"{result.status} {result.call_sid}"

    async def place_call(self, step: SendVoiceStep, *, visit: int) -> PlaceCallResult:
        """Place the step's call (:mod:`workflows._calls` then waits for it to end)."""
        input = self._input
        assert input.plan.version is not None
        message_id = step.voicemail.message_id
        call = PlaceCallInput(
            run_id=workflow.info().workflow_id,
            execution=self._execution,
            plan_id=input.plan.id,
            plan_version=input.plan.version,
            step=step,
            visit=visit,
            script=input.content.scripts[step.script_id],
            voicemail_message=input.content.scripts[message_id] if message_id else None,
            contact=input.contact,
            variables=input.variables,
            window=self._window(step),
        )
        return await self._send(step, VoiceChannel.place_call, call, f"call {step.id}")

    async def call_outcome(self, step: SendVoiceStep, call_sid: str) -> CallOutcomeResult:
        """Ask Twilio how the step's call ``call_sid`` went, with the sends' retries."""
        ask = CallOutcomeInput(
            run_id=workflow.info().workflow_id, step_id=step.id, call_sid=call_sid
        )
        return await self._send(
            step, VoiceChannel.call_outcome, ask, f"call {step.id} outcome from Twilio"
        )

    async def _send(
        self,
        step: Step,
        channel: Callable[[Any, _I], Awaitable[_R]],
        message: _I,
        summary: str,
    ) -> _R:
        """Run one channel's activity for ``step`` with the send options every channel
        shares, held while its window is closed; a failure that outlasts the retries raises
        :class:`SendFailed`, an event that ends the run during a hold
        :class:`SendInterrupted`."""
        if self._engine < 2:
            # Engine 1 showed every send as the current step; engine 2 shows waits only.
            self._show_step(step.id)
        # A cancelled run waits for its send to stop (or finish) before it reports
        # cancelled, so nothing is sent after it says it has ended. Patched: runs that
        # started before this do as they did (report at once).
        waits = self._engine >= 2 or workflow.patched("send-cancellation-waits")
        for _ in range(MAX_HOLDS + 1):
            try:
                result = await workflow.execute_activity_method(
                    channel,
                    message,
                    start_to_close_timeout=SEND_TIMEOUT,
                    heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                    retry_policy=SEND_RETRY_POLICY,
                    summary=summary,
                    cancellation_type=(
                        ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                        if waits
                        else ActivityCancellationType.TRY_CANCEL
                    ),
                )
            except ActivityError as error:
                closed = _closed(error) if self._engine >= 3 else None
                if closed is None:
                    _fail(step, error)
                await self._hold(step, closed)
                continue
            task = asyncio.current_task()
            if waits and task is not None and task.cancelling():
                # Cancelled while the send finished anyway: the run stops here, after it.
                raise asyncio.CancelledError()
            return result
        raise SendFailed(
            RunFailure(
                step_id=step.id,
                reason=f"the send was held for its window {MAX_HOLDS} times and each try "
                "after it failed until the window closed; check the channel (SMTP, Twilio)",
                kind=OUTSIDE_WINDOW,
            )
        )

    async def _hold(self, step: Step, closed: WindowClosed) -> None:
        """Wait until ``closed.until`` on a durable timer, unless an event ends the run."""
        self.holding = Hold(step_id=step.id, until=closed.until, reason=closed.reason)
        self._show_step(step.id)
        try:
            remaining = closed.until - workflow.now()
            if remaining <= timedelta(0) and not self._interrupted():
                return
            try:
                await workflow.wait_condition(
                    self._interrupted,
                    timeout=max(remaining, timedelta(seconds=1)),
                    timeout_summary=closed.reason,
                )
            except TimeoutError:
                return
            raise SendInterrupted(step.id)
        finally:
            self.holding = None


def _closed(error: ActivityError) -> WindowClosed | None:
    """What an ``OutsideWindow`` failure says about the window; ``None`` for others."""
    cause = error.cause
    if not isinstance(cause, ApplicationError) or cause.type != OUTSIDE_WINDOW:
        return None
    if not cause.details:
        return None
    try:
        # Written by a worker of this or another release: fields it added are dropped.
        return WindowClosed.model_validate(cause.details[0], context=DECODING)
    except ValidationError:
        # Details no release of DEE writes: the send fails, rather than the workflow task
        # for ever.
        return None


def _fail(step: Step, error: ActivityError) -> NoReturn:
    cause: Any = error.cause
    if isinstance(cause, CancelledError):
        # The run itself was cancelled while the send was going on.
        raise asyncio.CancelledError()
    kind = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
    reason = str(cause) if cause is not None else str(error)
    workflow.logger.warning("run failed at step %s: %s", step.id, kind)
    raise SendFailed(RunFailure(step_id=step.id, reason=reason, kind=kind))
