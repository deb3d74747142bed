"""What the tracking database keeps and hands back: hits, the claims that signal runs,
and where a signal stands (see :mod:`dee.server.hits`)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from dee.runs.unsubscribe import event_id

__all__ = [
    "HIT_KINDS",
    "MAX_USER_AGENT",
    "Hit",
    "HitKind",
    "NewHit",
    "SignalClaim",
    "SignalKind",
    "SignalOutcome",
    "SignalStatus",
]

HitKind: TypeAlias = Literal["open", "click", "unsubscribe"]
SignalKind: TypeAlias = Literal["open", "click"]
#: How a key was settled: the run took the signal, or there was no run to take it.
SignalOutcome: TypeAlias = Literal["signalled", "run-closed", "run-not-found"]

HIT_KINDS: Final = ("open", "click", "unsubscribe")
#: Longest user agent kept; the rest is cut.
MAX_USER_AGENT: Final = 500


@dataclass(frozen=True, slots=True)
class Hit:
    """One fetch of a pixel, click on a link, or unsubscribe, as it arrived."""

    id: int
    run_id: str
    step_id: str | None
    visit: int | None
    kind: HitKind
    url: str | None
    user_agent: str | None
    at: datetime.datetime
    #: The run execution the hit's token named, if any.
    execution: str | None = None


@dataclass(frozen=True, slots=True)
class SignalClaim:
    """The right to signal ``kind`` for one run execution, step and visit, held by one hit.
    ``execution`` is ``""`` for a token that names none. The hit's ``url`` (a click's link)
    and time ``at`` are what the signal carries; ``attempts`` counts the sweeper's tries."""

    run_id: str
    step_id: str
    visit: int
    kind: SignalKind
    claim: str
    execution: str = ""
    url: str | None = field(default=None, compare=False)
    at: datetime.datetime | None = field(default=None, compare=False)
    attempts: int = field(default=0, compare=False)

    @property
    def event_id(self) -> str:
        return event_id(self.kind, self.run_id, self.step_id, self.visit, self.execution)

    @property
    def details(self) -> dict[str, Any]:
        """The event's details: a click's link."""
        return {"url": self.url} if self.url is not None else {}


@dataclass(frozen=True, slots=True)
class NewHit:
    """A hit as it arrives, to keep with :meth:`HitStore.record_hits`: opens and clicks
    need ``step_id`` and ``visit``; ``at`` is when it arrived."""

    run_id: str
    kind: HitKind
    step_id: str | None = None
    visit: int | None = None
    url: str | None = None
    user_agent: str | None = None
    execution: str | None = None
    at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def __post_init__(self) -> None:
        if self.kind not in HIT_KINDS:
            raise ValueError(f"kind {self.kind!r} is unknown; expected one of {HIT_KINDS}")
        if self.kind != "unsubscribe" and (self.step_id is None or self.visit is None):
            raise ValueError(f"a {self.kind} hit needs its step_id and visit")

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        """The collapse key ``(run, execution, step, visit, kind)`` of an open or click."""
        return (self.run_id, self.execution or "", self.step_id or "", self.visit or 0, self.kind)

    def row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "step_id": self.step_id,
            "visit": self.visit,
            "kind": self.kind,
            "url": self.url,
            "user_agent": self.user_agent[:MAX_USER_AGENT] if self.user_agent else None,
            "at": self.at,
            "execution": self.execution,
        }

    def claim(self, token: str) -> SignalClaim:
        """The claim this open or click holds if it takes its key."""
        assert self.kind != "unsubscribe" and self.step_id is not None and self.visit is not None
        kind: SignalKind = self.kind
        return SignalClaim(
            self.run_id,
            self.step_id,
            self.visit,
            kind,
            token,
            self.execution or "",
            url=self.url,
            at=self.at,
        )


@dataclass(frozen=True, slots=True)
class SignalStatus:
    """Where one key's signal stands: pending while ``outcome`` is ``None``."""

    claim: str
    at: datetime.datetime
    outcome: SignalOutcome | None
    done_at: datetime.datetime | None
    attempts: int
    retry_at: datetime.datetime | None
