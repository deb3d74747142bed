"""What a run carries across continue-as-new, kept within one Temporal payload.

Deterministic like the interpreter (:mod:`workflows._interpreter`), and passed through
Temporal's sandbox with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dee.runs.model import RunEvent, RunInput, RunProgress

__all__ = ["MAX_CARRIED_INPUT_BYTES", "carried_input", "latest_within"]

#: Largest input a run continues as new with: Temporal refuses payloads over 2 MiB.
MAX_CARRIED_INPUT_BYTES: Final = 1_900_000


def latest_within(events: Iterable[RunEvent], budget: int) -> tuple[RunEvent, ...]:
    """The latest of ``events`` whose JSON fits in ``budget`` bytes, oldest first."""
    kept: list[RunEvent] = []
    for event in reversed(list(events)):
        budget -= len(event.model_dump_json())
        if budget < 0:
            break
        kept.append(event)
    return tuple(reversed(kept))


def carried_input(input: RunInput, progress: RunProgress) -> RunInput | None:
    """``input`` carrying ``progress`` for the next execution, within
    :data:`MAX_CARRIED_INPUT_BYTES`; what is only shown (events, all but the last step
    visit) is shed when it does not fit, and ``None`` when even that does not. Only a run
    started by hand with a huge plan or contact gets there: DEE's own limits keep a run
    under it."""
    carried = input.model_copy(update={"progress": progress})
    if len(carried.model_dump_json()) <= MAX_CARRIED_INPUT_BYTES:
        return carried
    shown = {"events": (), "history": progress.history[-1:]}
    carried = carried.model_copy(update={"progress": progress.model_copy(update=shown)})
    if len(carried.model_dump_json()) <= MAX_CARRIED_INPUT_BYTES:
        return carried
    return None
