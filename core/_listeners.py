"""Local listeners for a registry's own events: ``registry.on(name, fn)``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rapid_objection.registry")

Listener = Callable[..., Any]


class Listeners:
    """Sync or async callbacks per event name; a failing listener never breaks the caller."""

    def __init__(self) -> None:
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
        """Call every listener of ``name`` with ``payload``; log and swallow their errors."""
        for listener in list(self._listeners.get(name, ())):
            try:
                result = listener(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("listener %r of %r failed", listener, name)
