"""The retry policy: how often, and how far apart, one plugin gets an event again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._constants import DEFAULT_MAX_DELIVERIES


@dataclass(frozen=True, slots=True)
class Deferred:
    """A handler's answer "not now" (``RetryLater``): no ack, try again after ``delay``."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``max_deliveries`` attempts per event, with capped exponential backoff.

    Local retries and re-deliveries after a crash (the stream's delivery count) share
    the one budget, so a hook that kills its worker every time still ends in the
    dead-letter stream instead of looping forever.
    """

    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    base_delay: float = 0.1
    """Seconds before the second attempt; doubled for each further one."""
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {self.max_deliveries}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), with jitter."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_deliveries
