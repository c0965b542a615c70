"""How a consumer runs what it read: events of one app in order, apps side by side.

``TaskLanes`` (concurrency > 1) give each app a queue drained by its own task, up to
``concurrency`` hooks at once. ``InlineLanes`` (concurrency 1) let the reader run a
read batch itself and flush its acks before the next read. Both are ``Lanes``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._delivery import Delivery
from ._ids import id_key

INLINE_FLUSH_AFTER = 0.005
"""Seconds a finished hook's ack may wait for the rest of its read batch."""


class Lanes(Protocol):
    """What the reader needs of its lanes, whichever kind they are."""

    def put(self, delivery: Delivery) -> None:
        """Queue ``delivery`` behind the earlier events of its app."""

    async def settle(self) -> None:
        """Give the lanes their turn after a read (the inline kind runs what was read)."""

    async def wait_idle(self) -> None:
        """Return once everything put has been run."""


class TaskLanes:
    """Per-app queues: one app's events in order, different apps side by side."""

    def __init__(
        self, group: TaskGroup, run: Callable[[Delivery], Awaitable[None]], concurrency: int
    ) -> None:
        self._group = group
        self._run = run
        self._limit = anyio.Semaphore(concurrency)
        self._queues: dict[str, deque[Delivery]] = {}
        self._idle: anyio.Event | None = None

    def put(self, delivery: Delivery) -> None:
        app = delivery.envelope.app
        queue = self._queues.get(app)
        if queue is not None:
            # The head may be running already; behind it, the app's events stay in
            # stream order even when an older one arrives late (a reclaim).
            _insert_in_order(queue, delivery, first=1)
            return
        self._queues[app] = queue = deque((delivery,))
        self._group.start_soon(self._drain, app, queue)

    async def _drain(self, app: str, queue: deque[Delivery]) -> None:
        while queue:
            async with self._limit:
                await self._run(queue[0])
            queue.popleft()
        del self._queues[app]
        if not self._queues and self._idle is not None:
            self._idle.set()

    async def settle(self) -> None:
        """Nothing to do: the lanes' own tasks run what was put."""

    async def wait_idle(self) -> None:
        if self._queues:
            self._idle = anyio.Event()
            await self._idle.wait()


class InlineLanes:
    """Concurrency 1: the reader itself runs what it read, in order, then reads again.

    No task per event and no hand-over: a read batch is handled back to back and its
    acks leave in one flush, which is what makes a worker's round trip cheap. Acks that
    wait while the next hook runs leave on their own after ``INLINE_FLUSH_AFTER``.
    """

    def __init__(
        self,
        group: TaskGroup,
        run: Callable[[Delivery], Awaitable[None]],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self._group = group
        self._run = run
        self._flush = flush
        self._queue: deque[Delivery] = deque()

    def put(self, delivery: Delivery) -> None:
        _insert_in_order(self._queue, delivery, first=0)

    async def settle(self) -> None:
        """Run everything queued, in order; acks go out in one flush at the end, or as
        soon as the oldest waiting one is ``INLINE_FLUSH_AFTER`` old: a slow hook never
        holds back the acks of the ones before it."""
        oldest: float | None = None
        while self._queue:
            delivery = self._queue.popleft()
            timer = None
            if oldest is not None:
                # A timer, not a task per hook: the fast path stays a plain call.
                due = max(0.0, INLINE_FLUSH_AFTER - (anyio.current_time() - oldest))
                timer = asyncio.get_running_loop().call_later(due, self._flush_aside)
            await self._run(delivery)
            if timer is not None:
                timer.cancel()
            now = anyio.current_time()
            oldest = now if oldest is None else oldest
            if self._queue and now - oldest >= INLINE_FLUSH_AFTER:
                await self._flush()
                oldest = None
        await self._flush()

    def _flush_aside(self) -> None:
        """The acks waiting behind a slow hook leave while it runs."""
        self._group.start_soon(self._flush_waiting)

    async def _flush_waiting(self) -> None:
        await self._flush()

    async def wait_idle(self) -> None:
        await self.settle()


def _insert_in_order(queue: deque[Delivery], delivery: Delivery, *, first: int) -> None:
    """Append ``delivery``, or put it before the first queued newer event of its app."""
    app, key = delivery.envelope.app, id_key(delivery.entry_id)
    if len(queue) <= first or id_key(queue[-1].entry_id) < key:
        queue.append(delivery)  # the usual case: read in stream order
        return
    for index in range(first, len(queue)):
        queued = queue[index]
        if queued.envelope.app == app and id_key(queued.entry_id) > key:
            queue.insert(index, delivery)
            return
    queue.append(delivery)
