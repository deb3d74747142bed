"""How an engine 3 run's ``sendVoice`` step finishes when its call does
(:mod:`workflows._interpreter`).

The step places the call (:meth:`Sends.place_call`), then waits for the ``call-outcome``
event of *that* call: the one whose ``details.CallSid`` is the SID the placement returned,
on this step, in this run execution (the interpreter only shows this module the events of
its own execution). The server signals it when Twilio reports a final status
(:mod:`dee.server.twilio_routes`). The wait is bounded by the time the call may ring
(:data:`RING_TIME`, Twilio's default), plus the step's ``maxDuration`` (Twilio hangs up
then; without one Twilio's own 4 hour limit), plus :data:`OUTCOME_MARGIN` for queueing and
a late callback. Past the bound the run asks Twilio (the ``call_outcome`` activity), so a
lost callback costs time, never the run. An interruption (an unsubscribe) ends the wait at
once: the interpreter then ends the run.

Asynchronous answering machine detection reports a machine on a callback of its own, which
races the final status: an ``answered`` outcome of a call an AMD ``voicemail`` event names
is ``voicemail``, whichever came first, also when the AMD event comes after the step has
finished (the recorded outcome is corrected; the step's result line keeps what it saw).

What the run records is the latest outcome of each step's call (:class:`CallOutcome`): what
``events.callOutcome`` reads, carried across continue-as-new and shown in the run's state.
A suppressed number (no call placed) records nothing.

Deterministic like the interpreter, and passed through Temporal's sandbox with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Final, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dee.plans.call_outcomes import CALL_OUTCOME_EVENT, CALL_OUTCOMES
    from dee.plans.model import MAX_CALL_SECONDS, SendVoiceStep
    from dee.runs.model import CallOutcome, RunEvent
    from workflows._sends import Sends

__all__ = ["OUTCOME_MARGIN", "RING_TIME", "Calls", "outcome_bound"]

#: How long Twilio lets a call ring before it reports ``no-answer`` (its default ``Timeout``).
RING_TIME: Final = timedelta(seconds=60)
#: Added to the bound: a call can queue before it rings, and a callback can be late.
OUTCOME_MARGIN: Final = timedelta(minutes=10)


def outcome_bound(step: SendVoiceStep) -> timedelta:
    """How long ``step`` waits for its call's outcome before it asks Twilio."""
    limit = step.max_duration.to_timedelta() if step.max_duration else None
    return RING_TIME + (limit or timedelta(seconds=MAX_CALL_SECONDS)) + OUTCOME_MARGIN


class Calls:
    """The calls of one run execution, and the outcomes they have had."""

    def __init__(
        self,
        sends: Sends,
        carried: tuple[CallOutcome, ...],
        *,
        show_step: Callable[[str], None],
        interrupted: Callable[[], bool],
    ) -> None:
        self._sends = sends
        self._show_step = show_step
        self._interrupted = interrupted
        #: Step id -> the latest outcome of its call, in the order the calls ended.
        self._latest: dict[str, CallOutcome] = {call.step_id: call for call in carried}
        #: (step id, call SID) -> the outcome a call-outcome event reported, not yet recorded.
        self._reported: dict[tuple[str, str], str] = {}
        #: Call SIDs an AMD voicemail event named, of calls not yet recorded.
        self._machines: set[str] = set()

    def observe(self, event: RunEvent) -> None:
        """Take note of one new event of the run's own execution."""
        sid = event.details.get("CallSid")
        step_id = event.step_id
        if not isinstance(sid, str) or step_id is None:
            return
        if event.type == CALL_OUTCOME_EVENT:
            outcome = event.details.get("outcome")
            # Hostile or mistaken details (an API event) are ignored, not recorded.
            if isinstance(outcome, str) and outcome in CALL_OUTCOMES:
                self._reported.setdefault((step_id, sid), outcome)
        elif event.type == "voicemail":
            latest = self._latest.get(step_id)
            if latest is not None and latest.call_sid == sid:
                if latest.outcome == "answered":
                    self._record(latest.model_copy(update={"outcome": "voicemail"}))
            else:
                self._machines.add(sid)

    def outcomes(self) -> dict[str, str]:
        """Step id -> the latest outcome of its call, for conditions."""
        return {step_id: call.outcome for step_id, call in self._latest.items()}

    def recorded(self) -> tuple[CallOutcome, ...]:
        return tuple(self._latest.values())

    async def call(self, step: SendVoiceStep, *, visit: int) -> str:
        """Place the step's call and wait until it ends; the step's result
        (``placed <call sid> <outcome>``). Returns early, without an outcome, when the run
        is interrupted: the caller ends the run."""
        placed = await self._sends.place_call(step, visit=visit)
        line = f"{placed.status} {placed.call_sid}"
        if placed.status == "suppressed":
            return line
        sid = placed.call_sid
        if self._reported_for(step, sid) is None:
            # The run waits here (as at a wait step): make the step its searchable one.
            self._show_step(step.id)
        source: Literal["callback", "fetched"] = "callback"
        try:
            await workflow.wait_condition(
                lambda: self._reported_for(step, sid) is not None or self._interrupted(),
                timeout=outcome_bound(step),
                timeout_summary=f"call {step.id} outcome",
            )
        except TimeoutError:
            fetched = await self._sends.call_outcome(step, sid)
            outcome, source = fetched.outcome, "fetched"
        else:
            reported = self._reported_for(step, sid)
            if reported is None:
                return line
            outcome = reported
        if outcome == "answered" and sid in self._machines:
            outcome = "voicemail"
        self._reported.pop((step.id, sid), None)
        self._machines.discard(sid)
        self._record(
            CallOutcome(step_id=step.id, visit=visit, call_sid=sid, outcome=outcome, source=source)
        )
        return f"{line} {outcome}"

    def _reported_for(self, step: SendVoiceStep, sid: str) -> str | None:
        return self._reported.get((step.id, sid))

    def _record(self, call: CallOutcome) -> None:
        # Moved to the end: the calls show in the order they ended.
        self._latest.pop(call.step_id, None)
        self._latest[call.step_id] = call
