"""Retrying: the one jittered backoff, and the retry policy of one plugin's events."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

import anyio

from ._constants import DEFAULT_MAX_DELIVERIES


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential delays with jitter: ``first`` seconds, doubled per attempt, at
    most ``cap``; each drawn from the upper half of its step, so peers that failed
    together do not come back together."""

    first: float
    cap: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.first * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


RETRY: Final = Backoff(first=0.1, cap=2.0)
"""A hook's local retries: 0.1 s, 0.2 s, 0.4 s, ... at most 2 s (docs/writing-plugins.md)."""

RECONNECT: Final = Backoff(first=0.05, cap=5.0)
"""Readers and writers while Redis is away: from 50 ms up to 5 s between attempts."""

RESTART: Final = Backoff(first=0.5, cap=30.0)
"""A supervised worker process that keeps exiting: from 0.5 s up to 30 s before a restart."""


class Outage:
    """The consecutive failures of one loop, and the pause each of them asks for."""

    __slots__ = ("backoff", "failures")

    def __init__(self, backoff: Backoff = RECONNECT) -> None:
        self.backoff = backoff
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.failures += 1
        return self.backoff.delay(self.failures)

    async def pause(self) -> None:
        """Count one more failure and wait before trying again."""
        await anyio.sleep(self.next_delay())

    def over(self) -> None:
        """A success: the next failure starts from the first delay again."""
        self.failures = 0


@dataclass(frozen=True, slots=True)
class Deferred:
    """A handler's answer "not now" (``RetryLater``): no ack, try again after ``delay``."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``max_deliveries`` attempts per event, ``backoff`` apart.

    Local retries and re-deliveries after a crash (the stream's delivery count) share
    the one budget, so a hook that kills its worker every time still ends in the
    dead-letter stream instead of looping forever.
    """

    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    backoff: Backoff = RETRY

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {self.max_deliveries}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), with jitter."""
        return self.backoff.delay(attempt)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_deliveries
