"""``dee serve`` with a fault placed on a tracking hit's way from its commit to its signal,
for the fault tests:

    DEE_TEST_FAULT=before-signal:KILL DEE_TEST_FAULT_MARK=/tmp/mark \\
        python -m tests.helpers.hooked_server serve --port 8000

The server sends itself the signal (``KILL``, ``STOP``) once, at one of three points of the
first tracking hit that takes its key, having first written what it was about to do to the
file ``DEE_TEST_FAULT_MARK`` names (the event id it would signal, or the answer it gave):

- ``after-claim``: the transaction that kept the hit and took its key has committed
  (:meth:`HitStore.record_hits` returned the claim); the contact has no answer yet;
- ``after-answer``: the contact's answer to a tracking hit has been handed to the socket
  (the last ``http.response.body`` of a ``/t/`` route); mark ``GET /t/o/{token} 200``;
- ``before-signal``: the contact has the answer and the run's signal is about to leave
  (the process's first ``WorkflowHandle.signal``, before anything reaches Temporal).

No client can see either point, so the server's own code marks it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive, Scope, Send
from temporalio.client import WorkflowHandle

from dee.cli.main import main
from dee.server.access_log import AccessLog
from dee.server.hits import HitStore, NewHit, SignalClaim

POINTS = ("after-claim", "after-answer", "before-signal")


def arm(fault: str, mark: Path) -> None:
    point, _, name = fault.partition(":")
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; expected one of {POINTS}")
    signum = signal.Signals[f"SIG{name}"]
    fired = False

    def fire(event_id: str) -> None:
        nonlocal fired
        if not fired:
            fired = True
            mark.write_text(event_id)
            os.kill(os.getpid(), signum)

    if point == "after-claim":
        record_hits = HitStore.record_hits

        def record_then_fire(store: HitStore, hits: Sequence[NewHit]) -> list[SignalClaim | None]:
            claims = record_hits(store, hits)
            for claim in claims:
                if claim is not None:
                    fire(claim.event_id)
            return claims

        HitStore.record_hits = record_then_fire  # type: ignore[method-assign]
    elif point == "after-answer":
        call = AccessLog.__call__

        async def answer_then_fire(
            log: AccessLog, scope: Scope, receive: Receive, send: Send
        ) -> None:
            status = 0

            async def send_then_fire(message: Message) -> None:
                nonlocal status
                await send(message)
                if message["type"] == "http.response.start":
                    status = message["status"]
                route = getattr(scope.get("route"), "path", "")
                if (
                    message["type"] == "http.response.body"
                    and not message.get("more_body", False)
                    and route.startswith("/t/")
                ):
                    fire(f"{scope['method']} {route} {status}")

            await call(log, scope, receive, send_then_fire)

        AccessLog.__call__ = answer_then_fire  # type: ignore[method-assign, assignment]
    else:
        send = WorkflowHandle.signal

        async def fire_then_signal(
            handle: WorkflowHandle[Any, Any], *args: Any, **options: Any
        ) -> None:
            fire(args[1].event_id)
            await send(handle, *args, **options)

        WorkflowHandle.signal = fire_then_signal  # type: ignore[method-assign, assignment]


if __name__ == "__main__":
    arm(os.environ["DEE_TEST_FAULT"], Path(os.environ["DEE_TEST_FAULT_MARK"]))
    main()
