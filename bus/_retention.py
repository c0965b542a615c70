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
from ._trims import note_trim

log = logging.getLogger("rapid_objection.bus")

ORPHAN_GRACE = 24 * 3600.0
"""Seconds a consumer group without any live consumer still holds retention back."""


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


async def oldest_needed(
    bus: Bus, orphan_grace: float = ORPHAN_GRACE, *, warned: set[str] | None = None
) -> str | None:
    """The smallest entry id some group still needs (pending, or not yet delivered);
    None when no group needs anything older than the stream's end. A group without a
    live consumer for ``orphan_grace`` seconds needs nothing any more (said once per
    group when ``warned`` remembers whom it was said of)."""
    needed: list[str] = []
    orphans = await orphaned_groups(bus)
    now = time.time()
    for group in await bus.redis.xinfo_groups(bus.keys.events):
        since = orphans.get(group.name)
        if since is not None and now - since >= orphan_grace:
            if warned is None or group.name not in warned:
                log.warning(
                    "group %s has had no live consumer since %s: it no longer holds "
                    "retention back (rapid-objection groups drop %s removes it)",
                    group.name,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
                    group.name,
                )
                if warned is not None:
                    warned.add(group.name)
            continue
        if warned is not None:
            warned.discard(group.name)
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


async def trim_events(
    bus: Bus,
    retention: Retention,
    *,
    now: float | None = None,
    warned: set[str] | None = None,
) -> int:
    """Apply ``retention`` to the event stream; returns how many entries were removed.

    However far the stream is over its limits, one call brings it back, in two steps
    that each cost in proportion to what they remove: whole stream nodes first
    (``XTRIM ... ~ LIMIT``, never the server's cap of 10,000 entries per call), then
    exactly to the entry (``XTRIM MINID``, over less than one node's worth). Neither
    goes past the oldest entry a group still needs (``oldest_needed``): the bulk step
    trims by MINID that entry, at most as many entries as the length is over. The
    outcome history goes with the events (``trim_outcomes``).
    """
    if retention.max_age is None and retention.max_len is None:
        return 0
    redis, key = bus.redis, bus.keys.events
    needed = await oldest_needed(bus, retention.orphan_grace, warned=warned)
    removed = 0
    cuts: list[str] = []
    # With a keyring what goes is noted first (an audit must not call it a gap), so only
    # the exact step runs: it removes precisely what was noted.
    noted = bus.keyring
    if retention.max_age is not None:
        cut = time_to_id((time.time() if now is None else now) - retention.max_age)
        cut = cut if needed is None else min(cut, needed, key=id_key)
        if noted is None:
            removed += await redis.xtrim(key, minid=cut, limit=0)
        cuts.append(cut)
    if retention.max_len is not None:
        excess = await redis.xlen(key) - retention.max_len
        if excess > 0 and noted is None:
            bulk = (
                await redis.xtrim(key, maxlen=retention.max_len, limit=0)
                if needed is None
                else await redis.xtrim(key, minid=needed, limit=excess)
            )
            removed += bulk
            excess -= bulk
        if excess > 0:
            # What is left over is less than a node (or stops at what a group needs).
            end = "+" if needed is None else f"({needed}"
            head = await redis.xrange(key, "-", end, count=excess)
            if head:
                cuts.append(next_id(head[-1][0]))
    if cuts:
        if noted is not None:
            await note_trim(bus, noted, max(cuts, key=id_key))
        removed += await redis.xtrim(key, minid=max(cuts, key=id_key))
    await trim_outcomes(bus)
    return removed


async def trim_outcomes(bus: Bus) -> int:
    """Drop the outcomes of events the stream no longer holds (each trim, not only
    those that removed events: an outcome may be written after its event went)."""
    oldest = await bus.redis.xrange(bus.keys.events, "-", "+", count=1)
    return await bus.outcomes.trim(oldest[0][0]) if oldest else 0
