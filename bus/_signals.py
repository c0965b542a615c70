"""What a handler may raise to steer delivery; these are signals, not bus errors.

``RetryLater`` is control flow (the handler is fine, the moment is not) and does not
derive from ``Exception``'s error branches of the bus; ``PermanentError`` is the
plugin's own error, telling the worker that retrying cannot help.
"""

from __future__ import annotations


class RetryLater(Exception):  # noqa: N818 - a signal, named for what it asks
    """Deliver this event again after ``delay`` seconds.

    No failure is recorded for it, but each deferral is an attempt of the plugin's
    ``max_deliveries`` budget: an event deferred that often is dead-lettered.
    """

    def __init__(self, delay: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = delay
        self.reason = reason


class PermanentError(Exception):
    """An error that retrying cannot fix: acked as an error at once, never retried."""
