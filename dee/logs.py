"""How DEE's processes log: lines of text or JSON objects on stderr, at ``DEE_LOG_LEVEL``.

``dee worker``, ``python worker.py``, ``dee serve`` and ``dee dev`` call
:func:`configure_logging` once at start. With ``DEE_LOG_FORMAT=json`` each record is one
JSON object on one line::

    {"time": "2026-12-03T19:55:02.123Z", "level": "INFO", "logger": "dee.worker",
     "message": "worker running on task queue 'dee' in namespace 'default'"}

with the record's extras beside those four (the SDK adds ``temporal_activity`` or
``temporal_workflow``: activity and workflow type, attempt, task queue, Temporal's run id)
and ``exception`` when there is a traceback.

No addresses or phone numbers: DEE keeps them out of its messages, and the extras are
filtered here. The SDK's extras name the workflow id, which is DEE's run id,
``<plan id>:<contact id>``, and a contact id defaults to the contact's email address: it is
dropped, and ``workflow_run_id`` (a UUID) is what ties a line to a run
(``dee runs show`` prints it as the execution). uvicorn's access log, which writes query
strings with their tokens, stays off (:mod:`dee.server.access_log`). At ``DEBUG`` the
Temporal SDK's internals stay at ``INFO``: their debug lines print whole tasks.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final

from dee.settings import Settings

__all__ = ["JsonFormatter", "TEXT_FORMAT", "configure_logging"]

#: The line of ``DEE_LOG_FORMAT=text``.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every record has: not extras.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Extras never written: uvicorn's coloured copy of the message, and the SDK's full info
#: objects (which hold the workflow id and the activity's input).
_DROPPED: Final = frozenset({"color_message", "activity_info", "workflow_info"})
#: Fields of the SDK's ``temporal_activity`` and ``temporal_workflow`` extras that can hold
#: a contact's address (DEE's run id is the workflow id; see the module).
_DROPPED_DETAILS: Final = frozenset({"workflow_id", "parent_workflow_id", "root_workflow_id"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the record's extras and ``exception`` (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in _DROPPED or key in entry:
                continue
            if key.startswith("temporal_") and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in _DROPPED_DETAILS}
            entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    """Log to stderr in ``settings.log_format`` at ``settings.log_level``; of Alembic's
    lines, only warnings (not each migration step). Does nothing to a root logger that
    already has handlers (a test's, an embedding program's), but for the level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    level = logging.getLevelName(settings.log_level)
    logging.getLogger().setLevel(level)
    # The SDK's own DEBUG lines print whole task tokens and completions, with the workflow id
    # (a contact's address, see the module) and payloads: the SDK stays at INFO, but for the
    # loggers DEE's activities and workflow log through.
    logging.getLogger("temporalio").setLevel(max(logging.INFO, level))
    for name in ("temporalio.activity", "temporalio.workflow"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, level))
