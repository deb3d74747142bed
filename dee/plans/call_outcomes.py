"""How a call ended: the six call outcomes, and how Twilio's final call status maps to one.

A ``sendVoice`` step of an engine 3 run (:data:`dee.runs.model.ENGINE`) finishes when its
call does, and records the call's outcome, which branches read with
``events.callOutcome("step")`` and ``events.hasCallOutcome("step", "voicemail")``:

=============  ==================================================================
outcome        the call ...
=============  ==================================================================
``answered``   was picked up by a person (or by something DEE could not tell apart)
``voicemail``  was picked up by an answering machine (or a fax)
``no-answer``  rang out
``busy``       found the line busy
``failed``     could not be placed (bad number, carrier refusal)
``canceled``   was cancelled before it connected
=============  ==================================================================

The server sends the outcome to the run as one event of type :data:`CALL_OUTCOME_EVENT`
when Twilio reports a final status (:mod:`dee.server.twilio_routes`); a run that hears
nothing asks Twilio (:mod:`activities.voice`). Both map the status with :func:`call_outcome`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CALL_OUTCOMES",
    "CALL_OUTCOME_EVENT",
    "FINAL_CALL_STATUSES",
    "MACHINE_ANSWERS",
    "call_outcome",
]

#: Every outcome a call can have, as plans spell them.
CALL_OUTCOMES: Final = ("answered", "voicemail", "no-answer", "busy", "failed", "canceled")
#: The event type that carries a call's outcome (``details.outcome``, ``details.CallSid``).
CALL_OUTCOME_EVENT: Final = "call-outcome"
#: Twilio's ``CallStatus`` values after which nothing more happens on the call.
FINAL_CALL_STATUSES: Final = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
#: Twilio's ``AnsweredBy`` values that mean a machine (or a fax) picked up.
MACHINE_ANSWERS: Final = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)


def call_outcome(status: str, answered_by: str | None = None) -> str | None:
    """The outcome of a call Twilio reports in ``status`` (answered by ``answered_by``), or
    ``None`` while the call is not over (``queued``, ``ringing``, ``in-progress``, ...).

    ``completed`` is a call that connected: ``voicemail`` when a machine answered, else
    ``answered``. With asynchronous answering machine detection Twilio reports the machine
    on another callback, so the run also turns ``answered`` into ``voicemail`` when that
    callback's ``voicemail`` event names the same call.
    """
    if status not in FINAL_CALL_STATUSES:
        return None
    if status == "completed":
        return "voicemail" if answered_by in MACHINE_ANSWERS else "answered"
    return status
