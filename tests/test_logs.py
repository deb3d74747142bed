"""DEE_LOG_FORMAT=json: one object a line, with the record's extras, and never the SDK's
workflow id (a run id, which can hold a contact's address)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from dee.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[1]


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dee.test", logging.WARNING, __file__, 1, "sent %s", ("x",), None)
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_line_of_json_with_its_extras() -> None:
    line = JsonFormatter().format(
        _record(
            count=3,
            path=Path("/tmp/x"),
            temporal_workflow={"workflow_id": "plan:ana@example.com", "run_id": "r-1"},
            temporal_activity={"workflow_id": "plan:ana@example.com", "activity_type": "a"},
            color_message="\x1b[31msent x\x1b[0m",
        )
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "dee.test", "sent x")
    # Extras are kept (what JSON cannot hold, as text), the SDK's minus the workflow id.
    assert entry["count"] == 3 and entry["path"] == "/tmp/x"
    assert entry["temporal_workflow"] == {"run_id": "r-1"}
    assert entry["temporal_activity"] == {"activity_type": "a"}
    assert "color_message" not in entry
    assert "ana@example.com" not in line


def test_a_traceback_is_one_field() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].startswith("Traceback") and "ValueError: broken" in entry["exception"]


def _log_with(env: dict[str, str]) -> list[str]:
    script = textwrap.dedent(
        """
        import logging
        from dee.logs import configure_logging
        from dee.settings import Settings

        configure_logging(Settings.from_env())
        logging.getLogger("dee.a").debug("debug line")
        logging.getLogger("dee.a").info("info line")
        logging.getLogger("temporalio.worker._activity").debug("a whole task")
        logging.getLogger("temporalio.activity").debug("an activity's debug line")
        logging.getLogger("uvicorn.error").warning("uvicorn line")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.splitlines()


def test_format_and_level_come_from_the_environment() -> None:
    text = _log_with({})
    assert [line.split(" ", 2)[2] for line in text] == [
        "INFO dee.a: info line",
        "WARNING uvicorn.error: uvicorn line",
    ]
    entries = [
        json.loads(line) for line in _log_with({"DEE_LOG_FORMAT": "json", "DEE_LOG_LEVEL": "DEBUG"})
    ]
    # At DEBUG, DEE's and its activities' debug lines show; the SDK's internals stay at INFO.
    assert [(e["logger"], e["message"]) for e in entries] == [
        ("dee.a", "debug line"),
        ("dee.a", "info line"),
        ("temporalio.activity", "an activity's debug line"),
        ("uvicorn.error", "uvicorn line"),
    ]
    warning = _log_with({"DEE_LOG_FORMAT": "json", "DEE_LOG_LEVEL": "warning"})
    assert [json.loads(line)["message"] for line in warning] == ["uvicorn line"]
