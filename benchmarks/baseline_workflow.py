"""The baseline: the spec's example plan written by hand as a Temporal workflow.

It does what ExecutionPlanWorkflow does for that plan, with the same activities and the
same inputs, but with the steps in code instead of interpreted from a plan. It imports
nothing of DEE's workflow module (the sandbox would load that for every run too), only the
models and send options a hand-written workflow would share.
"""

from __future__ import annotations

import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dee.plans.model import SendEmailStep, SendVoiceStep, WaitStep
    from dee.runs.channels import (
        SEND_HEARTBEAT_TIMEOUT,
        SEND_RETRY_POLICY,
        SEND_TIMEOUT,
        EmailChannel,
        PlaceCallInput,
        SendEmailInput,
        VoiceChannel,
    )
    from dee.runs.model import RunEvent, RunInput


@workflow.defn(name="HandWrittenSpecPlan")
class HandWrittenSpecPlan:
    def __init__(self) -> None:
        self.replied = False
        self.opened = False
        self.calls_ended: set[str] = set()

    @workflow.signal(name="event")
    def event(self, event: RunEvent) -> None:
        if event.step_id == "intro-email":
            self.replied |= event.type == "reply"
            self.opened |= event.type == "open"
        sid = event.details.get("CallSid")
        if event.type == "call-outcome" and isinstance(sid, str):
            self.calls_ended.add(sid)

    @workflow.run
    async def run(self, input: RunInput) -> str:
        await self.email(input, "intro-email")
        wait = input.plan.step("wait-for-reply")
        assert isinstance(wait, WaitStep)
        await workflow.sleep(wait.duration.to_timedelta())
        if self.replied:
            return "replied"
        if self.opened:
            await self.email(input, "warm-follow-up")
            return "replied"
        await self.email(input, "cold-follow-up")
        call = input.plan.step("follow-up-call")
        assert isinstance(call, SendVoiceStep) and input.plan.version is not None
        message_id = call.voicemail.message_id
        placed = await workflow.execute_activity_method(
            VoiceChannel.place_call,
            PlaceCallInput(
                run_id=workflow.info().workflow_id,
                plan_id=input.plan.id,
                plan_version=input.plan.version,
                step=call,
                visit=1,
                script=input.content.scripts[call.script_id],
                voicemail_message=input.content.scripts[message_id] if message_id else None,
                contact=input.contact,
                variables=input.variables,
            ),
            start_to_close_timeout=SEND_TIMEOUT,
            heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
            retry_policy=SEND_RETRY_POLICY,
        )
        # As DEE's engine 3 does: the call step lasts until the call has ended.
        await workflow.wait_condition(
            lambda: placed.call_sid in self.calls_ended, timeout=datetime.timedelta(hours=5)
        )
        return "replied"

    async def email(self, input: RunInput, step_id: str) -> None:
        step = input.plan.step(step_id)
        assert isinstance(step, SendEmailStep) and input.plan.version is not None
        await workflow.execute_activity_method(
            EmailChannel.send_email,
            SendEmailInput(
                run_id=workflow.info().workflow_id,
                plan_id=input.plan.id,
                plan_version=input.plan.version,
                step=step,
                visit=1,
                template=input.content.templates[step.template_id],
                contact=input.contact,
                variables=input.variables,
                sender=input.sender,
            ),
            start_to_close_timeout=SEND_TIMEOUT,
            heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
            retry_policy=SEND_RETRY_POLICY,
        )
