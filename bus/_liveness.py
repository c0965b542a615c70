"""Which plugins a registry can count on now: a live consumer is a worker whose last
heartbeat is younger than the liveness window (``is_alive``), the one definition that
loading, waits and ``status`` share."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import anyio

from ._constants import LIVENESS_FRESH
from ._contract import WorkerInfo
from ._directory import Directory, is_alive


def latest_beats(workers: Iterable[WorkerInfo]) -> dict[str, float]:
    """Plugin -> the newest heartbeat of any of its workers."""
    latest: dict[str, float] = {}
    for worker in workers:
        latest[worker.plugin] = max(worker.seen, latest.get(worker.plugin, 0.0))
    return latest


class Liveness:
    """One registry's view of its plugins' heartbeats.

    Read again when it is older than ``fresh`` seconds (one read at a time, shared by
    whoever asks meanwhile), and always before it calls a plugin absent: a worker that
    started a moment ago is never taken for missing.
    """

    def __init__(self, directory: Directory, fresh: float = LIVENESS_FRESH) -> None:
        self._directory = directory
        self._fresh = fresh
        self._beats: dict[str, float] = {}
        self._read_at = -math.inf
        self._reading: anyio.Event | None = None

    async def refresh(self) -> None:
        """Read every worker's heartbeat (or wait for the read already under way)."""
        if self._reading is not None:
            await self._reading.wait()
            return
        self._reading = done = anyio.Event()
        try:
            self._beats = latest_beats(await self._directory.workers())
            self._read_at = time.monotonic()
        finally:
            self._reading = None
            done.set()

    def live(self, plugin: str) -> bool:
        """Whether ``plugin`` had a live consumer at the last read (judged by now)."""
        return is_alive(self._beats.get(plugin, 0.0))

    async def absent(self, plugins: Iterable[str]) -> list[str]:
        """The plugins of ``plugins`` that no live consumer serves, per a fresh read."""
        plugins = list(plugins)
        if not plugins:
            return []
        read = time.monotonic() - self._read_at > self._fresh
        if read:
            await self.refresh()
        suspects = [plugin for plugin in plugins if not self.live(plugin)]
        if suspects and not read:
            await self.refresh()
            suspects = [plugin for plugin in suspects if not self.live(plugin)]
        return suspects
