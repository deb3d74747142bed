"""The interpreter behind ``ExecutionPlanWorkflow`` (:mod:`workflows.execution_plan`): one
generic workflow that runs any plan version.

The run walks the plan from its first step: a ``wait`` is a durable timer, ``sendEmail`` and
``sendVoice`` are activities with a bounded exponential retry policy (in engine 3 runs a
``sendVoice`` step then waits for its call to end: :mod:`workflows._calls`), a ``branch``
evaluates its conditions over the events and call outcomes received so far, and an ``end``
completes the run with its outcome. Events arrive through the ``event`` signal at any time
(before their step ran too) and are de-duplicated by id; the ``state`` query shows where
the run is. Every run execution has an identity of its own (its first Temporal run id, kept
across continue-as-new): the sends carry it into their tokens and ledger rows, and an event
that names another execution (an open of the email a previous run with the same run id
sent) is kept but never counted.

A send that fails for good ends the run with outcome ``failed`` (never a hung run); an
``unsubscribe`` event ends it with outcome ``unsubscribed``, interrupting a wait; a step
entered more than ``max_visits_per_step`` times ends it with outcome ``visit-limit``. The run
continues as new when Temporal suggests it, between steps or in the middle of a wait,
carrying its counts, the ids it de-duplicates by and any unsubscribe exactly (see
:class:`~dee.runs.model.RunProgress` for what is carried and within what budget).

Only deterministic code lives here: time comes from ``workflow.now()``, nothing does I/O.
This module is passed through Temporal's sandbox, like DEE's models, condition evaluator and
the channels' input models: imported once per worker rather than once per run. The sandbox
re-imports a workflow's module for every run it starts or replays, which for the whole
interpreter took more CPU than the rest of a short run's workflow work and kept a copy of
every function in each cached run (BENCHMARKS.md); what it re-imports now is the small
module that declares the workflow. What the sandbox would have caught (a call to the clock,
randomness, I/O) is kept out by review, the import-linter contract that the workflows never
import a channel or the database, and the replay tests of recorded histories.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Final, NoReturn, TypeVar, assert_never

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dee.errors import ConditionError
    from dee.plans.conditions import ConditionContext, EventTally, evaluate_condition
    from dee.plans.exits import exits_for
    from dee.plans.model import BranchStep, EndStep, SendEmailStep, SendVoiceStep, Step, WaitStep
    from dee.plans.validation import successors
    from dee.runs.model import (
        CANCELLED,
        CONTACT_ID_ATTRIBUTE,
        CURRENT_STEP_ATTRIBUTE,
        FAILED,
        MAX_CARRIED_EVENT_BYTES,
        MAX_CARRIED_HISTORY,
        MAX_RUN_EVENTS,
        MAX_SHOWN_EVENTS,
        OUTCOME_ATTRIBUTE,
        UNSUBSCRIBED,
        VISIT_LIMIT,
        RunEvent,
        RunFailure,
        RunInput,
        RunProgress,
        RunResult,
        RunState,
        StepVisit,
        event_counts,
        event_digest,
        pack_digests,
    )
    from workflows._calls import Calls
    from workflows._carry import MAX_CARRIED_INPUT_BYTES, carried_input, latest_within
    from workflows._sends import SendFailed, SendInterrupted, Sends

__all__ = ["CONTINUE_AFTER_SIGNALS", "MAX_CARRIED_INPUT_BYTES", "Interpreter"]

_I = TypeVar("_I")
_R = TypeVar("_R")

#: A run continues as new once one execution has received this many signals, well before
#: Temporal's 10,000: a worker that picks a run up (after a restart, a cache eviction, a
#: frozen worker's timeout) replays the execution's history in one workflow task, which has
#: 10 seconds, and each signal costs about 0.8 ms to replay (BENCHMARKS.md).
CONTINUE_AFTER_SIGNALS: Final = 1_000


class _RunEnded(Exception):
    """Raised inside a step to end the run with a result."""

    def __init__(self, result: RunResult) -> None:
        self.result = result


class Interpreter:
    """Runs one plan version for one contact; :class:`ExecutionPlanWorkflow` declares it as
    the workflow (its ``run``, ``event`` signal and ``state`` query)."""

    def __init__(self, input: RunInput) -> None:
        progress = input.progress
        self._input = input
        #: Engine 2 (:data:`dee.runs.model.ENGINE`): fewer history events, no patch markers.
        self._engine2 = input.engine >= 2
        #: Engine 3: windows, ``exitOn``, calls that finish when the call does.
        self._engine3 = input.engine >= 3
        self._steps: dict[str, Step] = {step.id: step for step in input.plan.steps}
        self._execution = (
            progress.execution
            if progress and progress.execution
            else workflow.info().first_execution_run_id
        )
        carried = progress.events if progress else ()
        self._events: deque[RunEvent] = deque(carried, maxlen=MAX_SHOWN_EVENTS)
        self._seen = progress.seen_digests() if progress else set()
        self._tally = progress.tally(self._execution) if progress else EventTally()
        self._dropped = progress.dropped if progress else 0
        self._foreign = progress.foreign if progress else 0
        self._unsubscribed = (progress is not None and progress.unsubscribed) or any(
            event.type == "unsubscribe" for event in carried
        )
        #: Event type to the outcome it ends the run with: the plan's ``exitOn`` from
        #: engine 3 on; before, an unsubscribe alone (``self._unsubscribed``).
        self._exits = exits_for(input.plan.exit_on) if self._engine3 else {}
        #: The outcome an ``exitOn`` event has ended the run with, once one arrived.
        self._exit: str | None = progress.exit if progress else None
        #: The day the run's next send waits for after an out-of-office reply
        #: (``pauseOnAutoReply``, engine 3), in the contact's time zone.
        self._resume_on: date | None = progress.resume_on if progress else None
        self._visits: dict[str, int] = dict(progress.visits) if progress else {}
        self._history: list[StepVisit] = list(progress.history) if progress else []
        self._current: str | None = progress.next_step if progress else input.plan.steps[0].id
        #: Set when this execution resumes a wait its predecessor was in.
        self._wait_until: datetime | None = progress.wait_until if progress else None
        self._result: RunResult | None = None
        #: A wait's ``until`` that could not be evaluated (the run then ends with it).
        self._condition_error: ConditionError | None = None
        self._sends = Sends(
            input,
            self._execution,
            engine=input.engine,
            show_step=self._show_step,
            interrupted=self._interrupted,
            resume_on=lambda: self._resume_on,
        )
        #: Engine 3: a call step waits for its call to end, and records how it did.
        self._calls = Calls(
            self._sends,
            progress.calls if progress else (),
            show_step=self._show_step,
            interrupted=self._interrupted,
        )
        #: Signals this execution received, repeats included.
        self._signals = 0

    # -- the outside world ---------------------------------------------------------------

    def _own(self, event: RunEvent) -> bool:
        return event.execution is None or event.execution == self._execution

    def event(self, event: RunEvent) -> None:
        """Record an event once; duplicates (same ``event_id``) are dropped, and so is any
        event past the run's :data:`MAX_RUN_EVENTS` (an unsubscribe still ends the run)."""
        self._signals += 1
        if event.type == "unsubscribe":
            # The contact's wish, whichever of the contact's emails it came from.
            self._unsubscribed = True
        if event.type == "auto-reply" and self._engine3 and self._own(event):
            self._auto_reply(event)
        exit = self._exits.get(event.type)
        if exit is not None and self._exit is None and self._own(event):
            # A reply, bounce or complaint ends the run only when it is about this
            # execution's emails (a bounce of an earlier run's email says nothing new).
            self._exit = exit
        digest = event_digest(event.event_id)
        if digest in self._seen:
            return
        if len(self._seen) >= MAX_RUN_EVENTS:
            self._dropped += 1
            return
        self._seen.add(digest)
        self._events.append(event)
        if self._own(event):
            self._tally.add(event.type, event.step_id)
            if self._engine3:
                self._calls.observe(event)
        else:
            self._foreign += 1

    def _auto_reply(self, event: RunEvent) -> None:
        """An out-of-office reply: with ``pauseOnAutoReply``, hold the next send until the
        day after the return date it names, at most ``maxDays`` after it came (the latest
        reply says when the contact is back)."""
        pause = self._input.plan.pause_on_auto_reply
        back = event.details.get("returnDate")
        if pause is None or not isinstance(back, str):
            return
        latest = workflow.now().date() + timedelta(days=pause.max_days)
        try:
            # Any text may come here (an event posted to the API): a date that does not
            # parse holds nothing, and one past the limit holds until the limit (no
            # arithmetic on it, so 9999-12-31 cannot overflow).
            back_on = date.fromisoformat(back)
        except ValueError:
            return
        self._resume_on = latest if back_on >= latest else back_on + timedelta(days=1)

    def state(self) -> RunState:
        plan = self._input.plan
        assert plan.version is not None
        result = self._result
        return RunState(
            plan_id=plan.id,
            plan_version=plan.version,
            contact_id=self._input.contact.id,
            status="completed" if result else "running",
            current_step=self._current,
            history=tuple(self._history),
            events=tuple(self._events),
            outcome=result.outcome if result else None,
            failure=result.failure if result else None,
            execution=self._execution,
            event_count=len(self._seen),
            counts=event_counts(self._tally),
            dropped=self._dropped,
            foreign=self._foreign,
            continued=self._input.progress.continued if self._input.progress else 0,
            holding=None if result else self._sends.holding,
            calls=self._calls.recorded(),
        )

    def _should_continue_as_new(self) -> bool:
        return (
            self._signals >= CONTINUE_AFTER_SIGNALS
            or workflow.info().is_continue_as_new_suggested()
        )

    # -- the run -------------------------------------------------------------------------

    async def run(self, input: RunInput) -> RunResult:
        self._record_contact()
        routes = successors(input.plan)
        try:
            while True:
                assert self._current is not None
                step = self._steps[self._current]
                if self._wait_until is None:
                    self._enter(step)
                # else: the wait this run continued as new in, entered before.
                done = await self._execute(step)
                self._leave(done)
                if isinstance(step, BranchStep):
                    self._current = done.removeprefix("-> ")
                else:
                    # Validation guarantees exactly one next step for sends and waits.
                    self._current = routes[step.id][0][0]
                if self._should_continue_as_new():
                    self._continue_as_new()
        except _RunEnded as ended:
            return self._finish(ended.result)
        except asyncio.CancelledError:
            self._finish(self._result_for(CANCELLED, self._current))
            raise

    def _record_contact(self) -> None:
        """Make a run a plain Temporal client started findable by its contact (start_run
        sets the attribute at start), so an unsubscribe ends it too. Patched: histories
        recorded before this replay without the upsert (engine 2 runs have no such past)."""
        fresh = self._input.progress is None
        known = workflow.info().typed_search_attributes.get(CONTACT_ID_ATTRIBUTE)
        if fresh and not known and (self._engine2 or workflow.patched("contact-search-attribute")):
            contact_id = self._input.contact.id
            workflow.upsert_search_attributes([CONTACT_ID_ATTRIBUTE.value_set(contact_id)])

    def _interrupted(self) -> bool:
        """Whether an event has ended the run wherever it is (an unsubscribe, an exitOn)."""
        return self._unsubscribed or self._exit is not None

    def _end_if_interrupted(self, step_id: str) -> None:
        """End the run at ``step_id`` when :meth:`_interrupted`, with the event's outcome."""
        if self._unsubscribed:
            self._end(UNSUBSCRIBED, step_id)
        if self._exit is not None:
            self._end(self._exit, step_id)

    def _enter(self, step: Step) -> None:
        self._end_if_interrupted(step.id)
        visit = self._visits.get(step.id, 0) + 1
        if visit > self._input.max_visits_per_step:
            self._end(
                VISIT_LIMIT,
                step.id,
                RunFailure(
                    step_id=step.id,
                    reason=f"step {step.id!r} was entered more than "
                    f"{self._input.max_visits_per_step} times",
                    kind="VisitLimit",
                ),
            )
        self._visits[step.id] = visit
        self._history.append(
            StepVisit(step_id=step.id, type=step.type, visit=visit, started_at=workflow.now())
        )

    def _leave(self, result: str) -> None:
        if self._history and self._history[-1].finished_at is None:
            self._history[-1] = self._history[-1].model_copy(
                update={"finished_at": workflow.now(), "result": result}
            )

    async def _execute(self, step: Step) -> str:
        """Run one step; its result says what it did (``-> <step>`` for a branch)."""
        match step:
            case SendEmailStep():
                return await self._sent(self._sends.email(step, visit=self._visits[step.id]))
            case SendVoiceStep() if self._engine3:
                done = await self._sent(self._calls.call(step, visit=self._visits[step.id]))
                self._end_if_interrupted(step.id)
                return done
            case SendVoiceStep():
                return await self._sent(self._sends.call(step, visit=self._visits[step.id]))
            case WaitStep():
                return await self._wait(step)
            case BranchStep():
                return self._branch(step)
            case EndStep():
                self._end(step.outcome, step.id)
            case _:
                assert_never(step)

    async def _sent(self, send: Awaitable[str]) -> str:
        try:
            return await send
        except SendFailed as failed:
            self._end(FAILED, failed.failure.step_id, failed.failure)
        except SendInterrupted as interrupted:
            self._end_if_interrupted(interrupted.step_id)
            raise AssertionError("a hold ends early only when the run is interrupted") from None

    async def _wait(self, step: WaitStep) -> str:
        self._show_step(step.id)
        until = self._wait_until or workflow.now() + step.duration.to_timedelta()
        self._wait_until = None
        holds = self._condition(step.id, step.until)
        if holds():
            # What the wait waits for has happened already (a reply before the wait began).
            return self._until_held(step.id)
        if until <= workflow.now():
            return f"waited {step.duration}"
        try:
            # An unsubscribe (or an exitOn event) ends the run at once rather than after the
            # wait, and so does the wait's condition; a long wait that gathers many events
            # continues as new in the middle, keeping its end.
            await workflow.wait_condition(
                lambda: self._interrupted() or holds() or self._should_continue_as_new(),
                timeout=until - workflow.now(),
                timeout_summary=f"wait {step.id} {step.duration}"
                + ("" if step.until is None else " or until"),
            )
        except TimeoutError:
            return f"waited {step.duration}"
        self._end_if_interrupted(step.id)
        if holds():
            return self._until_held(step.id)
        self._continue_as_new(wait_until=until)

    def _condition(self, step_id: str, when: str | None) -> Callable[[], bool]:
        """Whether ``when`` holds now, as a function that never raises (always false without
        a condition): one that cannot be evaluated holds, and :meth:`_until_held` then ends
        the run with the reason, as a branch does. Raised from inside ``wait_condition``,
        the error would fail the workflow task over and over instead."""
        if when is None:
            return lambda: False
        context = self._context()

        def holds() -> bool:
            if self._condition_error is not None:
                return True
            try:
                return evaluate_condition(when, context, step_id=step_id)
            except ConditionError as error:
                self._condition_error = error
                return True

        return holds

    def _until_held(self, step_id: str) -> str:
        if self._condition_error is not None:
            self._end_failed_condition(step_id, self._condition_error)
        return "until held"

    def _context(self) -> ConditionContext:
        """What conditions read: live, so a condition evaluated again sees new events."""
        return ConditionContext(
            events=self._tally,
            visits=self._visits,
            contact=self._input.contact.attributes(),
            variables=self._input.variables,
            call_outcomes=self._calls.outcomes(),
        )

    def _branch(self, step: BranchStep) -> str:
        context = self._context()
        for condition in step.conditions:
            try:
                holds = evaluate_condition(condition.when, context, step_id=step.id)
            except ConditionError as error:
                self._end_failed_condition(step.id, error)
            if holds:
                return f"-> {condition.goto}"
        # Validation guarantees a default, which always holds.
        raise AssertionError(f"branch {step.id!r} has no condition that holds")

    def _end_failed_condition(self, step_id: str, error: ConditionError) -> NoReturn:
        self._end(
            FAILED,
            step_id,
            RunFailure(step_id=step_id, reason=str(error), kind="ConditionError"),
        )

    # -- endings -------------------------------------------------------------------------

    def _show_step(self, step_id: str) -> None:
        """Make the step the run is blocked on searchable (one history event per step); in
        engine 2 not again when it already shows (a wait resumed after continue-as-new)."""
        shown = workflow.info().typed_search_attributes.get(CURRENT_STEP_ATTRIBUTE)
        if self._engine2 and shown == step_id:
            return
        workflow.upsert_search_attributes([CURRENT_STEP_ATTRIBUTE.value_set(step_id)])

    def _end(
        self, outcome: str, step_id: str | None, failure: RunFailure | None = None
    ) -> NoReturn:
        raise _RunEnded(self._result_for(outcome, step_id, failure))

    def _result_for(
        self, outcome: str, step_id: str | None, failure: RunFailure | None = None
    ) -> RunResult:
        return RunResult(
            outcome=outcome,
            step_id=step_id,
            failure=failure,
            steps=sum(self._visits.values()),
            events=len(self._seen) + self._dropped,
        )

    def _finish(self, result: RunResult) -> RunResult:
        self._leave(f"outcome {result.outcome}")
        self._result = result
        self._current = result.step_id
        workflow.upsert_search_attributes(
            [
                OUTCOME_ATTRIBUTE.value_set(result.outcome),
                CURRENT_STEP_ATTRIBUTE.value_set(result.step_id or ""),
            ]
        )
        return result

    def _continue_as_new(self, *, wait_until: datetime | None = None) -> NoReturn:
        assert self._current is not None
        previous = self._input.progress
        progress = RunProgress(
            next_step=self._current,
            visits=self._visits,
            history=tuple(self._history[-MAX_CARRIED_HISTORY:]),
            events=latest_within(self._events, MAX_CARRIED_EVENT_BYTES),
            started_at=previous.started_at if previous else workflow.info().start_time,
            continued=(previous.continued + 1) if previous else 1,
            execution=self._execution,
            counts=event_counts(self._tally),
            seen=pack_digests(self._seen),
            dropped=self._dropped,
            foreign=self._foreign,
            unsubscribed=self._unsubscribed,
            exit=self._exit,
            resume_on=self._resume_on,
            wait_until=wait_until,
            calls=self._calls.recorded(),
        )
        carried = carried_input(self._input, progress)
        if carried is None:
            self._end(
                FAILED,
                self._current,
                RunFailure(
                    step_id=self._current,
                    reason="the run's input and what it carries no longer fit in one "
                    f"Temporal payload ({MAX_CARRIED_INPUT_BYTES:,} bytes); start runs "
                    "with smaller plans, contacts and variables",
                    kind="RunTooLarge",
                ),
            )
        workflow.continue_as_new(carried)
