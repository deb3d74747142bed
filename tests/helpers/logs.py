"""Every log line DEE's processes would write, for tests that look for what must not be there."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["LogLines", "captured_logs"]

#: Loggers of the test's own peers (its HTTP client, its SMTP server), not of DEE's processes.
TEST_SIDE = ("httpx", "httpcore", "mail.log", "asyncio")


class LogLines(logging.Handler):
    """Each record as a formatted line, with its traceback and the extras a JSON formatter
    would write (``extra=`` fields and the SDK's ``temporal_*`` details)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._plain = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(TEST_SIDE):
            return
        extras = {k: v for k, v in record.__dict__.items() if k not in self._plain}
        self.lines.append(f"{self.format(record)} {extras!r}")

    def containing(self, *needles: str) -> list[str]:
        """The lines that contain any of ``needles`` (case-insensitively)."""
        wanted = [needle.lower() for needle in needles if needle]
        return [line for line in self.lines if any(n in line.lower() for n in wanted)]


#: Loggers that do not hand their records to the root logger (uvicorn configures its own).
UNPROPAGATED = ("uvicorn", "uvicorn.error", "uvicorn.access")


@contextlib.contextmanager
def captured_logs() -> Iterator[LogLines]:
    """Capture every record at DEBUG and above from every logger while the block runs
    (start it after uvicorn has configured its loggers)."""
    handler = LogLines()
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in UNPROPAGATED)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.propagate is False or logger is loggers[0]:
            logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
