"""Delivery guarantees in-process, on both lanes: retries, dead letters, leases, reclaim."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    PermanentError,
    Publisher,
    RetryLater,
)
from rapid_objection.bus._constants import EVENT_FIELD, RECORD_FIELD
from rapid_objection.bus._contract import decode_dead_letter, decode_envelope
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.plugin_workers import PluginInterface, current_delivery
from rapid_objection.plugin_workers.testing import running_worker

from .helpers import beat

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")


class Flaky(PluginInterface):
    """Raises ``failures`` times (or forever), then answers; counts every call."""

    def __init__(self, failures: int = 10**9, error: type[Exception] = RuntimeError) -> None:
        super().__init__("flaky", "1.0.0")
        self.failures = failures
        self.error = error
        self.calls: list[int] = []

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        self.calls.append(current_delivery().attempt)
        if len(self.calls) <= self.failures:
            raise self.error(f"boom {len(self.calls)}")
        return "fine"


class Slow(PluginInterface):
    """Sleeps ``seconds`` in its hook; records which consumer ran it."""

    def __init__(self, seconds: float) -> None:
        super().__init__("slow", "1.0.0")
        self.seconds = seconds
        self.calls = 0

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        self.calls += 1
        await anyio.sleep(self.seconds)


async def _dead_letters(bus: Bus) -> list[Any]:
    entries = await bus.redis.xrange(bus.keys.dlq, "-", "+", count=100)
    return [decode_dead_letter(fields[RECORD_FIELD]) for _, fields in entries]


class TestRetries:
    async def test_a_hook_that_always_raises_is_dead_lettered_after_max_deliveries(
        self, bus: Bus
    ) -> None:
        """Delivered max_deliveries times, then dead-lettered with its provenance; the
        registry gets an error ack and the failure record names the consumer."""
        plugin = Flaky()
        options = {"required": True, "max_deliveries": 3, "consumer": "w-1"}
        async with running_worker(plugin, bus, **options), Publisher(bus, "reg") as publisher:
            await publisher.refresh_directory()
            result = await publisher.emit(AppRegistered(connection=SQLITE), app="shop", timeout=5)
        assert plugin.calls == [1, 2, 3]
        outcome = result.outcomes["flaky"]
        assert outcome.status == "failed"
        assert outcome.consumer == "w-1"
        assert "dead-lettered after 3 attempts" in (outcome.error or "")
        [letter] = await _dead_letters(bus)
        assert (letter.plugin, letter.consumer, letter.attempts) == ("flaky", "w-1", 3)
        assert letter.first_error == "RuntimeError: boom 1"
        assert letter.last_error == "RuntimeError: boom 3"
        assert letter.entry_id == result.entry_id
        assert decode_envelope(letter.data).id == result.event_id
        [failure] = await bus.failures.recent(10, plugin="flaky")
        assert (failure.kind, failure.consumer, failure.attempt) == ("dead_lettered", "w-1", 3)

    async def test_a_hook_that_recovers_is_acked_without_a_failure(self, bus: Bus) -> None:
        """Two failures then success: acked on the third attempt, nothing recorded."""
        plugin = Flaky(failures=2)
        async with running_worker(plugin, bus, required=True), Publisher(bus, "reg") as publisher:
            await publisher.refresh_directory()
            result = await publisher.emit(AppRegistered(connection=SQLITE), app="shop", timeout=5)
        assert result.outcomes["flaky"].status == "acked"
        assert result.outcomes["flaky"].attempt == 3
        assert await bus.failures.recent(10) == []
        assert await _dead_letters(bus) == []

    async def test_a_permanent_error_is_not_retried(self, bus: Bus) -> None:
        """PermanentError: one call, an error ack, an error failure, no dead letter."""
        plugin = Flaky(error=PermanentError)
        async with running_worker(plugin, bus, required=True), Publisher(bus, "reg") as publisher:
            await publisher.refresh_directory()
            result = await publisher.emit(AppRegistered(connection=SQLITE), app="shop", timeout=5)
        assert plugin.calls == [1]
        assert result.outcomes["flaky"].status == "failed"
        [failure] = await bus.failures.recent(10)
        assert failure.kind == "error"
        assert await _dead_letters(bus) == []

    async def test_retry_later_is_a_signal_not_a_failure(self, bus: Bus) -> None:
        """RetryLater twice, then success: acked, and no failure is recorded."""

        class Patient(Flaky):
            async def on_app_registered(
                self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
            ) -> str:
                self.calls.append(current_delivery().attempt)
                if len(self.calls) < 3:
                    raise RetryLater(0.05, "the backup target is not mounted yet")
                return "done"

        plugin = Patient()
        async with running_worker(plugin, bus, required=True), Publisher(bus, "reg") as publisher:
            await publisher.refresh_directory()
            result = await publisher.emit(AppRegistered(connection=SQLITE), app="shop", timeout=5)
        assert result.outcomes["flaky"].result == "done"
        assert len(plugin.calls) == 3
        assert await bus.failures.recent(10) == []


class TestLeasesAndReclaim:
    async def test_a_dead_consumers_event_is_reclaimed_and_acked_in_time(self, bus: Bus) -> None:
        """An event held by a consumer that died is taken over after the idle threshold
        by a live consumer, and the registry still gets its ack before its deadline."""
        await bus.ensure_group("slow")
        await beat(bus, "slow", "dead-1")  # alive when the event is published
        plugin = Slow(0)
        policies = {"slow": PluginPolicy(required=True)}
        async with (
            Publisher(bus, "reg", policies=policies) as publisher,
            anyio.create_task_group() as group,
        ):
            waiting = group.start_soon
            results: list[Any] = []

            async def emit() -> None:
                results.append(
                    await publisher.emit(AppRegistered(connection=SQLITE), app="a", timeout=5)
                )

            waiting(emit)
            await anyio.sleep(0.1)
            # A consumer that read the event and died without acking it.
            taken = await bus.redis.xreadgroup(
                bus.keys.events, "slow", "dead-1", count=10, block_ms=None
            )
            assert len(taken) == 1
            async with running_worker(plugin, bus, consumer="live-1", claim_idle=0.3):
                with anyio.fail_after(4):
                    while not results:
                        await anyio.sleep(0.05)
        [result] = results
        outcome = result.outcomes["slow"]
        assert (outcome.status, outcome.consumer, outcome.attempt) == ("acked", "live-1", 2)

    async def test_a_slow_hook_keeps_its_lease_and_runs_once(self, bus: Bus) -> None:
        """A hook running three times the idle threshold is not stolen by the other
        consumer of its group: it is delivered once."""
        first, second = Slow(0.9), Slow(0.9)
        async with (
            running_worker(first, bus, consumer="c-1", claim_idle=0.3, required=True),
            running_worker(second, bus, consumer="c-2", claim_idle=0.3, required=True),
            Publisher(bus, "reg") as publisher,
        ):
            await publisher.refresh_directory()
            result = await publisher.emit(AppRegistered(connection=SQLITE), app="a", timeout=5)
        assert result.outcomes["slow"].status == "acked"
        assert first.calls + second.calls == 1

    async def test_an_event_that_kills_its_workers_is_dead_lettered_uncalled(
        self, bus: Bus
    ) -> None:
        """An entry re-delivered past max_deliveries (its handler keeps crashing the
        worker) is dead-lettered without another call."""
        await bus.ensure_group("slow")
        async with Publisher(bus, "reg") as publisher:
            await publisher.publish(AppRegistered(connection=SQLITE), app="a")
        # Three "crashing" reads by one consumer name: each counts a delivery.
        for start in (">", "0", "0"):
            await bus.redis.xreadgroup(
                bus.keys.events, "slow", "crashy", count=1, block_ms=None, start=start
            )
        [pending] = await bus.redis.xpending(bus.keys.events, "slow", count=1)
        assert pending.deliveries == 3
        plugin = Slow(0)
        async with running_worker(plugin, bus, consumer="crashy", max_deliveries=2):
            with anyio.fail_after(3):
                while not await _dead_letters(bus):
                    await anyio.sleep(0.05)
        assert plugin.calls == 0
        [letter] = await _dead_letters(bus)
        assert "without an ack" in letter.last_error


class TestTargets:
    async def test_an_event_for_one_plugin_is_ignored_by_the_others(self, bus: Bus) -> None:
        """A targeted event (a re-drive) reaches only its plugin; others just XACK it."""
        slow, flaky = Slow(0), Flaky(failures=0)
        async with (
            running_worker(slow, bus),
            running_worker(flaky, bus),
            Publisher(bus, "reg") as publisher,
        ):
            envelope = publisher.envelope(AppRegistered(connection=SQLITE), app="a")
            from msgspec.structs import replace

            await bus.publish(replace(envelope, target="slow"))
            with anyio.fail_after(3):
                while slow.calls == 0:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)
        assert flaky.calls == []
        group = {g.name: g for g in await bus.redis.xinfo_groups(bus.keys.events)}
        assert group["flaky"].pending == 0
        assert EVENT_FIELD == b"e"
