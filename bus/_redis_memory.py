"""The embedded bus's server (``memory://``): fakeredis, and real blocking reads.

fakeredis answers ``XREADGROUP ... BLOCK`` at once on an empty stream, so a reader of
the embedded bus waits on an in-process notification that every XADD sets instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio


class Notifier:
    """Wakes the embedded bus's readers of a key when something is appended to it."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[anyio.Event]] = {}

    def notify(self, keys: Sequence[str]) -> None:
        for key in keys:
            for event in self._waiters.pop(key, ()):
                event.set()

    def register(self, key: str) -> anyio.Event:
        event = anyio.Event()
        self._waiters.setdefault(key, set()).add(event)
        return event

    def discard(self, key: str, event: anyio.Event) -> None:
        waiting = self._waiters.get(key)
        if waiting is not None:
            waiting.discard(event)


@dataclass
class MemoryServer:
    server: Any
    notifier: Notifier = field(default_factory=Notifier)


_memory_servers: dict[str, MemoryServer] = {}


def memory_server(name: str) -> MemoryServer:
    import fakeredis  # the embedded bus only; a worker on a real Redis never imports it

    if name not in _memory_servers:
        _memory_servers[name] = MemoryServer(fakeredis.FakeServer())
    return _memory_servers[name]


def forget_memory_server(name: str) -> None:
    """Drop an embedded server and all its data (``memory://name``)."""
    _memory_servers.pop(name, None)
