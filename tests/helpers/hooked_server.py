"""``dee serve`` with a fault placed between a tracking hit's claim and its signal, for the
fault tests:

    DEE_TEST_FAULT=before-signal:KILL DEE_TEST_FAULT_MARK=/tmp/mark \\
        python -m tests.helpers.hooked_server serve --port 8000

The server sends itself the signal (``KILL``, ``STOP``) once, at one of two points of the
first tracking hit that takes its key, having first written the event id it was about to
signal to the file ``DEE_TEST_FAULT_MARK`` names:

- ``after-claim``: the transaction that kept the hit and took its key has committed
  (:meth:`HitStore.record_hit` returned the claim); the contact has no answer yet;
- ``before-signal``: the contact has the answer and the run's signal is about to leave
  (the process's first ``WorkflowHandle.signal``, before anything reaches Temporal).

No client can see either point, so the server's own code marks it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from dee.cli.main import main
from dee.server.hits import HitStore, SignalClaim

POINTS = ("after-claim", "before-signal")


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
        record_hit = HitStore.record_hit

        def record_then_fire(store: HitStore, run_id: str, **options: Any) -> SignalClaim | None:
            claim = record_hit(store, run_id, **options)
            if claim is not None:
                fire(claim.event_id)
            return claim

        HitStore.record_hit = record_then_fire  # type: ignore[method-assign]
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
