"""Run the test suite and judge it by pytest's own report.

temporalio's Rust core can abort the interpreter at exit after every test has finished
(sdk-python issue 300: ``Fatal Python error: PyGILState_Release``, exit 134 or 139). A run
whose JUnit report shows tests ran and none failed is a pass whatever the exit status of the
dying interpreter; anything else keeps pytest's status.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

CRASH_CODES = {134, 139, -6, -11}


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", f"--junitxml={report}", *sys.argv[1:]]
        status = subprocess.call(command)
        if status not in CRASH_CODES:
            return status
        if not report.exists():
            print(f"pytest died with status {status} before writing its report", file=sys.stderr)
            return status
        suites = ElementTree.parse(report).getroot()
        totals = {key: 0 for key in ("tests", "failures", "errors")}
        for suite in suites.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, "0"))
        if totals["tests"] and not totals["failures"] and not totals["errors"]:
            print(
                f"pytest passed {totals['tests']} tests, then the interpreter died with "
                f"status {status} at exit (temporalio sdk-python issue 300): counted as a pass",
                file=sys.stderr,
            )
            return 0
        return status if status > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
