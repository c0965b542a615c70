"""The consume loop of one consumer in a plugin's group.

Reads with XREADGROUP in batches and hands each event to the handler in per-app order
(events of one app run one after another; different apps run concurrently up to
``concurrency``); the ``Flusher`` writes what finished, the ``Claimer`` keeps the
leases and reclaims what dead consumers left.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import anyio
import msgspec
from anyio.abc import TaskStatus

from ._bus import Bus
from ._claims import Claimer
from ._constants import CLAIM_IDLE, EVENT_FIELD, READ_BATCH, READ_BLOCK_MS, SIGNATURE_FIELD
from ._contract import Ack, DeadLetter, decode_envelope
from ._delivery import Delivery, Done, Handler, ListSink, Prepare, Sink
from ._errors import BusUnavailable, GroupMissing
from ._event_check import EventCheck
from ._flush import Flusher
from ._heads import EnvelopeHead, decode_head
from ._ids import sorted_ids
from ._lanes import InlineLanes, Lanes, TaskLanes
from ._order import PENDING_SCAN, AppOrder
from ._redact import mask_url
from ._redis_records import Entry, PendingEntry
from ._restore import Restorer
from ._retry import Deferred, Outage, RetryPolicy
from ._tracebacks import traceback_text

__all__ = ["Consumer", "Delivery", "Handler"]

READ_AHEAD = 0.1
"""Seconds of hook work per lane a consumer reads ahead (a full batch for fast hooks)."""

RECHECK_MS = 10
"""Milliseconds between two looks at the group while entries wait for order."""

MAX_DEFERRALS = 100
"""Times one delivery may answer ``RetryLater`` before it is dead-lettered; deferrals
do not spend the ``max_deliveries`` budget (a marker of a crashed worker is waited out)."""


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
        prepare: Prepare | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency of consumer {consumer!r} must be at least 1")
        self.bus = bus
        self.plugin = plugin
        self.consumer = consumer
        self._handler = handler
        self._prepare = prepare
        self._concurrency = concurrency
        self._batch = batch
        self._block_ms = block_ms
        # Entries read but not yet acked; bounds memory and lets slow hooks push back.
        self._capacity = max(batch, 2 * concurrency)
        self._held = 0
        self._room_freed = anyio.Event()
        self._read_scope: anyio.CancelScope | None = None
        self._flush_now: Callable[[], Awaitable[None]] | None = None
        self.retry = retry or RetryPolicy()
        self.claim_idle = claim_idle
        self._stopping = False
        self._reading: set[str] = set()
        self._lanes: Lanes | None = None
        self._send: Sink | None = None
        self._hook_time = 0.0
        """Seconds a hook call takes, a moving average: how much to read ahead."""
        self._check = (
            EventCheck(bus, bus.keyring, plugin, consumer) if bus.keyring is not None else None
        )
        self._order = AppOrder(
            bus.redis,
            bus.keys.events,
            plugin,
            consumer,
            self._reading.__contains__,
            screen=self._check,
        )
        self.flusher = Flusher(
            bus, plugin, consumer, stopping=lambda: self._stopping, settled=self._settled
        )
        self.position = "0-0"
        """The newest entry the group handed this consumer (before the first read: the
        group's position when it started). A group the namespace lost comes back there:
        every entry after it is delivered, and none before it again."""
        self.restorer = Restorer(
            f"consumer {consumer!r} of plugin {plugin!r}",
            f"namespace {bus.namespace!r} at {bus.url}",
        )
        """What this consumer puts back when the namespace lost it: its group first (a
        worker adds its manifest and heartbeat)."""
        self.restorer.add(f"consumer group {plugin!r}", self.restore_group)

    @property
    def handled(self) -> int:
        return self.flusher.handled

    @property
    def failed(self) -> int:
        return self.flusher.failed

    @property
    def last_duration(self) -> float | None:
        """Seconds the last hook this consumer ran took; None before its first."""
        return self.flusher.last_duration

    @property
    def dead_lettered(self) -> int:
        return self.flusher.dead_lettered

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def stopping(self) -> bool:
        return self._stopping

    def in_flight_ids(self) -> list[str]:
        """Entries this consumer read and has not acked yet (their leases to renew)."""
        return sorted_ids(self._reading)

    def room(self) -> int:
        """How many more entries this consumer may take on right now."""
        # Entries held back for order do not count: taking over the older entry they
        # wait for must stay possible however many of them there are.
        active = self._held - len(self._order)
        return 0 if self._stopping else max(0, self._capacity - active)

    async def offer(self, entries: list[Entry], attempts: dict[str, int]) -> None:
        """Take over claimed entries (at most ``room()``); ``attempts`` from XPENDING."""
        if self._lanes is None or self._send is None:
            raise RuntimeError("Consumer.offer() called before run()")
        if self._stopping:
            return  # claimed just as the reader stopped: left pending, a live peer takes it
        async with self._order.lock:
            taken = []
            for entry_id, fields in entries:
                if entry_id in self._reading:
                    continue  # already in hand here; its lease lapsed but it is not lost
                self._held += 1
                taken.append(self._accept(entry_id, fields, attempts.get(entry_id, 2), self._send))
            await self._admit_locked([delivery for delivery in taken if delivery is not None])

    def stop(self) -> None:
        """Stop reading; what was read is still handled and acked before ``run`` returns."""
        self._stopping = True
        self._room_freed.set()
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def restore_group(self) -> bool:
        """Create the group again, after ``position``, unless it exists; True when it did
        not. After an empty restart the stream holds only entries newer than any it held
        before (the server's clock numbers them), so the first event published after the
        loss is delivered, whether it came before the group or after."""
        return await self.bus.ensure_group(self.plugin, start=self.position)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until ``stop()``; reports readiness once the group exists."""
        await self.bus.ensure_group(self.plugin)
        for info in await self.bus.redis.xinfo_groups(self.bus.keys.events):
            if info.name == self.plugin:
                self.position = info.last_delivered
        stream, receive = anyio.create_memory_object_stream[Done](max_buffer_size=math.inf)
        # ``receive`` closed however the group ends (a registry's shutdown may cancel it).
        async with receive, anyio.create_task_group() as group:
            lanes: Lanes
            send: Sink
            if self._concurrency == 1:
                # The reader runs the hooks and flushes their acks itself, before its
                # next read: nothing waits on another task in the round trip, and the
                # finished entries go to a plain list.
                finished = ListSink()
                send = finished
                self._flush_now = self.flusher.inline(finished)
                lanes = InlineLanes(group, self._run_one(send), self._flush_now)
            else:
                send = stream
                lanes = TaskLanes(group, self._run_one(send), self._concurrency)
                group.start_soon(self.flusher.run, receive, lambda: self._held)
            self._lanes, self._send = lanes, send
            claimer = Claimer(self, idle=self.claim_idle)
            group.start_soon(claimer.run)
            task_status.started()
            async with stream:
                await self._read_own_pending(lanes, send)
                await self._read_loop(lanes, send)
                await self._give_back(send)
                await lanes.wait_idle()
            # Leases are renewed until the last flush is over, not until the stop began:
            # a drain longer than the idle threshold would hand its tail to a peer.
            await self._settled_all()
            claimer.stop()

    async def _read_own_pending(self, lanes: Lanes, send: Sink) -> None:
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
            self._held += len(entries)
            taken = [
                self._accept(entry_id, fields, attempts.get(entry_id, 2), send)
                for entry_id, fields in entries
            ]
            await self._admit([delivery for delivery in taken if delivery is not None])
            await lanes.settle()

    async def _read_loop(self, lanes: Lanes, send: Sink) -> None:
        outage = Outage()
        while not self._stopping:
            while self._held >= self._capacity and not self._stopping:
                # Backpressure: slow hooks stop the reading, not the memory. What waits
                # for order is looked at again meanwhile (it may be all that is held).
                self._room_freed = anyio.Event()
                with anyio.move_on_after(RECHECK_MS / 1000 if self._order.waiting else math.inf):
                    await self._room_freed.wait()
                if self._order.waiting:
                    await self._admit([])
                    await lanes.settle()
            wanted = min(self._batch, self._capacity - self._held, self._read_ahead())
            if wanted <= 0:
                break
            if self._order.waiting:
                # Reading more now would mostly take entries that wait too: leave them
                # to the peer that holds the older one, which runs them in a row, and
                # look again soon.
                self._room_freed = anyio.Event()
                with anyio.move_on_after(RECHECK_MS / 1000):
                    await self._room_freed.wait()
                await self._admit([])
                await lanes.settle()
                continue
            entries: list[Entry] = []
            rows: list[PendingEntry] | None = None
            block_ms = self._block_ms
            try:
                # stop() cancels a blocked read at once; anything the server handed over
                # in that instant stays pending under this name and is reclaimed.
                with anyio.CancelScope() as self._read_scope:
                    entries, rows = await self._read_new(wanted, block_ms)
                self._read_scope = None
                outage.over()
            except GroupMissing:
                entries = []
                try:
                    await self.restorer.restore()
                except BusUnavailable:
                    await outage.pause()
            except BusUnavailable:
                entries = []
                await outage.pause()
            if entries:
                self.position = entries[-1][0]
            self._held += len(entries)
            taken = [self._accept(entry_id, fields, 1, send) for entry_id, fields in entries]
            new = [delivery for delivery in taken if delivery is not None]
            if rows is not None:
                # Judged now, as if read now: what is in hand at this instant is not
                # "elsewhere", even if its ack is flushed before the admission below.
                rows = self._order.elsewhere(rows)
            if new or self._order.waiting:
                await self._admit(new, rows)
            await lanes.settle()  # also what a claim offered in the meantime

    async def _read_new(
        self, count: int, block_ms: int | None
    ) -> tuple[list[Entry], list[PendingEntry] | None]:
        """New entries; and, when the order check can use it, the group's pending list
        read just after them in the same round trip (one round trip per read batch
        fewer, on the round trip's critical path)."""
        redis, key = self.bus.redis, self.bus.keys.events
        if self._order.prefetch:
            return await redis.xreadgroup_and_pending(
                key, self.plugin, self.consumer, count=count, block_ms=block_ms, rows=PENDING_SCAN
            )
        entries = await redis.xreadgroup(
            key, self.plugin, self.consumer, count=count, block_ms=block_ms
        )
        return entries, None

    async def _admit(self, new: list[Delivery], rows: list[PendingEntry] | None = None) -> None:
        """Hand the lanes what may run now; the rest waits for an older one of its app."""
        async with self._order.lock:
            await self._admit_locked(new, rows)

    async def _admit_locked(
        self, new: list[Delivery], rows: list[PendingEntry] | None = None
    ) -> None:
        assert self._lanes is not None
        try:
            runnable = await self._order.admit(new, rows)
        except (BusUnavailable, GroupMissing):
            self._order.waiting.extend(new)  # checked again on the next round
            return
        if self._prepare is not None and runnable:
            await self._prepare(runnable)
        for delivery in runnable:
            self._lanes.put(delivery)
        if self._order.taken_before and self._send is not None:
            # Copies of events this group took before (with a keyring): XACK only.
            for delivery in self._order.taken_before:
                self._send.send_nowait(Done(delivery.entry_id, None))
            self._order.taken_before = []

    def _accept(
        self,
        entry_id: str,
        fields: dict[bytes, bytes],
        attempt: int,
        send: Sink,
    ) -> Delivery | None:
        """The delivery to run for an entry read, or None when it was settled at once."""
        self._reading.add(entry_id)
        data = fields.get(EVENT_FIELD, b"")
        if self._check is not None and fields:
            refused = self._check.refusal(entry_id, fields, data, attempt)
            if refused is not None:
                send.send_nowait(Done(entry_id, None, dead_letter=refused))
                return None
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            reason = "entry was deleted from the stream" if not fields else str(exc)
            head = decode_head(data) if fields else None
            if head is None:
                letter = self._poison(entry_id, data, reason)
                send.send_nowait(Done(entry_id, None, dead_letter=letter))
            elif head.target is None or head.target == self.plugin:
                send.send_nowait(self._unreadable(entry_id, head, data, attempt, reason))
            else:
                send.send_nowait(Done(entry_id, None))  # another plugin's: XACK only
            return None
        if self._check is not None and self._check.too_old(envelope):
            reason = "it is older than the time a group remembers the events it took"
            letter = self._check.letter(entry_id, fields, data, attempt, reason)
            send.send_nowait(Done(entry_id, None, dead_letter=letter))
            return None
        if envelope.target is not None and envelope.target != self.plugin:
            send.send_nowait(Done(entry_id, envelope))  # meant for another plugin: XACK only
            return None
        delivery = Delivery(entry_id, envelope, attempt, data, fields.get(SIGNATURE_FIELD, b""))
        if attempt > self.retry.max_deliveries:
            # Delivered more often than the budget without an ack: its handler keeps
            # killing the worker. Do not call it again.
            reason = f"delivered {attempt} times without an ack (the worker died handling it)"
            self._give_up(send, delivery, reason, reason)
            return None
        return delivery

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

    def _unreadable(
        self, entry_id: str, head: EnvelopeHead, data: bytes, attempt: int, reason: str
    ) -> Done:
        """An event this worker cannot decode in full (a newer schema version, an unknown
        type): dead-lettered, and its registry hears of it now with an error ack."""
        now = time.time()
        letter = DeadLetter(
            entry_id=entry_id,
            event_id=head.id,
            type=head.type,
            app=head.app,
            registry=head.registry,
            plugin=self.plugin,
            consumer=self.consumer,
            attempts=attempt,
            first_error=reason,
            last_error=reason,
            first_time=head.time or now,
            last_time=now,
            data=data,
        )
        ack = Ack(
            event_id=head.id,
            plugin=self.plugin,
            consumer=self.consumer,
            status="error",
            error=reason,
            error_type="UnsupportedEvent",
            attempt=attempt,
            replay=head.replay,
            permanent=True,
        )
        return Done(entry_id, head, ack, letter)

    def _run_one(self, send: Sink) -> Callable[[Delivery], Awaitable[None]]:
        async def run(delivery: Delivery) -> None:
            first_error: str | None = None
            deferrals = 0
            tries: list[Ack] = []
            # Failed attempts retried here: outcomes too, written with the last one.
            while True:
                started = time.perf_counter()
                answer = await self._call(delivery)
                self._hook_time += (time.perf_counter() - started - self._hook_time) / 8
                if isinstance(answer, Deferred):
                    # "Not now" is no failed delivery: it has a budget of its own.
                    deferrals += 1
                    error = f"deferred: {answer.reason}"
                    delay = answer.delay
                    exhausted = deferrals >= MAX_DEFERRALS
                    again = delivery
                elif answer.status == "error" and not answer.permanent:
                    error = f"{answer.error_type}: {answer.error}"
                    delay = self.retry.delay(delivery.attempt)
                    exhausted = self.retry.exhausted(delivery.attempt)
                    again = replace(delivery, attempt=delivery.attempt + 1)
                else:
                    send.send_nowait(
                        Done(delivery.entry_id, delivery.envelope, answer, tries=tuple(tries))
                    )
                    return
                first_error = first_error or error
                if exhausted:
                    traceback = answer.traceback if isinstance(answer, Ack) else None
                    self._give_up(
                        send, delivery, first_error, error, traceback=traceback, tries=tries
                    )
                    return
                if isinstance(answer, Ack):
                    tries.append(answer)
                if self._stopping:
                    # Leave it pending: a live consumer reclaims it with its count.
                    send.send_nowait(
                        Done(delivery.entry_id, delivery.envelope, keep=True, tries=tuple(tries))
                    )
                    return
                if self._flush_now is not None:
                    await self._flush_now()  # what finished before must not wait on this
                await anyio.sleep(delay)
                delivery = again

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
                traceback=traceback_text(exc),
            )

    def _give_up(
        self,
        send: Sink,
        delivery: Delivery,
        first: str,
        last: str,
        *,
        traceback: str | None = None,
        tries: Sequence[Ack] = (),
    ) -> None:
        """Dead-letter ``delivery`` and answer its registry with an error ack; ``tries``
        are its failed attempts before the last, ``traceback`` the last one's."""
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
            signature=delivery.signature,
            traceback=traceback,
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
            traceback=traceback,
        )
        send.send_nowait(Done(delivery.entry_id, envelope, ack, letter, tries=tuple(tries)))

    async def _give_back(self, send: Sink) -> None:
        """Leave what waited for order pending for a live peer, as never delivered: its
        hook never ran here, so its read must not spend one of its ``max_deliveries``."""
        waiting = self._order.give_back()
        for attempt in sorted({delivery.attempt for delivery in waiting}):
            ids = [d.entry_id for d in waiting if d.attempt == attempt]
            # Should this fail, the read counts: at worst one delivery early in the budget.
            with contextlib.suppress(BusUnavailable, GroupMissing):
                await self.bus.redis.xclaim_ids(
                    self.bus.keys.events,
                    self.plugin,
                    self.consumer,
                    ids,
                    0,
                    retry_count=attempt - 1,
                )
        for delivery in waiting:
            send.send_nowait(Done(delivery.entry_id, delivery.envelope, keep=True))

    def _read_ahead(self) -> int:
        """Entries worth reading at once: a full batch for fast hooks, but with slow
        ones no more than ``READ_AHEAD`` seconds of work per lane, so that a consumer
        does not sit on entries its peers could run (or that wait for order)."""
        if self._hook_time * self._batch <= READ_AHEAD * self._concurrency:
            return self._batch
        return max(self._concurrency, int(READ_AHEAD * self._concurrency / self._hook_time))

    def _settled(self, done: list[Done]) -> None:
        """The flush of ``done`` is over: their leases end and their room is free."""
        for item in done:
            self._reading.discard(item.entry_id)
        self._held -= len(done)
        self._room_freed.set()

    async def _settled_all(self) -> None:
        while self._held > 0:
            self._room_freed = anyio.Event()
            await self._room_freed.wait()
