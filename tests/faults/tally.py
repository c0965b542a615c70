"""What happened to every entry of the event stream, for one plugin, from the server side.

An entry is *delivered* when the plugin counted its event as handled, *dead-lettered*
when the dead-letter stream has it for the plugin, and *lost* when neither. A
*duplicate* is a handling beyond the entry's copies in the stream (a publisher that
wrote an event twice is not a duplicate delivery).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import msgspec

from rapid_objection.bus import Bus, DeadLetter
from rapid_objection.bus._constants import EVENT_FIELD, RECORD_FIELD
from rapid_objection.bus._contract import decode_ack_entry, decode_dead_letter, decode_envelope

from .plugins import Count, count_key

EVERYTHING = 1_000_000
"""COUNT for reading a whole stream of a scenario in one XRANGE."""


@dataclass(frozen=True, slots=True)
class Tally:
    events: int
    delivered: int
    duplicates: int
    dead_lettered: int
    lost: int
    duplicated: frozenset[str]
    """Event ids handled more often than they were published."""
    lost_entries: tuple[str, ...]
    letters: tuple[DeadLetter, ...]
    """This plugin's dead letters, oldest first."""
    pending: int
    lag: int | None

    def line(self) -> str:
        return (
            f"events={self.events} delivered={self.delivered} duplicates={self.duplicates} "
            f"dead_lettered={self.dead_lettered} lost={self.lost}"
        )


async def counts(bus: Bus, kind: Count, plugin: str) -> dict[str, int]:
    """Event id -> how often ``plugin``'s hook got to ``kind``."""
    calls = await bus.redis.hgetall(count_key(bus.keys, kind, plugin))
    return dict(Counter(call.rpartition("|")[0] for call in calls))


async def ack_records(bus: Bus, registry: str) -> Counter[str]:
    """Event id -> how many ack records the workers wrote to ``registry``'s ack stream."""
    entries = await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=EVERYTHING)
    return Counter(ack.event_id for _, fields in entries for ack in decode_ack_entry(fields))


async def event_ids(bus: Bus, entry_ids: list[str]) -> set[str]:
    """The event ids of stream entries (those that decode)."""
    found = set()
    for entry_id in entry_ids:
        for _, fields in await bus.redis.xrange(bus.keys.events, entry_id, entry_id, count=1):
            found.add(decode_envelope(fields[EVENT_FIELD]).id)
    return found


async def dead_letters(bus: Bus, plugin: str) -> list[DeadLetter]:
    entries = await bus.redis.xrange(bus.keys.dlq, "-", "+", count=EVERYTHING)
    letters = [decode_dead_letter(fields[RECORD_FIELD]) for _, fields in entries]
    return [letter for letter in letters if letter.plugin == plugin]


async def tally(bus: Bus, plugin: str) -> Tally:
    entries = await bus.redis.xrange(bus.keys.events, "-", "+", count=EVERYTHING)
    copies: Counter[str] = Counter()
    event_of: dict[str, str] = {}
    for entry_id, fields in entries:
        try:
            envelope = decode_envelope(fields.get(EVENT_FIELD, b""))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            continue  # poison: it can only be dead-lettered
        copies[envelope.id] += 1
        event_of[entry_id] = envelope.id
    handled = await counts(bus, "handled", plugin)
    letters = await dead_letters(bus, plugin)
    lettered = {letter.entry_id for letter in letters}
    delivered = {entry for entry, event in event_of.items() if handled.get(event, 0) > 0}
    lost = [entry for entry, _ in entries if entry not in delivered and entry not in lettered]
    duplicated = {event for event, times in handled.items() if times > copies[event]}
    groups = {group.name: group for group in await bus.redis.xinfo_groups(bus.keys.events)}
    group = groups.get(plugin)
    return Tally(
        events=len(entries),
        delivered=len(delivered),
        duplicates=sum(handled[event] - copies[event] for event in duplicated),
        dead_lettered=len(letters),
        lost=len(lost),
        duplicated=frozenset(duplicated),
        lost_entries=tuple(lost),
        letters=tuple(letters),
        pending=group.pending if group is not None else 0,
        lag=group.lag if group is not None else None,
    )
