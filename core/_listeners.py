"""Local listeners for a registry's own events: ``registry.on(name, fn)``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

import anyio

log = logging.getLogger("rapid_objection.registry")

Listener = Callable[..., Any]

LISTENER_TIMEOUT: Final = 5.0
"""Seconds an async listener may take; one that takes longer is abandoned and logged,
so that a stuck listener never holds up the registry (a shutdown above all)."""


class Listeners:
    """Sync or async callbacks per event name; a failing listener never breaks the caller."""

    def __init__(self, timeout: float = LISTENER_TIMEOUT) -> None:
        self.timeout = timeout
        self._listeners: dict[str, list[Listener]] = {}

    def on(self, name: str, listener: Listener) -> None:
        self._listeners.setdefault(name, []).append(listener)

    def off(self, name: str, listener: Listener) -> None:
        listeners = self._listeners.get(name, [])
        if listener in listeners:
            listeners.remove(listener)

    def count(self, name: str) -> int:
        return len(self._listeners.get(name, ()))

    async def emit(self, name: str, payload: dict[str, Any]) -> None:
        """Call every listener of ``name`` with ``payload``; log and swallow their errors
        and abandon an async one after ``timeout`` seconds."""
        for listener in list(self._listeners.get(name, ())):
            try:
                result = listener(payload)
                if inspect.isawaitable(result):
                    with anyio.move_on_after(self.timeout) as scope:
                        await result
                    if scope.cancelled_caught:
                        log.warning(
                            "listener %r of %r took more than %gs; abandoned",
                            listener,
                            name,
                            self.timeout,
                        )
            except Exception:
                log.exception("listener %r of %r failed", listener, name)
