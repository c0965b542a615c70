"""Lanes: a hook's ack leaves without waiting for the hooks read after it, on both lanes."""

from __future__ import annotations

import time

import anyio
import pytest

from rapid_objection.bus import Ack, Bus, Delivery
from rapid_objection.bus._consumer import Consumer
from rapid_objection.bus._contract import decode_ack_entry

from .helpers import add_at, burst_ids, until

pytestmark = pytest.mark.anyio


async def ack_times(bus: Bus, registry: str, seen: dict[str, float]) -> None:
    """Note when each ack of ``registry`` first shows up in its ack stream."""
    for _, fields in await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=100):
        for ack in decode_ack_entry(fields):
            seen.setdefault(ack.event_id, time.monotonic())


class TestInlineAcks:
    async def test_a_fast_hooks_ack_does_not_wait_for_the_slow_next_one(self, bus: Bus) -> None:
        """With concurrency 1, the ack of a fast hook is written while the slow hook read
        in the same batch is still running, not after it."""
        plugin = "inline"
        await bus.ensure_group(plugin)
        fast, slow = await add_at(bus, burst_ids(2), apps=["a", "b"], required=(plugin,))
        finished: dict[str, float] = {}

        async def handler(delivery: Delivery) -> Ack:
            if delivery.envelope.id == slow.id:
                await anyio.sleep(1.0)
            finished[delivery.envelope.id] = time.monotonic()
            return Ack(event_id=delivery.envelope.id, plugin=plugin, consumer="c", status="ok")

        consumer = Consumer(bus, plugin, "c", handler, concurrency=1)
        seen: dict[str, float] = {}
        async with anyio.create_task_group() as group:
            await group.start(consumer.run)
            await until(lambda: fast.id in finished)
            with anyio.fail_after(0.5):
                while fast.id not in seen:
                    await ack_times(bus, "reg", seen)
                    await anyio.sleep(0.01)
            assert slow.id not in finished, "the slow hook is still running"
            consumer.stop()
        await ack_times(bus, "reg", seen)
        assert seen[fast.id] < finished[slow.id] < seen[slow.id]
