"""The registry's diagnosis at a deadline tells the truth: an ack that lands while it
diagnoses counts as the answer, on both lanes."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rapid_objection.bus import Ack, Bus, Delivery, HealthCheck, Publisher, WorkerInfo

from .helpers import consumer_of_handler

pytestmark = pytest.mark.anyio


class TestAckDuringDiagnosis:
    async def test_an_ack_landing_after_the_deadline_but_before_xpending_counts(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The hook finishes just after the deadline, before the registry asks XPENDING
        who holds the event: the outcome is the ack, and no failure is recorded."""
        release = anyio.Event()

        async def handler(delivery: Delivery) -> Ack:
            await release.wait()
            return Ack(event_id=delivery.envelope.id, plugin="late", consumer="w-1", status="ok")

        async with (
            consumer_of_handler(bus, "late", "w-1", handler),
            Publisher(bus, "reg") as publisher,
        ):
            real_workers = bus.directory.workers

            async def workers(plugin: str | None = None) -> list[WorkerInfo]:
                if not await bus.redis.xrange(bus.keys.events, "-", "+", count=1):
                    # emit's own liveness read, before it publishes: not the diagnosis.
                    return await real_workers(plugin)
                # The diagnosis begins: now the hook finishes and its ack lands.
                release.set()
                with anyio.fail_after(2):
                    while not await bus.redis.xrange(bus.keys.acks("reg"), "-", "+", count=1):
                        await anyio.sleep(0.01)
                return await real_workers(plugin)

            monkeypatch.setattr(bus.directory, "workers", workers)
            result = await publisher.emit(
                HealthCheck(health={}), app="shop", required=["late"], timeout=0.3
            )
        outcome = result.outcomes["late"]
        assert (outcome.status, outcome.consumer) == ("acked", "w-1")
        failures: list[Any] = await bus.failures.recent(10)
        assert failures == []
