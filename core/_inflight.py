"""Registrations under way, so that shutdown can stop them before it closes their engines.

A registry shutdown that disposed the engines under a registration let its migrations
run on after ``shutdown()`` returned, its seeds fail on a closed connection, and its
cleanup raise ``KeyError`` over the real error. Shutdown now cancels every registration
in flight and waits until each has rolled back (a batch already running in a worker
thread finishes first: a thread cannot be interrupted), and only then closes engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class InFlight:
    """The registrations running now, by app name: each one's cancel scope and its end."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        self.closing = False
        """Shutdown began: a registration that starts now is cancelled at once."""

    @contextmanager
    def track(self, app: str) -> Iterator[anyio.CancelScope]:
        """Run a registration in a scope that ``cancel_all()`` cancels."""
        scope, done = anyio.CancelScope(), anyio.Event()
        if self.closing:
            scope.cancel()
        self._running[app] = (scope, done)
        try:
            with scope:
                yield scope
        finally:
            del self._running[app]
            done.set()

    async def cancel_all(self) -> list[str]:
        """Cancel every registration in flight and wait until each has ended; their names."""
        self.closing = True
        running = list(self._running.items())
        for _, (scope, _) in running:
            scope.cancel()
        for _, (_, done) in running:
            await done.wait()
        return [app for app, _ in running]

    def reopen(self) -> None:
        """Shutdown is over: a registry initialized again registers anew."""
        self.closing = False
