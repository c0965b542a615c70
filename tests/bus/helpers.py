"""Helpers shared by the delivery-promise tests: events at chosen ids, a recording handler."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio

from rapid_objection.bus import Ack, Bus, Delivery, Envelope, HealthCheck, Publisher, WorkerInfo
from rapid_objection.bus._constants import EVENT_FIELD, HEARTBEAT_INTERVAL
from rapid_objection.bus._consumer import Consumer, Handler
from rapid_objection.bus._contract import encode


async def add_at(
    bus: Bus,
    entry_ids: list[str],
    *,
    apps: list[str],
    registry: str = "reg",
    required: tuple[str, ...] = (),
) -> list[Envelope]:
    """Append one health check per id at exactly that stream id (a same-millisecond burst
    without relying on timing); ``apps[i]`` is the app of the i-th."""
    publisher = Publisher(bus, registry)
    envelopes = []
    client = bus.redis._client  # explicit ids are a test's need, not the adapter's
    for entry_id, app in zip(entry_ids, apps, strict=True):
        envelope = publisher.envelope(HealthCheck(health={}), app=app, required=required)
        await client.xadd(bus.keys.events, {EVENT_FIELD: encode(envelope)}, id=entry_id)
        envelopes.append(envelope)
    bus.redis.wake(bus.keys.events)
    return envelopes


def burst_ids(count: int) -> list[str]:
    """``count`` ids of one millisecond in the future of now."""
    millis = int(time.time() * 1000) + 5
    return [f"{millis}-{seq}" for seq in range(count)]


@dataclass
class Runs:
    """A handler that sleeps ``seconds`` and records who ran which event, and when."""

    plugin: str = "leasy"
    seconds: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    started: list[tuple[str, str, float]] = field(default_factory=list)
    running: int = 0

    def handler(self, consumer: str) -> Handler:
        async def run(delivery: Delivery) -> Ack:
            self.calls[delivery.envelope.id] += 1
            self.started.append((consumer, delivery.envelope.id, time.monotonic()))
            self.running += 1
            try:
                await anyio.sleep(self.seconds)
            finally:
                self.running -= 1
            return Ack(
                event_id=delivery.envelope.id,
                plugin=self.plugin,
                consumer=consumer,
                status="ok",
                attempt=delivery.attempt,
            )

        return run

    @property
    def twice(self) -> list[str]:
        return [event for event, count in self.calls.items() if count > 1]


@asynccontextmanager
async def consumer_of_handler(
    bus: Bus,
    plugin: str,
    name: str,
    handler: Handler,
    *,
    concurrency: int = 1,
    claim_idle: float = 0.3,
) -> AsyncIterator[Consumer]:
    """Run one consumer of ``plugin`` in the test, heartbeating as a worker does (a
    registry counts only consumers with a fresh heartbeat as live); stopped (and
    drained) on exit."""
    consumer = Consumer(bus, plugin, name, handler, concurrency=concurrency, claim_idle=claim_idle)
    async with anyio.create_task_group() as beats:
        await beat(bus, plugin, name)
        beats.start_soon(_heartbeat, bus, plugin, name)
        try:
            async with anyio.create_task_group() as group:
                await group.start(consumer.run)
                try:
                    yield consumer
                finally:
                    consumer.stop()
        finally:
            beats.cancel_scope.cancel()
    await bus.directory.forget_worker(plugin, name)


async def beat(bus: Bus, plugin: str, consumer: str, *, seen: float | None = None) -> None:
    """One heartbeat of consumer ``consumer`` of ``plugin``, sent at ``seen`` (now)."""
    now = time.time() if seen is None else seen
    await bus.directory.beat_worker(
        WorkerInfo(plugin=plugin, consumer=consumer, host="test", pid=1, started=now, seen=now)
    )


async def _heartbeat(bus: Bus, plugin: str, consumer: str) -> None:
    while True:
        await anyio.sleep(HEARTBEAT_INTERVAL)
        await beat(bus, plugin, consumer)


def consumer_of(
    bus: Bus, runs: Runs, name: str, *, concurrency: int = 1, claim_idle: float = 0.3
) -> AbstractAsyncContextManager[Consumer]:
    """A consumer of ``runs.plugin`` whose hooks ``runs`` records."""
    return consumer_of_handler(
        bus, runs.plugin, name, runs.handler(name), concurrency=concurrency, claim_idle=claim_idle
    )


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition()`` until true; fails after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
