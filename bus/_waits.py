"""What a registry learns about one event: an outcome per required plugin."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ._contract import Ack

OutcomeStatus = Literal["acked", "failed", "timed_out", "skipped"]
_ACK_STATUS: dict[str, OutcomeStatus] = {"ok": "acked", "error": "failed", "skipped": "skipped"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer of one plugin to one event, or the lack of it."""

    plugin: str
    status: OutcomeStatus
    consumer: str | None = None
    """The consumer that acked, failed, or (on a timeout) held the event per XPENDING."""
    result: Any = None
    error: str | None = None
    duration: float | None = None
    attempt: int | None = None

    @classmethod
    def from_ack(cls, ack: Ack) -> Outcome:
        status = _ACK_STATUS[ack.status]
        error = f"{ack.error_type}: {ack.error}" if ack.error_type else ack.error
        return cls(
            plugin=ack.plugin,
            status=status,
            consumer=ack.consumer,
            result=ack.result,
            error=error,
            duration=ack.duration,
            attempt=ack.attempt,
        )


@dataclass(frozen=True, slots=True)
class WaitResult:
    """Every required plugin's outcome for one published event."""

    event_id: str
    entry_id: str
    type: str
    app: str
    required: tuple[str, ...]
    outcomes: dict[str, Outcome]
    elapsed: float
    others: dict[str, Outcome] = field(default_factory=dict)
    """Acks of plugins that were not required but answered before the wait ended."""

    def _with(self, status: OutcomeStatus) -> list[Outcome]:
        return [outcome for outcome in self.outcomes.values() if outcome.status == status]

    @property
    def acked(self) -> list[Outcome]:
        return self._with("acked")

    @property
    def failed(self) -> list[Outcome]:
        return self._with("failed")

    @property
    def timed_out(self) -> list[Outcome]:
        return self._with("timed_out")

    @property
    def skipped(self) -> list[Outcome]:
        return self._with("skipped")

    @property
    def ok(self) -> bool:
        """True when no required plugin failed or timed out."""
        return not self.failed and not self.timed_out

    def results(self) -> dict[str, Any]:
        """Plugin -> returned value, for every plugin that acked with a result."""
        every = {**self.others, **self.outcomes}
        return {
            name: outcome.result
            for name, outcome in every.items()
            if outcome.status == "acked" and outcome.result is not None
        }


@dataclass
class Wait:
    """One event's wait in progress: the outcomes so far, and the event that wakes the
    waiter (every required plugin has answered, or one may have lost its consumers)."""

    required: frozenset[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    others: dict[str, Outcome] = field(default_factory=dict)
    woken: anyio.Event = field(default_factory=anyio.Event)
    completed_at: float | None = None
    """``time.monotonic()`` when the last required outcome came in (a batch's waiter may
    look later: its results' ``elapsed`` still end here)."""

    @property
    def complete(self) -> bool:
        return len(self.outcomes) == len(self.required)

    def missing(self) -> list[str]:
        return sorted(self.required - self.outcomes.keys())

    def add(self, outcome: Outcome) -> None:
        if outcome.plugin not in self.required:
            self.others[outcome.plugin] = outcome
            return
        if outcome.plugin in self.outcomes:
            return  # the first answer (or the diagnosis) stands; a re-delivery's is late
        self.outcomes[outcome.plugin] = outcome
        if self.complete:
            self.completed_at = time.monotonic()
            self.woken.set()

    def wake(self) -> None:
        """Have the waiter look again before its deadline."""
        self.woken.set()

    def rearm(self) -> None:
        self.woken = anyio.Event()
