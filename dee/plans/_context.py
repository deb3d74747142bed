"""What a branch condition reads about a run (:mod:`dee.plans.conditions`): its event
counts, step visits, call outcomes, contact and variables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ConditionContext", "EventCounter", "EventTally"]


class EventCounter(Protocol):
    """What conditions need to know about a run's events."""

    def count(self, event_type: str, step_id: str | None = None) -> int:
        """Events of ``event_type`` on ``step_id`` (or on any step when ``None``)."""
        ...


class EventTally:
    """An :class:`EventCounter` over ``(event type, step id)`` pairs."""

    def __init__(self, events: Iterable[tuple[str, str | None]] = ()) -> None:
        self._by_step: Counter[tuple[str, str | None]] = Counter()
        self._by_type: Counter[str] = Counter()
        for event_type, step_id in events:
            self.add(event_type, step_id)

    def add(self, event_type: str, step_id: str | None, times: int = 1) -> None:
        self._by_step[(event_type, step_id)] += times
        self._by_type[event_type] += times

    def counts(self) -> list[tuple[str, str | None, int]]:
        """Every ``(event type, step id, count)``, in a stable order."""
        counted = [(kind, step_id, n) for (kind, step_id), n in self._by_step.items()]
        return sorted(counted, key=lambda item: (item[0], item[1] or ""))

    def count(self, event_type: str, step_id: str | None = None) -> int:
        if step_id is None:
            return self._by_type[event_type]
        return self._by_step[(event_type, step_id)]


@dataclass(frozen=True, slots=True)
class ConditionContext:
    """What a branch can see when it evaluates its conditions."""

    events: EventCounter
    visits: Mapping[str, int] = field(default_factory=dict)
    contact: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)
    #: The latest outcome of each ``sendVoice`` step's call, by step id
    #: (:mod:`dee.plans.call_outcomes`); steps whose call has no outcome are absent.
    call_outcomes: Mapping[str, str] = field(default_factory=dict)
