"""The ack flush is idempotent: a transaction whose reply was lost is not applied twice
(real Redis behind a proxy that loses the EXEC reply)."""

from __future__ import annotations

import anyio
import pytest

from rapid_objection.bus import Ack, Bus, Delivery, HealthCheck, Publisher
from rapid_objection.bus._consumer import Consumer
from rapid_objection.bus._contract import decode_ack_entry
from rapid_objection.bus._retry import RetryPolicy

from .proxy import Proxy

pytestmark = pytest.mark.anyio


async def run_one_event(
    proxy: Proxy, through: Bus, direct: Bus, answer: str, *, max_deliveries: int = 5
) -> str:
    """Publish one required event, let a consumer on ``through`` handle it while the
    proxy loses the reply of its flush's EXEC; returns the event id."""
    plugin = "flushy"
    await direct.ensure_group(plugin)
    calls: list[str] = []

    async def handler(delivery: Delivery) -> Ack:
        calls.append(delivery.envelope.id)
        return Ack(
            event_id=delivery.envelope.id,
            plugin=plugin,
            consumer="c-1",
            status="ok" if answer == "ok" else "error",
            error=None if answer == "ok" else "boom",
            attempt=delivery.attempt,
        )

    consumer = Consumer(
        through, plugin, "c-1", handler, retry=RetryPolicy(max_deliveries=max_deliveries)
    )
    envelope = Publisher(direct, "reg").envelope(HealthCheck(health={}), required=(plugin,))
    async with anyio.create_task_group() as group:
        await group.start(consumer.run)
        proxy.drop_reply("EXEC")
        await direct.publish(envelope)
        with anyio.fail_after(5):
            await proxy.fired.wait()
            while await direct.redis.xpending(direct.keys.events, plugin, count=10):
                await anyio.sleep(0.02)
        await anyio.sleep(0.3)  # a second application would have landed by now
        consumer.stop()
    assert calls == [envelope.id] * (1 if answer == "ok" else max_deliveries)
    return envelope.id


class TestLostExecReply:
    async def test_an_ack_is_written_once(self, proxied: tuple[Proxy, Bus, Bus]) -> None:
        """One hook call whose flush lost its EXEC reply: one ack record, one handled."""
        proxy, through, direct = proxied
        event_id = await run_one_event(proxy, through, direct, "ok")
        acks = [
            ack
            for _, fields in await direct.redis.xrange(direct.keys.acks("reg"), "-", "+", 10)
            for ack in decode_ack_entry(fields)
        ]
        assert [ack.event_id for ack in acks] == [event_id]

    async def test_a_dead_letter_is_written_once(self, proxied: tuple[Proxy, Bus, Bus]) -> None:
        """A dead-lettering flush that lost its EXEC reply: one dead letter, one error
        ack, one dead_lettered failure counted."""
        proxy, through, direct = proxied
        event_id = await run_one_event(proxy, through, direct, "error", max_deliveries=1)
        assert await direct.redis.xlen(direct.keys.dlq) == 1
        acks = [
            ack
            for _, fields in await direct.redis.xrange(direct.keys.acks("reg"), "-", "+", 10)
            for ack in decode_ack_entry(fields)
        ]
        assert [(ack.event_id, ack.error_type) for ack in acks] == [(event_id, "DeadLettered")]
        counts = {(c.kind, c.count) for c in await direct.failures.counts()}
        assert counts == {("dead_lettered", 1)}
