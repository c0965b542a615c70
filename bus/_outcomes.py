"""The outcome history: every plugin's answer to every event, kept with the event.

One sorted set per namespace, ``ro:{ns}:outcomes``. An ``OutcomeRecord`` is an attempt
of one plugin's consumer at one event; each member is the encoded list of the records
one write made for the events of one millisecond, scored by that millisecond of their
stream entry ids. So:

* a worker adds the outcomes of a flush with one ZADD, in the MULTI/EXEC that writes its
  acks and XACKs (nothing extra on the round trip);
* the outcomes of a page of history (a range of entry ids) are one ZRANGE BYSCORE,
  however late they were written (a lagging plugin, a retry minutes later);
* retention trims them with the events (ZREMRANGEBYSCORE below the oldest entry the
  stream keeps), so they take no longer a history than the events do.

A stream keyed by write time could not do the second without reading everything written
since the event. Outcomes are operators' information, recorded as the worker or
registry saw them; unlike acks they are not signed (as failure records are not).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from typing import Final, get_args

from ._contract import (
    RECORDED_STATUSES,
    Ack,
    DeadLetter,
    Envelope,
    Failure,
    FailureKind,
    OutcomeRecord,
    RecordedStatus,
    decode_outcome,
    decode_outcomes,
    encode,
)
from ._heads import EnvelopeHead
from ._ids import id_key
from ._keys import Keys
from ._redis import Redis
from ._redis_batch import Batch

RUN_GAP_MS: Final = 60_000
"""Entries further apart than this are read back with separate ranges: a handful of
events spread over a day costs a few small reads, not the day's outcomes."""

READ_PAGE: Final = 1_000
"""Outcomes read per ZRANGE when paging newest first."""

_FAILURE_STATUS: Final[dict[str, RecordedStatus]] = {
    status: status for status in RECORDED_STATUSES if status in get_args(FailureKind)
}
"""A failure kind that is also an outcome status is recorded as it is; any other
(``forged``) as ``error``."""


def entry_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id: an outcome's score."""
    return int(entry_id.partition("-")[0])


def status_of(ack: Ack) -> RecordedStatus | None:
    """The recorded status of an ack; None for a skipped one (no outcome)."""
    if ack.status == "ok":
        return "ok"
    if ack.status == "skipped":
        return None
    if ack.error_type == "HookTimeout":
        return "timeout"
    if ack.error_type == "DeadLettered":
        return "dead_lettered"
    return "error"


def of_ack(
    entry_id: str,
    envelope: Envelope | EnvelopeHead,
    ack: Ack,
    *,
    now: float | None = None,
    dead_lettered: bool = False,
) -> OutcomeRecord | None:
    """The outcome a worker's ack records (``dead_lettered`` when the ack goes with a
    dead letter, whatever its error); None for a skipped ack."""
    status = status_of(ack)
    if status is None:
        return None
    if dead_lettered:
        status = "dead_lettered"
    return OutcomeRecord(
        entry_id=entry_id,
        event_id=ack.event_id,
        type=envelope.type,
        app=envelope.app,
        plugin=ack.plugin,
        consumer=ack.consumer,
        status=status,
        attempt=ack.attempt,
        duration=ack.duration,
        time=time.time() if now is None else now,
        error=ack.error,
        error_type=ack.error_type,
        traceback=ack.traceback,
        replay=ack.replay,
    )


def of_failure(entry_id: str, failure: Failure) -> OutcomeRecord:
    """The outcome of a failure a registry decided (a timeout, nobody there, a crash)."""
    return OutcomeRecord(
        entry_id=entry_id,
        event_id=failure.event_id,
        type=failure.type,
        app=failure.app,
        plugin=failure.plugin,
        consumer=failure.consumer,
        status=_FAILURE_STATUS.get(failure.kind, "error"),
        attempt=failure.attempt,
        time=failure.time,
        error=failure.error,
        traceback=failure.traceback,
    )


def of_letter(letter: DeadLetter) -> OutcomeRecord | None:
    """The outcome of a dead letter written without an ack (an event refused unread);
    None for an entry that was no event at all."""
    if letter.event_id is None:
        return None
    status: RecordedStatus = (
        "unauthenticated" if letter.reason == "unauthenticated" else "dead_lettered"
    )
    return OutcomeRecord(
        entry_id=letter.entry_id,
        event_id=letter.event_id,
        type=letter.type or "",
        app=letter.app,
        plugin=letter.plugin,
        consumer=letter.consumer,
        status=status,
        attempt=letter.attempts,
        time=letter.last_time,
        error=letter.last_error,
        traceback=letter.traceback,
    )


def add_outcomes(batch: Batch, keys: Keys, records: Iterable[OutcomeRecord]) -> None:
    """Queue ``records`` into ``batch`` as one ZADD (nothing when there are none): one
    member per millisecond of their events' entries, the list of that millisecond's
    records. A read batch's events mostly share a few milliseconds (they were published
    in bursts), so a flush adds a few members, not one per event: a few skiplist nodes
    for the server and a few arguments for the client to pack."""
    grouped: dict[int, list[OutcomeRecord]] = {}
    for record in records:
        grouped.setdefault(entry_ms(record.entry_id), []).append(record)
    batch.zadd(keys.outcomes, {encode(group): ms for ms, group in grouped.items()})


def matches(
    record: OutcomeRecord,
    *,
    plugin: str | None = None,
    consumer: str | None = None,
    statuses: Collection[str] = (),
) -> bool:
    """Whether ``record`` is of ``plugin``, ``consumer`` and one of ``statuses`` (each
    filter applies when given)."""
    return (
        (plugin is None or record.plugin == plugin)
        and (consumer is None or record.consumer == consumer)
        and (not statuses or record.status in statuses)
    )


def _runs(millis: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted milliseconds as (first, last) runs whose gaps are at most RUN_GAP_MS."""
    runs: list[tuple[int, int]] = []
    for ms in millis:
        if runs and ms - runs[-1][1] <= RUN_GAP_MS:
            runs[-1] = (runs[-1][0], ms)
        else:
            runs.append((ms, ms))
    return runs


class OutcomeLog:
    """The outcome history of one namespace (``bus.outcomes``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, records: Sequence[OutcomeRecord]) -> None:
        """Add ``records`` (one ZADD); workers add theirs with their acks instead."""
        if records:
            batch = self._redis.batch(atomic=False)
            add_outcomes(batch, self._keys, records)
            await batch.execute()

    async def for_events(self, entry_ids: Iterable[str]) -> dict[str, list[OutcomeRecord]]:
        """The outcomes of the events at stream entries ``entry_ids``
        (``HistoryEntry.entry_id``): entry id -> its outcomes, oldest first. An entry
        without any outcome yet maps to an empty list."""
        wanted: dict[str, list[OutcomeRecord]] = {entry_id: [] for entry_id in entry_ids}
        for first, last in _runs(sorted({entry_ms(entry_id) for entry_id in wanted})):
            for record in await self.between(first, last):
                found = wanted.get(record.entry_id)
                if found is not None:
                    found.append(record)
        return wanted

    async def between(self, first_ms: int, last_ms: int | None = None) -> list[OutcomeRecord]:
        """The outcomes of the events whose entries were added from millisecond
        ``first_ms`` to ``last_ms`` (None: to the newest), oldest event first and, per
        event, in the order they were recorded."""
        high = "+inf" if last_ms is None else str(last_ms)
        members = await self._redis.zrange_by_score(
            self._keys.outcomes, str(first_ms), high, count=-1
        )
        return _ordered(members)

    async def recent(
        self,
        count: int = 20,
        *,
        plugin: str | None = None,
        consumer: str | None = None,
        statuses: Collection[str] = (),
    ) -> list[OutcomeRecord]:
        """Up to ``count`` outcomes of the newest events first (and per event, the
        latest recorded first), optionally of one plugin, consumer or statuses."""
        found: list[OutcomeRecord] = []
        high = "+inf"
        while len(found) < count:
            members = await self._redis.zrange_by_score(
                self._keys.outcomes, "-inf", high, count=READ_PAGE, reverse=True
            )
            if not members:
                break
            page = _ordered(members)
            lowest, newest = entry_ms(page[0].entry_id), entry_ms(page[-1].entry_id)
            full = len(members) == READ_PAGE
            if full and lowest == newest:
                # One millisecond holds a page or more: take it whole.
                page = await self.between(lowest, lowest)
            elif full:
                # The lowest millisecond may go on past this page: read it whole next.
                page = [record for record in page if entry_ms(record.entry_id) > lowest]
            found.extend(
                record
                for record in reversed(page)
                if matches(record, plugin=plugin, consumer=consumer, statuses=statuses)
            )
            if not full:
                break
            high = f"({lowest}" if lowest == newest else str(lowest)
        return found[:count]

    async def trim(self, oldest_entry: str) -> int:
        """Drop the outcomes of events older than stream entry ``oldest_entry`` (the
        oldest the event stream still holds); returns how many went."""
        return await self._redis.zremrangebyscore(
            self._keys.outcomes, float("-inf"), entry_ms(oldest_entry) - 1
        )


def _decoded(member: bytes) -> list[OutcomeRecord]:
    """The records of one member: a list of them (or, as first written, a single one)."""
    if member[:1] in _MAP_HEADS:
        return [decode_outcome(member)]
    return decode_outcomes(member)


_MAP_HEADS: Final = frozenset({bytes([head]) for head in range(0x80, 0x90)} | {b"\xde", b"\xdf"})
"""First bytes of a MessagePack map (a single record); a list starts otherwise."""


def _ordered(members: Sequence[bytes]) -> list[OutcomeRecord]:
    """Decoded records, by event entry, then by when each was recorded and attempt
    (retried attempts are recorded with the last, at the same time)."""
    records = [record for member in members for record in _decoded(member)]
    records.sort(key=lambda record: (id_key(record.entry_id), record.time, record.attempt))
    return records
