"""``dee`` under cProfile, for ``benchmarks/tracking.py --profile``:

    python benchmarks/_profiled.py STATS_FILE serve --port 8000

``dee`` ends with ``os._exit`` once it has used Temporal (its runtime's threads would hold
the process), which skips cProfile's own dump at exit: so the stats are written first. Only
the main thread (the event loop) is profiled, not the database's threads, and by the CPU
time it used (``time.thread_time``), so other processes on the machine do not count.
"""

from __future__ import annotations

import cProfile
import os
import runpy
import sys
import time

if __name__ == "__main__":
    stats = sys.argv.pop(1)
    profiler = cProfile.Profile(time.thread_time)
    exit_now = os._exit

    def dump_then_exit(status: int) -> None:
        profiler.disable()
        profiler.dump_stats(stats)
        exit_now(status)

    os._exit = dump_then_exit  # type: ignore[assignment]
    sys.argv[0] = "dee"
    profiler.enable()
    try:
        runpy.run_module("dee.cli.main", run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(stats)
