"""Leases and reclaim: a live consumer keeps what it runs and takes what the dead left.

Every third of the idle threshold a consumer (1) renews the leases of the entries it
is still handling (XCLAIM ... JUSTID to itself resets their idle time without counting
a delivery), so a slow handler is never stolen while its worker lives, and (2) takes
over entries idle past the threshold from any consumer of its group (XAUTOCLAIM), which
are those of consumers that died. Now and then it deletes consumers that have been
idle for long and hold nothing (XGROUP DELCONSUMER strands pending entries otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Protocol

import anyio

from ._bus import Bus
from ._constants import DEAD_CONSUMER_IDLE
from ._directory import is_alive
from ._errors import BusUnavailable, GroupMissing
from ._ids import sorted_ids
from ._redis_records import Entry
from ._restore import Restorer

log = logging.getLogger("rapid_objection.bus")

SWEEP_EVERY = 100
"""Claim rounds between two sweeps for dead consumers."""


class Claimant(Protocol):
    """The consumer whose leases a ``Claimer`` renews and to which it offers what it takes."""

    @property
    def bus(self) -> Bus: ...

    @property
    def plugin(self) -> str: ...

    @property
    def consumer(self) -> str: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def restorer(self) -> Restorer: ...

    def in_flight_ids(self) -> list[str]: ...

    def room(self) -> int: ...

    async def offer(self, entries: list[Entry], attempts: dict[str, int]) -> None: ...


class Claimer:
    """The lease and reclaim loop of one consumer."""

    def __init__(self, consumer: Claimant, *, idle: float) -> None:
        self.consumer = consumer
        self.idle_ms = int(idle * 1000)
        self.interval = idle / 3
        self._cursor = "0-0"
        self._stop = anyio.Event()
        self._reclaim_after = 0.0
        self.reclaimed = 0

    def stop(self) -> None:
        """End the loop; called once the consumer has settled everything it held."""
        self._stop.set()

    async def run(self) -> None:
        try:
            if await self.consumer.bus.redis.supports_readgroup_claim():
                # The server could deliver idle entries within XREADGROUP itself; this
                # version still reclaims with XAUTOCLAIM, which every server has.
                log.info("server supports XREADGROUP CLAIM; reclaiming with XAUTOCLAIM")
        except Exception as exc:  # a probe must never stop the worker
            log.debug("XREADGROUP CLAIM probe failed: %s", exc)
        rounds = 0
        while True:
            with anyio.move_on_after(self.interval * random.uniform(0.8, 1.0)):
                await self._stop.wait()
            if self._stop.is_set():
                return
            rounds += 1
            try:
                # Renewal goes on while a stopping consumer drains; only taking new
                # work stops with the stop.
                await self.renew()
                if self.consumer.stopping:
                    continue
                # After an outage every lease looks idle: give the live owners one idle
                # period to renew theirs before taking anything over.
                if anyio.current_time() >= self._reclaim_after:
                    await self.reclaim()
                if rounds % SWEEP_EVERY == 0:
                    await self.sweep()
            except GroupMissing:
                # The namespace lost the group: the consumer puts back its part at once.
                with contextlib.suppress(BusUnavailable):
                    await self.consumer.restorer.restore()
            except BusUnavailable as exc:
                self._reclaim_after = anyio.current_time() + self.idle_ms / 1000
                log.debug("claim round of %s skipped: %s", self.consumer.consumer, exc)

    async def renew(self) -> None:
        """Reset the idle time of the entries still in hand (XCLAIM ... JUSTID)."""
        ids = self.consumer.in_flight_ids()
        if not ids:
            return
        bus, consumer = self.consumer.bus, self.consumer
        owned = await bus.redis.xpending(
            bus.keys.events,
            consumer.plugin,
            start=ids[0],
            end=ids[-1],
            count=len(ids) + 1000,
            consumer=consumer.consumer,
        )
        mine = sorted_ids({row.entry_id for row in owned} & set(ids))
        # min-idle 0 always succeeds, so only entries still ours are named: never take
        # back one that another consumer reclaimed.
        await bus.redis.xclaim_ids(bus.keys.events, consumer.plugin, consumer.consumer, mine, 0)

    async def reclaim(self) -> int:
        """Take over entries idle past the threshold (XAUTOCLAIM); returns how many."""
        room = self.consumer.room()
        if room == 0:
            return 0
        bus, consumer = self.consumer.bus, self.consumer
        cursor, entries, deleted = await bus.redis.xautoclaim(
            bus.keys.events,
            consumer.plugin,
            consumer.consumer,
            min_idle_ms=self.idle_ms,
            start=self._cursor,
            count=room,
        )
        self._cursor = cursor
        if deleted:
            log.warning("%d pending entries of %s were trimmed away", len(deleted), consumer.plugin)
        if not entries:
            return 0
        # Entries of ours already in hand share the id range: count them in too, so no
        # claimed entry falls off the page (its delivery count decides dead-lettering).
        pending = await bus.redis.xpending(
            bus.keys.events,
            consumer.plugin,
            start=entries[0][0],
            end=entries[-1][0],
            count=len(entries) + len(consumer.in_flight_ids()),
            consumer=consumer.consumer,
        )
        await consumer.offer(entries, {row.entry_id: row.deliveries for row in pending})
        self.reclaimed += len(entries)
        return len(entries)

    async def sweep(self) -> int:
        """Delete consumers idle for long that hold nothing and have no live heartbeat."""
        bus, plugin = self.consumer.bus, self.consumer.plugin
        alive = {w.consumer for w in await bus.directory.workers(plugin) if is_alive(w.seen)}
        removed = 0
        for info in await bus.redis.xinfo_consumers(bus.keys.events, plugin):
            idle = info.inactive_ms if info.inactive_ms is not None else info.idle_ms
            if info.pending == 0 and idle > DEAD_CONSUMER_IDLE * 1000 and info.name not in alive:
                removed += await bus.redis.delete_consumer(bus.keys.events, plugin, info.name)
                await bus.directory.forget_worker(plugin, info.name)
        return removed
