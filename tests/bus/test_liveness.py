"""Fail closed: a required plugin without a live consumer is decided at once, on every lane.

A live consumer is one definition, shared with loading and ``status``: a worker whose last
heartbeat is younger than the liveness window (``is_alive``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistrationStarted,
    Bus,
    FailureCount,
    HealthCheck,
    Publisher,
    WaitResult,
)
from rapid_objection.bus._constants import ALIVE_AFTER_HEARTBEATS, HEARTBEAT_INTERVAL
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

from .helpers import beat

pytestmark = pytest.mark.anyio

WINDOW = HEARTBEAT_INTERVAL * ALIVE_AFTER_HEARTBEATS
"""The liveness window: a heartbeat older than this is a dead worker's."""


class Gate(PluginInterface):
    """Answers app_registration_started and health_check."""

    def __init__(self, name: str = "gate") -> None:
        super().__init__(name, "1.0.0")

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        pass

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        pass


@asynccontextmanager
async def emitting(bus: Bus, policies: dict[str, PluginPolicy]) -> AsyncIterator[list[WaitResult]]:
    """A registration published (and awaited) in the background; its result is added to
    the list once its wait ends."""
    results: list[WaitResult] = []
    async with (
        Publisher(bus, "reg", policies=policies) as publisher,
        anyio.create_task_group() as group,
    ):

        async def emit() -> None:
            results.append(await publisher.emit(AppRegistrationStarted(config={}), app="a"))

        group.start_soon(emit)
        yield results


class TestNoLiveConsumer:
    async def test_a_stale_heartbeat_is_no_live_consumer(self, bus: Bus) -> None:
        """A worker whose last heartbeat is older than the liveness window (it was
        SIGKILLed) serves nobody: the wait is decided at once as no_consumer, recorded in
        the failures, instead of waiting for the deadline."""
        await bus.ensure_group("gate")
        await beat(bus, "gate", "gate-killed", seen=time.time() - WINDOW - 1)
        policies = {"gate": PluginPolicy(required=True, timeout=5)}
        async with Publisher(bus, "reg", policies=policies) as publisher:
            result = await publisher.emit(AppRegistrationStarted(config={}), app="evil")
        outcome = result.outcomes["gate"]
        assert (outcome.status, outcome.consumer) == ("timed_out", None)
        assert outcome.error == "no live consumer of plugin 'gate'"
        assert result.elapsed < 0.5
        [failure] = await bus.failures.recent()
        assert (failure.event_id, failure.kind) == (result.event_id, "no_consumer")
        assert failure.app == "evil"
        assert await bus.failures.counts() == [FailureCount("gate", None, "no_consumer", 1)]

    async def test_only_the_plugin_without_a_live_consumer_is_decided_at_once(
        self, bus: Bus
    ) -> None:
        """Beside an absent plugin, a live one is still awaited and answers."""
        async with (
            running_worker(Gate(), bus, consumer="gate-1"),
            Publisher(bus, "reg") as publisher,
        ):
            result = await publisher.emit(
                HealthCheck(), app="shop", timeout=5, required=["gate", "ghost"]
            )
        assert result.outcomes["gate"].status == "acked"
        assert result.outcomes["ghost"].error == "no live consumer of plugin 'ghost'"
        assert result.elapsed < 1.0

    async def test_the_event_still_reaches_a_worker_that_starts_later(self, bus: Bus) -> None:
        """Deciding at once does not drop the event: it waits in the plugin's group, and a
        worker that starts afterwards handles it (the audit history stays whole)."""
        policies = {"gate": PluginPolicy(required=True)}
        async with Publisher(bus, "reg", policies=policies) as publisher:
            result = await publisher.emit(HealthCheck(), app="shop", timeout=5)
            assert result.outcomes["gate"].status == "timed_out"
            async with running_worker(Gate(), bus, consumer="gate-1") as worker:
                with anyio.fail_after(3):
                    while worker.consumer.handled < 1:
                        await anyio.sleep(0.02)


class TestLiveConsumer:
    async def test_a_worker_newer_than_the_cached_directory_is_awaited(self, bus: Bus) -> None:
        """A worker that announced itself after the registry last read the directory is
        found by a fresh read before anything is decided: it is awaited and answers."""
        policies = {"gate": PluginPolicy(required=True, timeout=3)}
        async with (
            Publisher(bus, "reg", policies=policies) as publisher,
            running_worker(Gate(), bus, consumer="gate-1"),
        ):
            result = await publisher.emit(AppRegistrationStarted(config={}), app="shop")
        assert (result.outcomes["gate"].status, result.outcomes["gate"].consumer) == (
            "acked",
            "gate-1",
        )

    async def test_a_plugin_being_started_is_awaited_until_its_first_worker_runs(
        self, bus: Bus
    ) -> None:
        """While this registry starts a plugin's first worker (policy ``starting``), its
        events wait for that worker instead of failing at once."""
        await bus.ensure_group("gate")
        policies = {"gate": PluginPolicy(required=True, timeout=3, starting=True)}
        async with emitting(bus, policies) as results:
            await anyio.sleep(0.3)
            async with running_worker(Gate(), bus, consumer="gate-1"):
                with anyio.fail_after(3):
                    while not results:
                        await anyio.sleep(0.02)
        assert results[0].outcomes["gate"].status == "acked"
        assert await bus.failures.recent() == []


class TestConsumerLostDuringTheWait:
    @pytest.mark.parametrize("holds", [False, True], ids=["idle", "holding"])
    async def test_the_wait_ends_once_the_last_live_consumer_is_gone(
        self, bus: Bus, holds: bool
    ) -> None:
        """The plugin's only worker was alive when the event was published and then left
        the directory (idle) or died holding the event: the wait is decided within a
        heartbeat, as no_consumer or crashed (naming the holder), not at the deadline."""
        await bus.ensure_group("gate")
        await beat(bus, "gate", "gate-1")
        policies = {"gate": PluginPolicy(required=True, timeout=8)}
        async with emitting(bus, policies) as results:
            if holds:
                taken = await bus.redis.xreadgroup(
                    bus.keys.events, "gate", "gate-1", count=1, block_ms=1000
                )
                assert len(taken) == 1
            else:
                await anyio.sleep(0.2)
            assert not results
            await bus.directory.forget_worker("gate", "gate-1")
            started = time.monotonic()
        assert time.monotonic() - started < 2 * HEARTBEAT_INTERVAL + 0.5
        outcome = results[0].outcomes["gate"]
        assert outcome.error is not None
        assert "no live consumer of plugin 'gate'" in outcome.error
        [failure] = await bus.failures.recent()
        expected = ("gate-1", "crashed") if holds else (None, "no_consumer")
        assert (failure.consumer, failure.kind) == expected
