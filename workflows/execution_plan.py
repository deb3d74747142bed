"""``ExecutionPlanWorkflow``: one generic workflow that runs any plan version.

The run walks the plan from its first step: a ``wait`` is a durable timer, ``sendEmail`` and
``sendVoice`` are activities with a bounded exponential retry policy, a ``branch`` evaluates
its conditions over the events received so far, and an ``end`` completes the run with its
outcome. Events arrive through the ``event`` signal at any time; the ``state`` query shows
where the run is. How it does all that is :class:`workflows._interpreter.Interpreter`.

This module only declares the workflow. Temporal's sandbox imports it afresh for every run
a worker starts or replays, so it is kept small; the interpreter it inherits from is passed
through the sandbox and imported once per worker (see :mod:`workflows._interpreter`).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dee.runs.channels import SEND_RETRY_POLICY
    from dee.runs.model import (
        EVENT_SIGNAL,
        STATE_QUERY,
        WORKFLOW_NAME,
        RunEvent,
        RunInput,
        RunResult,
        RunState,
    )
    from workflows._interpreter import (
        CONTINUE_AFTER_SIGNALS,
        MAX_CARRIED_INPUT_BYTES,
        Interpreter,
    )

__all__ = [
    "CONTINUE_AFTER_SIGNALS",
    "MAX_CARRIED_INPUT_BYTES",
    "SEND_RETRY_POLICY",
    "ExecutionPlanWorkflow",
]


@workflow.defn(name=WORKFLOW_NAME)
class ExecutionPlanWorkflow:
    """Runs one plan version (:class:`~dee.runs.model.RunInput`) for one contact.

    It holds its :class:`Interpreter` rather than inheriting from it: temporalio inspects
    every member of a workflow class each time the sandbox imports it (for every run), so
    the class keeps to the four the workflow declares.
    """

    @workflow.init
    def __init__(self, input: RunInput) -> None:
        self._interpreter = Interpreter(input)

    @workflow.signal(name=EVENT_SIGNAL)
    def event(self, event: RunEvent) -> None:
        """An event about the run's contact (reply, open, click, ...), de-duplicated by id."""
        self._interpreter.event(event)

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        """Where the run is: its current step, the steps taken, the events, the outcome."""
        return self._interpreter.state()

    @workflow.run
    async def run(self, input: RunInput) -> RunResult:
        return await self._interpreter.run(input)
