"""The errors about one run, raised by :mod:`dee.runs.client`.

Each derives from :class:`RunError` (itself a :class:`~dee.errors.DeeError`), whose
``run_id`` names the run::

    RunError
    ├── RunNotFoundError        no run has this id
    ├── RunAlreadyStartedError  a run with this id is still active
    ├── RunClosedError          the run has ended and takes no more events or cancellation
    ├── RunUnavailableError     the run exists but no worker answered for it
    └── ContactSuppressedError  the contact's address or phone is on the suppression list
"""

from __future__ import annotations

from dee.errors import DeeError

__all__ = [
    "ContactSuppressedError",
    "RunAlreadyStartedError",
    "RunBusyError",
    "RunClosedError",
    "RunError",
    "RunInputError",
    "RunInputTooLargeError",
    "RunNotFoundError",
    "RunUnavailableError",
]


class RunError(DeeError):
    """Something about one run; ``run_id`` names it."""

    def __init__(self, message: str, *, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunNotFoundError(RunError):
    """No run has this id (in the client's namespace)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist: see `dee runs list`", run_id=run_id)


class RunAlreadyStartedError(RunError):
    """A run with this id is active; one plan and contact have one active run at a time."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} is already active: cancel it first with `dee runs cancel {run_id}` "
            "or pass --run-id",
            run_id=run_id,
        )


class RunClosedError(RunError):
    """The run has ended: it takes no more events and cannot be cancelled."""

    def __init__(self, run_id: str, *, action: str) -> None:
        self.action = action
        super().__init__(
            f"run {run_id!r} has ended, so it cannot {action}: see `dee runs show {run_id}`",
            run_id=run_id,
        )


class RunUnavailableError(RunError):
    """The run exists but its state could not be read: no worker answered the query."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(
            f"run {run_id!r} did not answer ({reason}): is a worker running on its task "
            "queue? Start one with `dee worker` or `dee dev`",
            run_id=run_id,
        )


class RunInputError(RunError):
    """The run was not started: its id, contact or variables are not something a run can
    carry (see the message for why). ``field`` says which: ``runId``, ``contact`` or
    ``variables`` (``None`` for the contact and variables together)."""

    def __init__(self, message: str, *, run_id: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message, run_id=run_id)


class RunInputTooLargeError(RunInputError):
    """The contact and run variables are too large for a run to carry."""

    def __init__(self, run_id: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"run {run_id!r}: the contact and variables take {size:,} bytes as JSON; the "
            f"most a run carries is {limit:,}: pass large data by reference (an id or URL) "
            "rather than inline",
            run_id=run_id,
        )


class RunBusyError(RunError):
    """The run takes no events for a moment: it has received all the signals Temporal
    allows one run execution, and takes more once it has continued as new. Try again
    shortly; the event is not lost by trying again (the run drops repeats by id)."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(
            f"run {run_id!r} takes no events for a moment ({reason}): it takes more once "
            "it has continued as new; send the event again shortly, with the same event id",
            run_id=run_id,
        )


class ContactSuppressedError(RunError):
    """The run was not started: the contact's email address or phone number, which the plan
    would use, is on the suppression list. ``value`` is that address or number (as the list
    spells it), ``channel`` ``email`` or ``phone``, ``reason`` and ``source`` why and how it
    got there; ``run_id`` is the run that would have started."""

    def __init__(self, run_id: str, *, value: str, channel: str, reason: str, source: str) -> None:
        self.value = value
        self.channel = channel
        self.reason = reason
        self.source = source
        what = "phone number" if channel == "phone" else "email address"
        super().__init__(
            f"run {run_id!r} was not started: the contact's {what} {value} is suppressed "
            f"(reason {reason}, from {source}); if the contact agreed to hear from you again, "
            f"lift it with `dee suppressions remove {value}` (or DELETE /v1/suppressions/{value})",
            run_id=run_id,
        )
