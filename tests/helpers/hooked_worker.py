"""``worker.py`` with a fault placed inside the email send, for the fault tests:

    DEE_TEST_FAULT=after-commit:STOP DEE_TEST_FAULT_MARK=/tmp/mark \
        python -m tests.helpers.hooked_worker

The worker sends itself the signal (``STOP`` or ``KILL``) the first time the ledger has
recorded an email as sent and before the final dot of DATA goes out. No server can see that
point (the body is with the server before the commit, and nothing crosses the wire between
the commit and the dot), so the worker's own code marks it: the commit's return, on the
event loop's thread, with the dot written next. ``DEE_TEST_FAULT_MARK`` names a file that
gets the message's ledger key just before the signal.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import worker
from dee.runs.ledger import SendLedger


def arm(fault: str, mark: Path) -> None:
    point, _, name = fault.partition(":")
    if point != "after-commit":
        raise ValueError(f"unknown fault point {point!r}; expected after-commit")
    signum = signal.Signals[f"SIG{name}"]
    mark_sent = SendLedger.mark_sent
    fired = False

    def mark_sent_then_signal(ledger: SendLedger, message_id: str, **options: Any) -> None:
        nonlocal fired
        mark_sent(ledger, message_id, **options)
        # bounded: the email's commit before the dot (a call records without it).
        if options.get("bounded") and not fired:
            fired = True
            mark.write_text(message_id)
            os.kill(os.getpid(), signum)

    SendLedger.mark_sent = mark_sent_then_signal  # type: ignore[method-assign]


if __name__ == "__main__":
    arm(os.environ["DEE_TEST_FAULT"], Path(os.environ["DEE_TEST_FAULT_MARK"]))
    worker.main()
