"""Record workflow histories for the replay test (tests/workflows/test_replay.py).

Runs a set of plans on the time-skipping test server with the real worker, activities,
SMTP server and loopback Twilio API, and writes each run's history to
``tests/histories/<name>.json``. Re-record only on purpose: the point of the recorded
histories is that a change to the interpreter must still replay the runs already in flight.

    .venv/bin/python scripts/record_histories.py                          # every engine 3 one
    .venv/bin/python scripts/record_histories.py engine3-call-voicemail   # only those named
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import JsonValue  # noqa: E402
from temporalio.client import WorkflowFailureError  # noqa: E402

from dee.plans.content import PlanContent  # noqa: E402
from dee.plans.model import ExecutionPlan  # noqa: E402
from dee.runs.client import run_state, send_event  # noqa: E402
from dee.runs.model import ENGINE  # noqa: E402
from tests.helpers.engine import Engine, engine, wait_for_messages  # noqa: E402
from tests.helpers.plans import simple_plan  # noqa: E402
from tests.helpers.smtp import smtp_server  # noqa: E402
from tests.helpers.temporal import new_task_queue, start_time_skipping_env  # noqa: E402
from tests.helpers.twilio_api import twilio_api  # noqa: E402
from tests.helpers.windows import CONTENT, weekday, window_plan  # noqa: E402
from tests.server.test_twilio_routes import call_plan  # noqa: E402
from tests.workflows.test_execution_plan import loop_plan  # noqa: E402
from tests.workflows.test_exits import spec_variant, with_until  # noqa: E402
from workflows.execution_plan import CONTINUE_AFTER_SIGNALS  # noqa: E402

HISTORIES = ROOT / "tests" / "histories"


async def reply(e: Engine) -> str:
    handle = await e.start(e.spec_version())
    await wait_for_messages(e, 1)
    await send_event(e.client, handle.id, type="reply", step_id="intro-email", event_id="r1")
    await handle.result()
    return handle.id


async def opened(e: Engine) -> str:
    handle = await e.start(e.spec_version())
    await send_event(e.client, handle.id, type="open", step_id="intro-email", event_id="o1")
    await send_event(e.client, handle.id, type="open", step_id="intro-email", event_id="o1")
    await handle.result()
    return handle.id


async def neither(e: Engine) -> str:
    handle = await e.start(e.spec_version())
    await handle.result()
    return handle.id


async def unsubscribed(e: Engine) -> str:
    handle = await e.start(e.spec_version())
    await wait_for_messages(e, 1)
    await send_event(e.client, handle.id, type="unsubscribe", step_id="intro-email", event_id="u1")
    await handle.result()
    return handle.id


async def rejected(e: Engine) -> str:
    e.smtp.handler.refuse("ana@example.com", "550 5.1.1 no such user")
    handle = await e.start(e.spec_version())
    await handle.result()
    return handle.id


async def visit_limit(e: Engine) -> str:
    handle = await e.start(e.version(*loop_plan(rounds=50)), max_visits_per_step=4)
    await handle.result()
    return handle.id


async def cancelled_mid_send(e: Engine) -> str:
    """Cancelled while the intro email waits for the server's answer to RCPT."""
    e.smtp.handler.rcpt_delay = 4.0
    handle = await e.start(e.spec_version())
    async with asyncio.timeout(30):
        while not e.smtp.handler.rcpt_attempts:
            await asyncio.sleep(0.02)
    await handle.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return handle.id


async def continued(e: Engine) -> str:
    """Continues as new in the middle of a wait, then takes more events and an unsubscribe:
    the history recorded is the continued execution's (its input carries the progress)."""
    handle = await e.start(e.version(simple_plan("gather", hours=24), PlanContent()))
    for number in range(CONTINUE_AFTER_SIGNALS):
        await send_event(e.client, handle.id, type="open", step_id="pause", event_id=f"o{number}")
    latest = e.client.get_workflow_handle(handle.id)
    async with asyncio.timeout(60):
        while (await latest.describe()).run_id == handle.run_id:
            await asyncio.sleep(0.1)
    await send_event(e.client, handle.id, type="open", step_id="pause", event_id="o0")
    await send_event(e.client, handle.id, type="click", step_id="pause", event_id="c1")
    await send_event(e.client, handle.id, type="unsubscribe", event_id="u1")
    await latest.result()
    return handle.id


async def voicemail(e: Engine) -> str:
    """A call that reaches voicemail, then a branch on it."""
    handle = await e.start(e.version(*call_plan("voicemail")))
    async with asyncio.timeout(30):
        while not e.twilio.creates:
            await asyncio.sleep(0.05)
    await send_event(e.client, handle.id, type="voicemail", step_id="call", event_id="vm1")
    if ENGINE >= 3:
        # The call step waits for the call to end: the status callback's outcome, which
        # the voicemail above turns from answered into voicemail.
        sid = str(e.twilio.calls[0]["sid"])
        details: dict[str, JsonValue] = {"CallSid": sid, "outcome": "answered"}
        await send_event(
            e.client,
            handle.id,
            type="call-outcome",
            step_id="call",
            event_id="outcome1",
            details=details,
        )
    await handle.result()
    return handle.id


async def exit_on_reply(e: Engine) -> str:
    """A plan with ``exitOn: [reply]``: a reply in the middle of the wait ends the run."""
    handle = await e.start(spec_variant(e, "exits-on-reply", exit_on=("reply",)))
    await wait_for_messages(e, 1)
    await send_event(e.client, handle.id, type="reply", step_id="intro-email", event_id="r1")
    await handle.result()
    return handle.id


async def until_held(e: Engine) -> str:
    """A wait with ``until``: an open ends it early and the branch takes the open's way."""
    handle = await e.start(
        spec_variant(e, "until-open", **with_until('events.hasOpen("intro-email")'))
    )
    await wait_for_messages(e, 1)
    await send_event(e.client, handle.id, type="open", step_id="intro-email", event_id="o1")
    await handle.result()
    return handle.id


def _closed_window_plan(plan_id: str) -> ExecutionPlan:
    """An email whose window opens on one weekday three days from now: closed today."""
    day = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=3)
    return window_plan(plan_id, send_window={"days": [weekday(day)], "from": "09:00"})


async def window_hold(e: Engine) -> str:
    """An email attempted outside its window: held on a timer until it opens, then sent."""
    handle = await e.start(e.version(_closed_window_plan("held"), CONTENT))
    await handle.result()
    return handle.id


async def window_hold_unsubscribed(e: Engine) -> str:
    """An unsubscribe while an email is held for its window ends the run at once."""
    handle = await e.start(e.version(_closed_window_plan("held-unsub"), CONTENT))
    async with asyncio.timeout(30):
        while (await run_state(e.client, handle.id)).holding is None:
            await asyncio.sleep(0.05)
    await send_event(e.client, handle.id, type="unsubscribe", event_id="u1")
    await handle.result()
    return handle.id


SCENARIOS: dict[str, Callable[[Engine], Awaitable[str]]] = {
    "spec-reply": reply,
    "spec-open": opened,
    "spec-neither": neither,
    "spec-unsubscribe": unsubscribed,
    "spec-rejected-recipient": rejected,
    "loop-visit-limit": visit_limit,
    "cancelled-mid-send": cancelled_mid_send,
    "continued-mid-wait": continued,
    "call-voicemail": voicemail,
}
#: Paths only runs of engine 3 can take.
ENGINE3_ONLY: dict[str, Callable[[Engine], Awaitable[str]]] = {
    "exit-on-reply": exit_on_reply,
    "until-held": until_held,
    "send-window-hold": window_hold,
    "send-window-hold-unsubscribed": window_hold_unsubscribed,
}
#: The histories of earlier engines are kept as recorded: engine 1's under the plain names,
#: engine 2's as ``engine2-<name>``. What dee.start_run starts now (dee.runs.model.ENGINE)
#: is recorded as ``engine<N>-<name>``.
CURRENT = f"engine{ENGINE}-"
FROZEN = {*SCENARIOS, *(f"engine{n}-{name}" for n in range(2, ENGINE) for name in SCENARIOS)}
SCENARIOS.update({f"{CURRENT}{name}": scenario for name, scenario in list(SCENARIOS.items())})
SCENARIOS.update({f"{CURRENT}{name}": scenario for name, scenario in ENGINE3_ONLY.items()})


async def main() -> None:
    HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await start_time_skipping_env()
    try:
        chosen = sys.argv[1:] or [name for name in SCENARIOS if name.startswith(CURRENT)]
        recorded = [name for name in chosen if name in FROZEN or name not in SCENARIOS]
        if recorded:
            raise SystemExit(
                f"{', '.join(recorded)}: earlier engines' histories are kept as recorded "
                f"(start_run now starts engine {ENGINE} runs); record {CURRENT}<name> instead"
            )
        for name in chosen:
            scenario = SCENARIOS[name]
            with tempfile.TemporaryDirectory() as scratch, twilio_api() as twilio:
                async with (
                    smtp_server() as smtp,
                    engine(env, new_task_queue(), Path(scratch), smtp, twilio) as e,
                ):
                    run_id = await scenario(e)
                    history = await e.client.get_workflow_handle(run_id).fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"{name}: {len(history.events)} events")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
