"""Retention of the event stream: trim by age and length, never past an entry that a
plugin's group has not yet been delivered or has not acknowledged.

Redis trims without looking at groups (it can drop what a slow group never read and
leave dangling pending references), so the trim point is clamped here to the oldest
entry any group still needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ._bus import Bus
from ._history import time_to_id
from ._ids import id_key, next_id

LENGTH_SCAN_LIMIT = 10_000
"""Entries inspected per call to find a length-based trim point; later calls go on."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history the stream keeps; None means no limit of that kind."""

    max_age: float | None = None
    """Seconds."""
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError(f"retention max_age must be positive, not {self.max_age}")
        if self.max_len is not None and self.max_len < 0:
            raise ValueError(f"retention max_len must not be negative, not {self.max_len}")


async def oldest_needed(bus: Bus) -> str | None:
    """The smallest entry id some group still needs (pending, or not yet delivered);
    None when no group needs anything older than the stream's end."""
    needed: list[str] = []
    for group in await bus.redis.xinfo_groups(bus.keys.events):
        oldest = await bus.redis.oldest_pending(bus.keys.events, group.name)
        needed.append(oldest if oldest is not None else next_id(group.last_delivered))
    return min(needed, key=id_key) if needed else None


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
    needed = await oldest_needed(bus)
    if needed is not None and id_key(needed) < id_key(minid):
        minid = needed
    return await bus.redis.xtrim_minid(key, minid)
