"""Retention of the event stream: trim by age and length, never past an entry that a
plugin's group has not yet been delivered or has not acknowledged.

Redis trims without looking at groups (it can drop what a slow group never read and
leave dangling pending references), so the trim point is clamped here to the oldest
entry any group still needs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ._bus import Bus
from ._directory import is_alive
from ._history import time_to_id
from ._ids import id_key, next_id

log = logging.getLogger("rapid_objection.bus")

ORPHAN_GRACE = 24 * 3600.0
"""Seconds a consumer group without any live consumer still holds retention back."""

LENGTH_SCAN_LIMIT = 10_000
"""Entries inspected per call to find a length-based trim point; later calls go on."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history the stream keeps; None means no limit of that kind."""

    max_age: float | None = None
    """Seconds."""
    max_len: int | None = None
    orphan_grace: float = ORPHAN_GRACE
    """Seconds after which a group with no live consumer (a plugin removed, or never
    started) stops holding retention back; ``groups drop NAME`` removes one at once."""

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError(f"retention max_age must be positive, not {self.max_age}")
        if self.max_len is not None and self.max_len < 0:
            raise ValueError(f"retention max_len must not be negative, not {self.max_len}")


async def oldest_needed(bus: Bus, orphan_grace: float = ORPHAN_GRACE) -> str | None:
    """The smallest entry id some group still needs (pending, or not yet delivered);
    None when no group needs anything older than the stream's end. A group without a
    live consumer for ``orphan_grace`` seconds needs nothing any more."""
    needed: list[str] = []
    orphans = await orphaned_groups(bus)
    now = time.time()
    for group in await bus.redis.xinfo_groups(bus.keys.events):
        since = orphans.get(group.name)
        if since is not None and now - since >= orphan_grace:
            log.warning(
                "group %s has had no live consumer since %s: it no longer holds retention "
                "back (rapid-objection groups drop %s removes it)",
                group.name,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
                group.name,
            )
            continue
        oldest = await bus.redis.oldest_pending(bus.keys.events, group.name)
        needed.append(oldest if oldest is not None else next_id(group.last_delivered))
    return min(needed, key=id_key) if needed else None


async def orphaned_groups(bus: Bus) -> dict[str, float]:
    """Group -> since when it has had no live consumer, as far as seen so far; notes the
    groups found orphaned now and forgets those that have a live consumer again."""
    keys, redis = bus.keys, bus.redis
    live = {w.plugin for w in await bus.directory.workers() if is_alive(w.seen)}
    marks = {name: float(value) for name, value in (await redis.hgetall(keys.orphans)).items()}
    now = time.time()
    for group in await redis.xinfo_groups(keys.events):
        if group.name in live:
            if group.name in marks:
                await redis.hdel(keys.orphans, group.name)
                del marks[group.name]
        elif group.name not in marks:
            await redis.hsetnx(keys.orphans, group.name, repr(now).encode())
            marks[group.name] = now
    return marks


async def drop_group(bus: Bus, name: str) -> bool:
    """Remove plugin ``name``'s consumer group and what the directory knows of it; its
    pending entries are dropped with it. False when there was no such group."""
    dropped = await bus.redis.destroy_group(bus.keys.events, name)
    await bus.redis.hdel(bus.keys.orphans, name)
    await bus.redis.hdel(bus.keys.plugins, name)
    return dropped


async def trim_events(bus: Bus, retention: Retention, *, now: float | None = None) -> int:
    """Apply ``retention`` to the event stream; returns how many entries were removed."""
    key = bus.keys.events
    targets: list[str] = []
    if retention.max_age is not None:
        targets.append(time_to_id((time.time() if now is None else now) - retention.max_age))
    if retention.max_len is not None:
        excess = await bus.redis.xlen(key) - retention.max_len
        if excess > 0:
            oldest = await bus.redis.xrange(key, "-", "+", count=min(excess, LENGTH_SCAN_LIMIT))
            targets.append(next_id(oldest[-1][0]))
    if not targets:
        return 0
    minid = max(targets, key=id_key)
    needed = await oldest_needed(bus, retention.orphan_grace)
    if needed is not None and id_key(needed) < id_key(minid):
        minid = needed
    return await bus.redis.xtrim_minid(key, minid)
