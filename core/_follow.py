"""``replay --follow``: new events as they are published, and each plugin's outcome of
them as it is recorded, until the caller stops reading.

Events come from a blocking read of the stream (XREAD BLOCK: nothing is sent while the
bus is quiet). Outcomes are recorded into a sorted set keyed by their event, which has
no "what is new since" cursor: the outcomes of the events shown in the last
``FOLLOW_WINDOW`` seconds (the last ``FOLLOW_OPEN`` of them at most) are read again at
most every ``OUTCOME_POLL`` seconds (one ZRANGE), and those not seen yet are given out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, TypeVar

import anyio
import msgspec

from rapid_objection.bus import Bus, BusUnavailable, HistoryEntry, OutcomeRecord
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope
from rapid_objection.bus._outcomes import entry_ms

from ._outage import OutageNotice
from ._replay import Selection

FOLLOW_WINDOW: Final = 300.0
"""Seconds after showing an event that its outcomes are still looked for: longer than
any hook timeout and retry series; a re-drive later is a new event of its own."""

FOLLOW_OPEN: Final = 1_000
"""Events whose outcomes are looked for at most (the newest shown): each look reads the
outcomes of every event since the oldest of them, so on a busy bus the window is
these last events rather than FOLLOW_WINDOW seconds (1,000 events at 3 plugins read
about 3,000 small records four times a second)."""

OUTCOME_POLL: Final = 0.25
"""Seconds between two reads of the shown events' outcomes (while any is open)."""

FOLLOW_BLOCK_MS: Final = 250
"""XREAD BLOCK of the follow loop: how long it may wait for an event before it looks
for outcomes again."""

FOLLOW_READ_COUNT: Final = 500

_T = TypeVar("_T")


OutcomeKey = tuple[str, str | None, int, str, float]
"""What tells one recorded outcome from another of the same event (``outcome_key``)."""


@dataclass(slots=True)
class _Open:
    entry: HistoryEntry
    since: float
    shown: bool
    seen: set[OutcomeKey] = field(default_factory=set)


def outcome_key(record: OutcomeRecord) -> OutcomeKey:
    """What tells one recorded outcome from another of the same event."""
    return (record.plugin, record.consumer, record.attempt, record.status, record.time)


async def follow(
    bus: Bus,
    selection: Selection,
    *,
    after: str,
    backlog: Sequence[HistoryEntry] = (),
    outage: OutageNotice | None = None,
) -> AsyncIterator[HistoryEntry | OutcomeRecord]:
    """The events after stream entry ``after`` that ``selection`` picks (app, types),
    and their outcomes (those its outcome filters keep), as they come; ``backlog``
    (events shown before) are given out first and their outcomes are followed too.

    With outcome filters an event is given out just before its first outcome that
    the filters keep (an event nobody answered that way is never shown). With
    ``outage``, a bus that becomes unavailable is waited for (``outage`` is told) and
    following goes on from where it was, nothing given out twice; without, the
    ``BusUnavailable`` is raised.
    """
    opened: dict[str, _Open] = {}
    position = after

    def take(entry: HistoryEntry) -> HistoryEntry | None:
        show = not selection.by_outcome
        opened[entry.entry_id] = _Open(entry, time.monotonic(), shown=show)
        if len(opened) > FOLLOW_OPEN:
            del opened[next(iter(opened))]  # the oldest shown: insertion order
        return entry if show else None

    def taken(entries: Sequence[HistoryEntry]) -> list[HistoryEntry]:
        return [shown for entry in entries if (shown := take(entry)) is not None]

    for shown in taken(backlog):
        yield shown

    polled = 0.0
    while True:
        read = await _tried(partial(_read, bus, selection, position), outage)
        if read is None:
            continue
        position, entries = read
        for shown in taken(entries):
            yield shown
        now = time.monotonic()
        if not opened or now - polled < OUTCOME_POLL:
            continue
        _close_expired(opened, now)
        if not opened:
            continue
        first = min(entry_ms(entry_id) for entry_id in opened)
        looked = await _tried(partial(_outcomes_since, bus, selection, first, position), outage)
        if looked is None:
            continue
        polled = now
        records, (position, entries) = looked
        for shown in taken(entries):
            yield shown
        for record in records:
            found = opened.get(record.entry_id)
            if found is None or outcome_key(record) in found.seen:
                continue
            found.seen.add(outcome_key(record))
            if not selection.outcomes_of([record]):
                continue
            if not found.shown:
                found.shown = True
                yield found.entry
            yield record


def _close_expired(opened: dict[str, _Open], now: float) -> None:
    """Stop looking for the outcomes of events shown more than FOLLOW_WINDOW ago."""
    for entry_id in [k for k, o in opened.items() if now - o.since > FOLLOW_WINDOW]:
        del opened[entry_id]


async def _tried(call: Callable[[], Awaitable[_T]], outage: OutageNotice | None) -> _T | None:
    """``call``'s answer; None while the bus is away (told to ``outage``, and waited
    for; without one, the ``BusUnavailable`` is raised)."""
    try:
        answer = await call()
    except BusUnavailable as exc:
        if outage is None:
            raise
        outage.failed(exc)
        await anyio.sleep(outage.every)
        return None
    if outage is not None:
        outage.answered()
    return answer


async def _outcomes_since(
    bus: Bus, selection: Selection, first: int, after: str
) -> tuple[list[OutcomeRecord], tuple[str, list[HistoryEntry]]]:
    """The outcomes recorded of the events since ``first`` (ms), and then the events
    published after ``after`` up to now: an outcome is recorded after its event, so each
    event published before an outcome shown is shown before it (a blocking read may
    have returned with the first of several)."""
    records = await bus.outcomes.between(first)
    return records, await _read(bus, selection, after, block=False)


async def _read(
    bus: Bus, selection: Selection, after: str, *, block: bool = True
) -> tuple[str, list[HistoryEntry]]:
    """The newest entry read after ``after`` (waiting up to FOLLOW_BLOCK_MS for one when
    ``block``), and the events among them of the selection's app and types."""
    entries = await bus.redis.xread(
        bus.keys.events,
        after,
        count=FOLLOW_READ_COUNT,
        block_ms=FOLLOW_BLOCK_MS if block else None,
    )
    found: list[HistoryEntry] = []
    for entry_id, fields in entries:
        try:
            envelope = decode_envelope(fields.get(EVENT_FIELD, b""))
        except (msgspec.DecodeError, ValueError):
            continue  # not an event: nothing to show (status counts dead letters)
        if (selection.app is None or envelope.app == selection.app) and (
            not selection.types or envelope.type in selection.types
        ):
            found.append(HistoryEntry(entry_id, envelope))
    return (entries[-1][0] if entries else after), found
