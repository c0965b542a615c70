"""The ack flush path of one consumer: what finished goes out in one MULTI/EXEC.

Ack records, failure records, dead letters and the XACKs of a set of finished entries
are written in one transaction, so that an ack record is never written without its
XACK or the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from msgspec.structs import replace

from ._bus import Bus
from ._constants import (
    ACK_FIELD,
    ACK_STREAM_MAXLEN,
    ACK_STREAM_REFRESH,
    ACK_STREAM_TTL_MS,
    ACKS_FIELD,
    SIGNATURE_FIELD,
)
from ._contract import Ack, DeadLetter, Envelope, Failure, OutcomeRecord, encode
from ._delivery import Done, ListSink
from ._dlq_bounds import add_dead_letter, cut_down, first_to_dead_letter, is_garbage
from ._errors import BusUnavailable, GroupMissing
from ._failures import add_failure
from ._heads import EnvelopeHead
from ._ids import sorted_ids
from ._outcomes import add_outcomes, of_ack, of_letter
from ._redis_batch import Batch
from ._retry import Outage

FLUSH_GATHER = 0.001
"""Seconds a flush waits for the other hooks of a read batch that are still running."""

EXPIRY_MEMORY = 1_000
"""Ack streams whose last PEXPIRE a worker remembers before it forgets the old ones."""

STOP_FLUSH_PATIENCE = 10.0
"""Seconds a stopping worker keeps trying to write its last acks while Redis is away."""

UNSETTLED_SCAN = 100_000
"""Pending rows a retried flush reads to find which of its entries are still pending."""


class Flusher:
    """Writes what one consumer finished, and tells it which entries are settled."""

    def __init__(
        self,
        bus: Bus,
        plugin: str,
        consumer: str,
        *,
        stopping: Callable[[], bool],
        settled: Callable[[list[Done]], None],
    ) -> None:
        self.bus = bus
        self.plugin = plugin
        self.consumer = consumer
        self._stopping = stopping
        self._settled = settled
        self._expiry_set: dict[str, float] = {}
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0
        self.last_duration: float | None = None

    def inline(self, finished: ListSink) -> Callable[[], Awaitable[None]]:
        """A flush of whatever ``finished`` holds, for the reader to call itself."""

        async def flush() -> None:
            if finished.items:
                done, finished.items = finished.items, []
                await self.flush(done)

        return flush

    async def run(self, receive: MemoryObjectReceiveStream[Done], held: Callable[[], int]) -> None:
        """Flush what arrives on ``receive``, a read batch at a time, until it closes."""
        async with receive:
            async for first in receive:
                done = [first]
                _drain_ready(receive, done)
                if len(done) < held():
                    # More of this read's hooks are running: give them a moment, so that
                    # one read batch costs one MULTI/EXEC, not one per finished hook.
                    with anyio.move_on_after(FLUSH_GATHER):
                        while len(done) < held():
                            try:
                                done.append(await receive.receive())
                            except anyio.EndOfStream:
                                break
                    _drain_ready(receive, done)
                await self.flush(done)

    async def flush(self, done: list[Done]) -> None:
        """Ack records, failures, dead letters and XACKs of ``done`` in one MULTI/EXEC.

        Idempotent across a lost reply: a retry first asks which of its entries are
        still pending and writes again only for those (the transaction that lost its
        reply either ran whole, XACKs included, or not at all).
        """
        self._count(done)
        outage = Outage()
        given_up_at = None
        batch: Batch | None = None
        uncertain = False
        while True:
            try:
                if batch is None or uncertain:
                    unsettled = await self._unsettled(done) if uncertain else done
                    batch = self._batch(unsettled, await self._left_out(unsettled))
                await batch.execute()
                break
            except BusUnavailable:
                # Nothing is lost while Redis is away: the entries stay pending until this
                # batch lands; keep trying with capped backoff. A stopping worker gives
                # up after a while: its entries stay pending and a live peer takes them.
                uncertain = True
                if self._stopping():
                    given_up_at = given_up_at or time.monotonic() + STOP_FLUSH_PATIENCE
                    if time.monotonic() >= given_up_at:
                        break
                await outage.pause()
        self._settled(done)

    async def _unsettled(self, done: list[Done]) -> list[Done]:
        """The items of ``done`` whose entries are still pending in the group (XPENDING):
        those whose XACK, and so whose records, did not land yet."""
        ids = sorted_ids(item.entry_id for item in done if not item.keep)
        if not ids:
            return []
        try:
            rows = await self.bus.redis.xpending(
                self.bus.keys.events,
                self.plugin,
                start=ids[0],
                end=ids[-1],
                count=UNSETTLED_SCAN,
            )
        except GroupMissing:
            # The group went with the namespace (Redis restarted empty): no pending list
            # says what landed. Write it all again; a registry keeps an event's first ack.
            return [item for item in done if not item.keep]
        pending = {row.entry_id for row in rows}
        return [item for item in done if not item.keep and item.entry_id in pending]

    async def _left_out(self, done: list[Done]) -> set[str]:
        """Entries whose dead letter another plugin writes: an entry that was no
        envelope at all is dead-lettered once, not once per plugin."""
        redis, keys, bounds = self.bus.redis, self.bus.keys, self.bus.dead_letters
        return {
            item.entry_id
            for item in done
            if item.dead_letter is not None
            and is_garbage(item.dead_letter)
            and not await first_to_dead_letter(redis, keys, bounds, item.entry_id, self.plugin)
        }

    def _count(self, done: list[Done]) -> None:
        for item in done:
            if item.dead_letter is not None:
                self.dead_lettered += 1
            # A skipped event (a hook the plugin does not implement) was not handled.
            if item.ack is not None and item.envelope is not None and item.ack.status != "skipped":
                self.handled += 1
                self.last_duration = item.ack.duration
                if item.ack.status == "error":
                    self.failed += 1

    def _batch(self, done: list[Done], left_out: set[str]) -> Batch:
        keys, bounds = self.bus.keys, self.bus.dead_letters
        batch = self.bus.redis.batch()
        acks: dict[str, list[Ack]] = {}
        outcomes: list[OutcomeRecord | None] = []
        now = time.time()
        for item in done:
            envelope = item.envelope
            if envelope is not None:
                outcomes.extend(of_ack(item.entry_id, envelope, t, now=now) for t in item.tries)
            if item.dead_letter is not None:
                if item.entry_id not in left_out:
                    letter = cut_down(item.dead_letter, bounds)
                    add_dead_letter(batch, keys, letter, bounds)
                add_failure(batch, keys, self._dead_letter_failure(item.dead_letter))
                if item.ack is None:
                    outcomes.append(of_letter(item.dead_letter))
            ack = item.ack
            if ack is None or envelope is None:
                continue
            dead = item.dead_letter is not None
            outcomes.append(of_ack(item.entry_id, envelope, ack, now=now, dead_lettered=dead))
            if (
                ack.status == "error"
                and item.dead_letter is None
                and isinstance(envelope, Envelope)
            ):
                add_failure(batch, keys, self._error_failure(item.entry_id, envelope, ack))
            if self._wants_record(envelope, ack):
                # The registry needs the error, not its traceback (the outcome keeps it).
                if ack.traceback is not None:
                    ack = replace(ack, traceback=None)
                acks.setdefault(keys.acks(envelope.registry), []).append(ack)
        # One ZADD for the whole flush, in its MULTI/EXEC: kept exactly when acked.
        add_outcomes(batch, keys, [record for record in outcomes if record is not None])
        for stream, records in acks.items():
            # One entry per registry and flush: an XADD per ack costs ~6x the encoding.
            fields = (
                {ACK_FIELD: encode(records[0])}
                if len(records) == 1
                else {ACKS_FIELD: encode(records)}
            )
            if self.bus.keyring is not None:
                (data,) = fields.values()
                fields[SIGNATURE_FIELD] = self.bus.keyring.seal_acks(self.plugin, data)
            batch.xadd(stream, fields, maxlen=ACK_STREAM_MAXLEN)
            self._refresh_expiry(batch, stream)
        batch.xack(keys.events, self.plugin, [item.entry_id for item in done if not item.keep])
        return batch

    def _refresh_expiry(self, batch: Batch, stream: str) -> None:
        """PEXPIRE an ack stream at most once a minute per worker (not once per flush)."""
        now = time.monotonic()
        if now - self._expiry_set.get(stream, -ACK_STREAM_REFRESH) < ACK_STREAM_REFRESH:
            return
        batch.pexpire(stream, ACK_STREAM_TTL_MS)
        self._expiry_set[stream] = now
        if len(self._expiry_set) > EXPIRY_MEMORY:
            self._expiry_set = {
                key: at for key, at in self._expiry_set.items() if now - at < ACK_STREAM_REFRESH
            }

    def _wants_record(self, envelope: Envelope | EnvelopeHead, ack: Ack) -> bool:
        """An ack record goes to the registry when it awaits this plugin, or when it
        carries a result it may merge (health); custom events are fire-and-forget."""
        if self.plugin in envelope.required:
            return True
        return ack.status == "ok" and envelope.type != "custom"

    def _error_failure(self, entry_id: str, envelope: Envelope, ack: Ack) -> Failure:
        return Failure(
            event_id=envelope.id,
            type=envelope.type,
            app=envelope.app,
            plugin=self.plugin,
            consumer=self.consumer,
            kind="timeout" if ack.error_type == "HookTimeout" else "error",
            error=f"{ack.error_type}: {ack.error}" if ack.error_type else ack.error or "",
            attempt=ack.attempt,
            time=time.time(),
            registry=envelope.registry,
            traceback=ack.traceback,
            entry_id=entry_id,
        )

    def _dead_letter_failure(self, letter: DeadLetter) -> Failure:
        return Failure(
            event_id=letter.event_id or letter.entry_id,
            type=letter.type or "",
            app=letter.app,
            plugin=self.plugin,
            consumer=self.consumer,
            kind="unauthenticated" if letter.reason == "unauthenticated" else "dead_lettered",
            error=letter.last_error,
            attempt=letter.attempts,
            time=letter.last_time,
            registry=letter.registry,
            traceback=letter.traceback,
            entry_id=letter.entry_id,
        )


def _drain_ready(receive: MemoryObjectReceiveStream[Done], done: list[Done]) -> None:
    while True:
        try:
            done.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return
