"""A long-running reader's view of a bus that may go away (``status --watch``, ``replay
--follow``): it keeps trying, and says once when the bus went away and once when it is
back, instead of ending on the first ``BusUnavailable``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from rapid_objection.bus import BusUnavailable

RETRY_EVERY: Final = 1.0
"""Seconds between two tries while the bus is unavailable."""


class OutageNotice:
    """Whether the bus answered the last try, and if not, since when and why."""

    def __init__(
        self, say: Callable[[str], None] | None = None, *, every: float = RETRY_EVERY
    ) -> None:
        self.say = say
        """Told one line when an outage starts and one when it ends (None: nobody)."""
        self.every = every
        """Seconds the reader waits before it tries again."""
        self.down: tuple[float, BusUnavailable] | None = None

    def failed(self, exc: BusUnavailable) -> None:
        if self.down is None and self.say is not None:
            # redis-py's reasons end with a full stop: not before the ";".
            self.say(f"{str(exc).rstrip('.')}; trying again every {self.every:g}s")
        self.down = (self.down[0] if self.down else time.monotonic(), exc)

    def answered(self) -> None:
        if self.down is not None and self.say is not None:
            since, error = self.down
            self.say(f"bus back at {error.url} after {time.monotonic() - since:.0f}s")
        self.down = None

    def line(self) -> str | None:
        """The bus is down, why and for how long; None while it answers."""
        if self.down is None:
            return None
        since, error = self.down
        return f"{str(error).rstrip('.')} (for {time.monotonic() - since:.0f}s)"
