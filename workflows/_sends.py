"""How the interpreter (:mod:`workflows._interpreter`) sends: one channel activity a send,
with the send options every channel shares (:mod:`dee.runs.channels`).

Deterministic like the interpreter, and passed through Temporal's sandbox with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
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
    from dee.runs.model import RunFailure, RunInput

__all__ = ["SendFailed", "Sends"]

_I = TypeVar("_I")
_R = TypeVar("_R")


class SendFailed(Exception):
    """A send failed for good (its retries ran out, or it was refused for good): the run
    ends with outcome ``failed`` and this failure."""

    def __init__(self, failure: RunFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class Sends:
    """The sends of one run execution.

    ``show_step`` makes a step the run's searchable current step; engine 1 called it at
    every send, later engines only where a run waits.
    """

    def __init__(
        self,
        input: RunInput,
        execution: str,
        *,
        engine: int,
        show_step: Callable[[str], None],
    ) -> None:
        self._input = input
        self._execution = execution
        self._engine = engine
        self._show_step = show_step

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
        shares; a failure that outlasts the retries raises :class:`SendFailed`."""
        if self._engine < 2:
            # Engine 1 showed every send as the current step; engine 2 shows waits only.
            self._show_step(step.id)
        # A cancelled run waits for its send to stop (or finish) before it reports
        # cancelled, so nothing is sent after it says it has ended. Patched: runs that
        # started before this do as they did (report at once).
        waits = self._engine >= 2 or workflow.patched("send-cancellation-waits")
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
            _fail(step, error)
        task = asyncio.current_task()
        if waits and task is not None and task.cancelling():
            # Cancelled while the send finished anyway: the run stops here, after it.
            raise asyncio.CancelledError()
        return result


def _fail(step: Step, error: ActivityError) -> NoReturn:
    cause: Any = error.cause
    if isinstance(cause, CancelledError):
        # The run itself was cancelled while the send was going on.
        raise asyncio.CancelledError()
    kind = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
    reason = str(cause) if cause is not None else str(error)
    workflow.logger.warning("run failed at step %s: %s", step.id, kind)
    raise SendFailed(RunFailure(step_id=step.id, reason=reason, kind=kind))
