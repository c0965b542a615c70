"""The consume loop of one consumer in a plugin's group.

Reads with XREADGROUP in batches, hands each event to the handler in per-app order
(events of one app run one after another; different apps run concurrently up to
``concurrency``), and writes the ack records, failure records and XACKs of everything
that finished in one MULTI/EXEC round trip, so that an ack record is never written
without its XACK or the other way round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from ._bus import Bus
from ._constants import (
    ACK_FIELD,
    ACK_STREAM_MAXLEN,
    ACK_STREAM_REFRESH,
    ACK_STREAM_TTL_MS,
    ACKS_FIELD,
    CLAIM_IDLE,
    EVENT_FIELD,
    READ_BATCH,
    READ_BLOCK_MS,
    RECORD_FIELD,
)
from ._contract import Ack, DeadLetter, Envelope, Failure, decode_envelope, encode
from ._errors import BusUnavailable, GroupMissing
from ._failures import add_failure
from ._lanes import InlineLanes, Lanes
from ._redact import mask_url
from ._redis import Batch
from ._retry import Deferred, RetryPolicy

FLUSH_GATHER = 0.001
"""Seconds a flush waits for the other hooks of a read batch that are still running."""

EXPIRY_MEMORY = 1_000
"""Ack streams whose last PEXPIRE a worker remembers before it forgets the old ones."""

STOP_FLUSH_PATIENCE = 10.0
"""Seconds a stopping worker keeps trying to write its last acks while Redis is away."""

RECONNECT_DELAY_CAP = 5.0
"""Seconds; the longest pause between attempts while Redis is away."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to a handler: the stream entry, its envelope and the attempt."""

    entry_id: str
    envelope: Envelope
    attempt: int = 1
    data: bytes = b""
    """The encoded envelope as read, kept for the dead-letter record."""


Handler = Callable[[Delivery], Awaitable[Ack | Deferred]]


@dataclass(frozen=True, slots=True)
class _Done:
    """A finished entry: what to write for it, and whether to XACK it."""

    entry_id: str
    envelope: Envelope | None
    ack: Ack | None = None
    dead_letter: DeadLetter | None = None
    keep: bool = False
    """Leave the entry pending (a stopping worker hands it to a live consumer)."""


class _Sink(Protocol):
    """Where finished entries go: the flush task's stream, or the inline reader's list."""

    def send_nowait(self, item: _Done) -> None: ...


class _ListSink:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[_Done] = []

    def send_nowait(self, item: _Done) -> None:
        self.items.append(item)


class Consumer:
    """One consumer of plugin ``plugin``'s group: reads, dispatches, acks."""

    def __init__(
        self,
        bus: Bus,
        plugin: str,
        consumer: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        batch: int = READ_BATCH,
        block_ms: int = READ_BLOCK_MS,
        retry: RetryPolicy | None = None,
        claim_idle: float = CLAIM_IDLE,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency of consumer {consumer!r} must be at least 1")
        self.bus = bus
        self.plugin = plugin
        self.consumer = consumer
        self._handler = handler
        self._concurrency = concurrency
        self._batch = batch
        self._block_ms = block_ms
        # Entries read but not yet acked; bounds memory and lets slow hooks push back.
        self._capacity = max(batch, 2 * concurrency)
        self._held = 0
        self._room_freed = anyio.Event()
        self._read_scope: anyio.CancelScope | None = None
        self._flush_now: Callable[[], Awaitable[None]] | None = None
        self._expiry_set: dict[str, float] = {}
        self.retry = retry or RetryPolicy()
        self.claim_idle = claim_idle
        self._stopping = False
        self._reading: set[str] = set()
        self._lanes: Lanes | InlineLanes | None = None
        self._send: _Sink | None = None
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def stopping(self) -> bool:
        return self._stopping

    def in_flight_ids(self) -> list[str]:
        """Entries this consumer read and has not acked yet (their leases to renew)."""
        return sorted(self._reading)

    def room(self) -> int:
        """How many more entries this consumer may take on right now."""
        return 0 if self._stopping else max(0, self._capacity - self._held)

    def offer(
        self, entries: list[tuple[str, dict[bytes, bytes]]], attempts: dict[str, int]
    ) -> None:
        """Take over claimed entries (at most ``room()``); ``attempts`` from XPENDING."""
        if self._lanes is None or self._send is None:
            raise RuntimeError("Consumer.offer() called before run()")
        if self._stopping:
            return  # claimed just as the reader stopped: left pending, a live peer takes it
        for entry_id, fields in entries:
            if entry_id in self._reading:
                continue  # already in hand here; its lease lapsed but it is not lost
            self._held += 1
            self._accept(entry_id, fields, attempts.get(entry_id, 2), self._lanes, self._send)

    def stop(self) -> None:
        """Stop reading; what was read is still handled and acked before ``run`` returns."""
        self._stopping = True
        self._room_freed.set()
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until ``stop()``; reports readiness once the group exists."""
        from ._claims import Claimer

        await self.bus.ensure_group(self.plugin)
        stream, receive = anyio.create_memory_object_stream[_Done](max_buffer_size=math.inf)
        async with anyio.create_task_group() as group:
            lanes: Lanes | InlineLanes
            send: _Sink
            if self._concurrency == 1:
                # The reader runs the hooks and flushes their acks itself, before its
                # next read: nothing waits on another task in the round trip, and the
                # finished entries go to a plain list.
                finished = _ListSink()
                send = finished
                self._flush_now = self._flusher(finished)
                lanes = InlineLanes(self._run_one(send), self._flush_now)
            else:
                send = stream
                lanes = Lanes(group, self._run_one(send), self._concurrency)
                group.start_soon(self._flush_loop, receive)
            self._lanes, self._send = lanes, send
            claimer = Claimer(self, idle=self.claim_idle)
            group.start_soon(claimer.run)
            task_status.started()
            async with stream:
                await self._read_own_pending(lanes, send)
                await self._read_loop(lanes, send)
                await lanes.wait_idle()
                claimer.stop()
        receive.close()  # the flush loop closed it already, unless the reader flushed itself

    async def _read_own_pending(self, lanes: Lanes | InlineLanes, send: _Sink) -> None:
        """Entries this consumer name read in a previous life and never acked come first."""
        redis, key = self.bus.redis, self.bus.keys.events
        after = "0"
        while not self._stopping:
            # An explicit id re-reads this consumer's own pending entries after it (and
            # counts a delivery for each): the standard recovery read, page by page.
            entries = await redis.xreadgroup(
                key, self.plugin, self.consumer, count=self._batch, block_ms=None, start=after
            )
            if not entries:
                return
            after = entries[-1][0]
            pending = await redis.xpending(
                key,
                self.plugin,
                start=entries[0][0],
                end=entries[-1][0],
                count=len(entries),
                consumer=self.consumer,
            )
            attempts = {row.entry_id: row.deliveries for row in pending}
            for entry_id, fields in entries:
                self._held += 1
                self._accept(entry_id, fields, attempts.get(entry_id, 2), lanes, send)
            if isinstance(lanes, InlineLanes):
                await lanes.run_pending()

    async def _read_loop(self, lanes: Lanes | InlineLanes, send: _Sink) -> None:
        redis, key = self.bus.redis, self.bus.keys.events
        delay = 0.05
        while not self._stopping:
            while self._held >= self._capacity and not self._stopping:
                # Backpressure: slow hooks stop the reading, not the memory.
                self._room_freed = anyio.Event()
                await self._room_freed.wait()
            wanted = min(self._batch, self._capacity - self._held)
            if wanted <= 0:
                break
            entries = []
            try:
                # stop() cancels a blocked read at once; anything the server handed over
                # in that instant stays pending under this name and is reclaimed.
                with anyio.CancelScope() as self._read_scope:
                    entries = await redis.xreadgroup(
                        key, self.plugin, self.consumer, count=wanted, block_ms=self._block_ms
                    )
                self._read_scope = None
                delay = 0.05
            except GroupMissing:
                entries = []
                await self.bus.ensure_group(self.plugin)
            except BusUnavailable:
                entries = []
                delay = await _pause(delay)
            self._held += len(entries)
            for entry_id, fields in entries:
                self._accept(entry_id, fields, 1, lanes, send)
            if isinstance(lanes, InlineLanes):
                # Also what a claim offered in the meantime.
                await lanes.run_pending()

    def _accept(
        self,
        entry_id: str,
        fields: dict[bytes, bytes],
        attempt: int,
        lanes: Lanes | InlineLanes,
        send: _Sink,
    ) -> None:
        self._reading.add(entry_id)
        data = fields.get(EVENT_FIELD, b"")
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            reason = "entry was deleted from the stream" if not fields else str(exc)
            letter = self._poison(entry_id, data, reason)
            send.send_nowait(_Done(entry_id, None, dead_letter=letter))
            return
        if envelope.target is not None and envelope.target != self.plugin:
            send.send_nowait(_Done(entry_id, envelope))  # meant for another plugin: XACK only
            return
        if attempt > self.retry.max_deliveries:
            # Delivered more often than the budget without an ack: its handler keeps
            # killing the worker. Do not call it again.
            reason = f"delivered {attempt} times without an ack (the worker died handling it)"
            self._give_up(send, Delivery(entry_id, envelope, attempt, data), reason, reason)
            return
        lanes.put(Delivery(entry_id, envelope, attempt, data))

    def _poison(self, entry_id: str, data: bytes, reason: str) -> DeadLetter:
        now = time.time()
        return DeadLetter(
            entry_id=entry_id,
            event_id=None,
            plugin=self.plugin,
            consumer=self.consumer,
            attempts=1,
            first_error=reason,
            last_error=reason,
            first_time=now,
            last_time=now,
            data=data,
        )

    def _run_one(self, send: _Sink) -> Callable[[Delivery], Awaitable[None]]:
        async def run(delivery: Delivery) -> None:
            first_error: str | None = None
            while True:
                answer = await self._call(delivery)
                if isinstance(answer, Deferred):
                    error = f"deferred: {answer.reason}"
                    delay = answer.delay
                elif answer.status == "error" and not answer.permanent:
                    error = f"{answer.error_type}: {answer.error}"
                    delay = self.retry.delay(delivery.attempt)
                else:
                    send.send_nowait(_Done(delivery.entry_id, delivery.envelope, answer))
                    return
                first_error = first_error or error
                if self.retry.exhausted(delivery.attempt) or self._stopping:
                    if self._stopping and not self.retry.exhausted(delivery.attempt):
                        # Leave it pending: a live consumer reclaims it with its count.
                        send.send_nowait(_Done(delivery.entry_id, delivery.envelope, keep=True))
                        return
                    self._give_up(send, delivery, first_error, error)
                    return
                if self._flush_now is not None:
                    await self._flush_now()  # what finished before must not wait on this
                await anyio.sleep(delay)
                delivery = replace(delivery, attempt=delivery.attempt + 1)

        return run

    async def _call(self, delivery: Delivery) -> Ack | Deferred:
        try:
            return await self._handler(delivery)
        except Exception as exc:  # the handler's own guard failed; never lose the event
            return Ack(
                event_id=delivery.envelope.id,
                plugin=self.plugin,
                consumer=self.consumer,
                status="error",
                error=mask_url(str(exc)),
                error_type=type(exc).__name__,
                attempt=delivery.attempt,
            )

    def _give_up(self, send: _Sink, delivery: Delivery, first: str, last: str) -> None:
        """Dead-letter ``delivery`` and answer its registry with an error ack."""
        envelope, now = delivery.envelope, time.time()
        letter = DeadLetter(
            entry_id=delivery.entry_id,
            event_id=envelope.id,
            type=envelope.type,
            app=envelope.app,
            registry=envelope.registry,
            plugin=self.plugin,
            consumer=self.consumer,
            attempts=delivery.attempt,
            first_error=first,
            last_error=last,
            first_time=envelope.time,
            last_time=now,
            data=delivery.data,
        )
        ack = Ack(
            event_id=envelope.id,
            plugin=self.plugin,
            consumer=self.consumer,
            status="error",
            error=f"dead-lettered after {delivery.attempt} attempts: {last}",
            error_type="DeadLettered",
            attempt=delivery.attempt,
            replay=envelope.replay,
        )
        send.send_nowait(_Done(delivery.entry_id, envelope, ack, letter))

    def _flusher(self, finished: _ListSink) -> Callable[[], Awaitable[None]]:
        async def flush() -> None:
            if finished.items:
                done, finished.items = finished.items, []
                await self._flush(done)

        return flush

    async def _flush_loop(self, receive: MemoryObjectReceiveStream[_Done]) -> None:
        async with receive:
            async for first in receive:
                done = [first]
                self._drain_ready(receive, done)
                if len(done) < self._held:
                    # More of this read's hooks are running: give them a moment, so that
                    # one read batch costs one MULTI/EXEC, not one per finished hook.
                    with anyio.move_on_after(FLUSH_GATHER):
                        while len(done) < self._held:
                            try:
                                done.append(await receive.receive())
                            except anyio.EndOfStream:
                                break
                    self._drain_ready(receive, done)
                await self._flush(done)

    @staticmethod
    def _drain_ready(receive: MemoryObjectReceiveStream[_Done], done: list[_Done]) -> None:
        while True:
            try:
                done.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return

    async def _flush(self, done: list[_Done]) -> None:
        """Ack records, failures, dead letters and XACKs of ``done`` in one MULTI/EXEC."""
        keys = self.bus.keys
        batch = self.bus.redis.batch()
        acks: dict[str, list[Ack]] = {}
        for item in done:
            if item.dead_letter is not None:
                batch.xadd(keys.dlq, {RECORD_FIELD: encode(item.dead_letter)})
                add_failure(batch, keys, self._dead_letter_failure(item.dead_letter))
                self.dead_lettered += 1
            ack, envelope = item.ack, item.envelope
            if ack is None or envelope is None:
                continue
            self.handled += 1
            if ack.status == "error":
                self.failed += 1
                if item.dead_letter is None:
                    add_failure(batch, keys, self._error_failure(envelope, ack))
            if self._wants_record(envelope, ack):
                acks.setdefault(keys.acks(envelope.registry), []).append(ack)
        for stream, records in acks.items():
            # One entry per registry and flush: an XADD per ack costs ~6x the encoding.
            fields = (
                {ACK_FIELD: encode(records[0])}
                if len(records) == 1
                else {ACKS_FIELD: encode(records)}
            )
            batch.xadd(stream, fields, maxlen=ACK_STREAM_MAXLEN)
            self._refresh_expiry(batch, stream)
        batch.xack(keys.events, self.plugin, [item.entry_id for item in done if not item.keep])
        delay = 0.05
        given_up_at = None
        while True:
            try:
                await batch.execute()
                break
            except BusUnavailable:
                # Nothing is lost while Redis is away: the entries stay pending until this
                # batch lands; keep trying with capped backoff. A stopping worker gives
                # up after a while: its entries stay pending and a live peer takes them.
                if self._stopping:
                    given_up_at = given_up_at or time.monotonic() + STOP_FLUSH_PATIENCE
                    if time.monotonic() >= given_up_at:
                        break
                delay = await _pause(delay)
        for item in done:
            self._reading.discard(item.entry_id)
        self._held -= len(done)
        self._room_freed.set()

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

    def _wants_record(self, envelope: Envelope, ack: Ack) -> bool:
        """An ack record goes to the registry when it awaits this plugin, or when it
        carries a result it may merge (health); custom events are fire-and-forget."""
        if self.plugin in envelope.required:
            return True
        return ack.status == "ok" and envelope.type != "custom"

    def _error_failure(self, envelope: Envelope, ack: Ack) -> Failure:
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
        )

    def _dead_letter_failure(self, letter: DeadLetter) -> Failure:
        return Failure(
            event_id=letter.event_id or letter.entry_id,
            type=letter.type or "",
            app=letter.app,
            plugin=self.plugin,
            consumer=self.consumer,
            kind="dead_lettered",
            error=letter.last_error,
            attempt=letter.attempts,
            time=letter.last_time,
            registry=letter.registry,
        )


async def _pause(delay: float) -> float:
    """Sleep with full jitter; return the next, doubled and capped, delay."""
    import random

    await anyio.sleep(random.uniform(0, delay))
    return min(delay * 2, RECONNECT_DELAY_CAP)
