"""Worker processes on a real Redis: fan-out and scaling, a crash, a graceful stop."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    Ack,
    AppRegistered,
    Bus,
    ConnectionInfo,
    Publisher,
    StatusReport,
    WaitResult,
)
from rapid_objection.bus._contract import decode_ack_entry
from rapid_objection.bus._publisher import PluginPolicy

from . import run_cli
from .conftest import WorkerPool
from .plugins import PluginA, PluginB, Sleeper, record_key

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

REGISTRY = "e2e-registry"
EVENTS = 2_000
APPS = 20
IN_FLIGHT = 50


def registered(**config: Any) -> AppRegistered:
    return AppRegistered(connection=ConnectionInfo(dialect="sqlite"), config=config)


def required(*plugins: str) -> dict[str, PluginPolicy]:
    return {plugin: PluginPolicy(required=True) for plugin in plugins}


async def counts(bus: Bus, kind: str, plugin: str) -> dict[str, int]:
    """Event id -> how often ``plugin``'s hook got to ``kind`` ("started" or "handled")."""
    raw = await bus.redis.hgetall(record_key(bus.keys, kind, plugin))
    return {event_id: int(value) for event_id, value in raw.items()}


async def acks_written(bus: Bus, registry: str) -> list[Ack]:
    """Every ack record the workers wrote to ``registry``'s ack stream."""
    entries = await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=1_000_000)
    return [ack for _, fields in entries for ack in decode_ack_entry(fields)]


async def held_by(bus: Bus, plugin: str, consumer: str, *, timeout: float = 5.0) -> None:
    """Wait until XPENDING shows an entry of ``plugin``'s group held by ``consumer``."""
    with anyio.fail_after(timeout):
        while True:
            pending = await bus.redis.xpending(bus.keys.events, plugin)
            if any(row.consumer == consumer for row in pending):
                return
            await anyio.sleep(0.02)


async def hook_started(bus: Bus, plugin: str, *, timeout: float = 5.0) -> None:
    """Wait until ``plugin``'s hook has started on some event."""
    with anyio.fail_after(timeout):
        while True:
            if await counts(bus, "started", plugin):
                return
            await anyio.sleep(0.02)


async def status(bus: Bus, url: str) -> StatusReport:
    """``rapid-objection status --json`` of ``bus``'s namespace, run as a subprocess."""
    code, out, err = await run_cli(
        "status", "--json", "--bus-url", url, "--namespace", bus.namespace
    )
    assert code == 0, err
    return msgspec.json.decode(out, type=StatusReport)


class TestGroupOfWorkers:
    async def test_every_event_is_acked_once_per_plugin_and_spread_over_the_group(
        self, redis_bus: Bus, workers: WorkerPool
    ) -> None:
        """2,000 events to a group of three workers and to a single worker: each plugin
        handles and acks every event exactly once, and each of the three takes a share."""
        group_a = await workers.start(PluginA, 3)
        await workers.start(PluginB)
        results: list[WaitResult] = []
        async with Publisher(
            redis_bus, REGISTRY, policies=required(PluginA.NAME, PluginB.NAME)
        ) as publisher:
            limit = anyio.Semaphore(IN_FLIGHT)

            async def emit(number: int) -> None:
                async with limit:
                    app = f"app-{number % APPS}"
                    results.append(await publisher.emit(registered(), app=app, timeout=15))

            with anyio.fail_after(45):
                async with anyio.create_task_group() as group:
                    for number in range(EVENTS):
                        group.start_soon(emit, number)

        assert len(results) == EVENTS
        failed = [result for result in results if not result.ok]
        assert not failed, f"{len(failed)} events not ok, e.g. {failed[:3]}"
        assert all(
            [outcome.status for outcome in result.outcomes.values()] == ["acked", "acked"]
            for result in results
        )
        event_ids = {result.event_id for result in results}
        assert len(event_ids) == EVENTS
        assert all(
            outcome.result["event_id"] == result.event_id
            for result in results
            for outcome in result.outcomes.values()
        ), "a hook saw another event id than the one it handled"
        acks = await acks_written(redis_bus, REGISTRY)
        for plugin in (PluginA.NAME, PluginB.NAME):
            per_event = Counter(ack.event_id for ack in acks if ack.plugin == plugin)
            assert set(per_event) == event_ids, plugin
            assert set(per_event.values()) == {1}, f"{plugin} acked some event twice"
            assert {ack.status for ack in acks if ack.plugin == plugin} == {"ok"}
            handled = await counts(redis_bus, "handled", plugin)
            assert handled == dict.fromkeys(event_ids, 1), f"{plugin} handled some event twice"
        shares = Counter(result.outcomes[PluginA.NAME].consumer for result in results)
        assert set(shares) == {worker.consumer for worker in group_a}
        assert min(shares.values()) >= EVENTS * 0.05, f"uneven spread: {shares}"


class TestWorkerKilled:
    async def test_a_worker_killed_holding_an_event_is_named_in_the_timeout_and_failures(
        self, redis_bus: Bus, redis_url: str, workers: WorkerPool
    ) -> None:
        """SIGKILL while the hook runs: the wait times out naming the dead consumer, a
        ``timeout`` failure is recorded against it, and ``status`` soon shows it not
        alive and still holding the event."""
        (worker,) = await workers.start(Sleeper, options=["--timeout", "60"])
        results: list[WaitResult] = []
        async with Publisher(redis_bus, REGISTRY, policies=required(Sleeper.NAME)) as publisher:

            async def emit() -> None:
                event = registered(sleep=30)
                results.append(await publisher.emit(event, app="slow-app", timeout=1.5))

            async with anyio.create_task_group() as group:
                group.start_soon(emit)
                await held_by(redis_bus, Sleeper.NAME, worker.consumer)
                worker.signal(signal.SIGKILL)
                killed_at = anyio.current_time()
                assert await worker.process.wait() == -signal.SIGKILL

        (result,) = results
        assert not result.ok
        (outcome,) = result.timed_out
        assert (outcome.plugin, outcome.consumer) == (Sleeper.NAME, worker.consumer)
        failures = await redis_bus.failures.recent(plugin=Sleeper.NAME)
        assert (result.event_id, "timeout", worker.consumer) in [
            (failure.event_id, failure.kind, failure.consumer) for failure in failures
        ]

        # Its heartbeat stops with it; five missed beats (5 s) and status calls it dead.
        with anyio.fail_after(killed_at + 7 - anyio.current_time()):
            while True:
                report = await status(redis_bus, redis_url)
                (plugin,) = [p for p in report.plugins if p.name == Sleeper.NAME]
                (consumer,) = [c for c in plugin.consumers if c.name == worker.consumer]
                if not consumer.alive:
                    break
                await anyio.sleep(0.5)
        assert consumer.pending == 1
        assert plugin.pending == 1


class TestWorkerTerminated:
    async def test_sigterm_lets_the_running_hook_finish_and_ack(
        self, redis_bus: Bus, workers: WorkerPool
    ) -> None:
        """SIGTERM in the middle of a one-second hook: the hook finishes, its ack reaches
        the registry, and the process exits 0."""
        (worker,) = await workers.start(Sleeper)
        results: list[WaitResult] = []
        async with Publisher(redis_bus, REGISTRY, policies=required(Sleeper.NAME)) as publisher:

            async def emit() -> None:
                event = registered(sleep=1.0)
                results.append(await publisher.emit(event, app="drain-app", timeout=5))

            async with anyio.create_task_group() as group:
                group.start_soon(emit)
                await hook_started(redis_bus, Sleeper.NAME)
                worker.signal(signal.SIGTERM)
                with anyio.fail_after(5):
                    code = await worker.process.wait()

        assert code == 0, worker.log()
        (result,) = results
        assert result.ok
        (outcome,) = result.acked
        assert (outcome.plugin, outcome.consumer) == (Sleeper.NAME, worker.consumer)
        assert await counts(redis_bus, "handled", Sleeper.NAME) == {result.event_id: 1}
