"""Publisher: publishing events and waiting for their required acks, on both lanes."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    HOOK_TYPES,
    AppRegistered,
    AppUnregistered,
    Bus,
    ConnectionInfo,
    FailureCount,
    HealthCheck,
    PermanentError,
    Publisher,
    WaitResult,
)
from rapid_objection.bus._contract import decode_ack_entry
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.plugin_workers import PluginInterface, Worker, WorkerSettings
from rapid_objection.plugin_workers.testing import running_worker

from .helpers import beat

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")
EVENTS = 150
"""Events per registry in the shared-bus test (enough to interleave, few enough to be fast)."""


class RefusedError(PermanentError):
    """A plugin's veto: retrying cannot change the answer."""


class Probe(PluginInterface):
    """Answers app_registered and health_check; the health dict can ask it to sleep or fail."""

    def __init__(self, name: str = "probe", delay: float = 0.0) -> None:
        super().__init__(name, "1.2.3")
        self.delay = delay

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, str]:
        return {"app": app_name, "dialect": connection.dialect}

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        await anyio.sleep(health_status.get("sleep", self.delay))
        if "refuse" in health_status:
            raise RefusedError(health_status["refuse"])
        return dict(health_status)


@asynccontextmanager
async def running_workers(bus: Bus, *workers: Worker) -> AsyncIterator[None]:
    """Run several workers side by side and stop them together (their drains overlap)."""
    async with anyio.create_task_group() as group:
        for worker in workers:
            await group.start(worker.run)
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()


async def settle(condition: Callable[[], bool], timeout: float = 1.5) -> None:
    """Wait (in the test, not the product) until ``condition()`` holds."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


@pytest.fixture
def offline_bus() -> Iterator[Bus]:
    """An embedded bus that is never opened: for what needs no I/O at all."""
    name = f"offline-{secrets.token_hex(4)}"
    yield Bus.connect(f"memory://{name}")
    forget_memory_server(name)


class TestEmitOutcomes:
    async def test_acked_with_result_duration_and_consumer(self, bus: Bus) -> None:
        """A required plugin's ack carries its result, the hook's duration and the consumer."""
        async with (
            running_worker(Probe(), bus, consumer="probe-1", required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            result = await publisher.emit(
                AppRegistered(connection=CONNECTION), app="shop", timeout=2
            )
        outcome = result.outcomes["probe"]
        assert (outcome.status, outcome.consumer, outcome.attempt) == ("acked", "probe-1", 1)
        assert outcome.result == {"app": "shop", "dialect": "sqlite"}
        assert outcome.duration is not None
        assert 0 <= outcome.duration < 1
        assert outcome.error is None
        assert (result.type, result.app, result.required) == ("app_registered", "shop", ("probe",))
        assert result.ok
        assert result.elapsed < 2

    async def test_raising_hook_fails_naming_consumer_and_error(self, bus: Bus) -> None:
        """A hook that raises gives a failed outcome with the consumer and "ErrorType: message"."""
        async with (
            running_worker(Probe(), bus, consumer="probe-1", required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            result = await publisher.emit(
                HealthCheck(health={"refuse": "not on my watch"}), app="shop", timeout=2
            )
        outcome = result.outcomes["probe"]
        assert (outcome.status, outcome.consumer) == ("failed", "probe-1")
        assert outcome.error == "RefusedError: not on my watch"
        assert not result.ok
        assert result.failed == [outcome]

    async def test_raising_hook_records_an_error_failure_against_its_consumer(
        self, bus: Bus
    ) -> None:
        """The failure is recorded as kind "error" against the consumer, and counted."""
        async with (
            running_worker(Probe(), bus, consumer="probe-1", required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            for _ in range(2):
                result = await publisher.emit(
                    HealthCheck(health={"refuse": "no"}), app="shop", timeout=2
                )
        [latest, _] = await bus.failures.recent(kind="error")
        assert (latest.event_id, latest.plugin, latest.consumer) == (
            result.event_id,
            "probe",
            "probe-1",
        )
        assert (latest.type, latest.app, latest.registry) == ("health_check", "shop", "reg-a")
        assert latest.error == "RefusedError: no"
        assert FailureCount("probe", "probe-1", "error", 2) in await bus.failures.counts()

    @pytest.mark.parametrize("declared", ["policy", "explicit"], ids=["policy", "explicit"])
    async def test_required_plugin_without_worker_is_no_consumer(
        self, bus: Bus, declared: str
    ) -> None:
        """A required plugin nobody runs is decided at once, without waiting for the
        deadline: timed out, "no live consumer", recorded as "no_consumer"."""
        policies = {"ghost": PluginPolicy(required=True)} if declared == "policy" else {}
        required = ["ghost"] if declared == "explicit" else None
        async with Publisher(bus, "reg-a", policies=policies) as publisher:
            started = time.monotonic()
            result = await publisher.emit(
                AppRegistered(connection=CONNECTION), app="shop", timeout=5, required=required
            )
            elapsed = time.monotonic() - started
        outcome = result.outcomes["ghost"]
        assert (outcome.status, outcome.consumer) == ("timed_out", None)
        assert outcome.error == "no live consumer of plugin 'ghost'"
        assert result.timed_out == [outcome]
        assert elapsed < 0.5
        [failure] = await bus.failures.recent()
        assert (failure.plugin, failure.consumer, failure.kind) == ("ghost", None, "no_consumer")
        assert failure.event_id == result.event_id
        assert await bus.failures.counts() == [FailureCount("ghost", None, "no_consumer", 1)]

    @pytest.mark.parametrize(
        ("heartbeat", "kind"),
        [
            pytest.param(True, "timeout", id="alive-holder"),
            pytest.param(False, "crashed", id="dead-holder"),
        ],
    )
    async def test_event_held_by_a_silent_consumer_times_out_naming_it(
        self, bus: Bus, heartbeat: bool, kind: str
    ) -> None:
        """An event read by a consumer that never acks times out naming that consumer; the
        failure is a timeout while the holder heartbeats, and "crashed" when it does not."""
        await bus.ensure_group("stuck")
        await beat(bus, "stuck", "stuck-1")  # alive when the event is published
        results: list[WaitResult] = []
        async with Publisher(bus, "reg-a") as publisher, anyio.create_task_group() as group:

            async def emit() -> None:
                results.append(
                    await publisher.emit(HealthCheck(), app="shop", timeout=0.5, required=["stuck"])
                )

            group.start_soon(emit)
            entries = await bus.redis.xreadgroup(
                bus.keys.events, "stuck", "stuck-1", count=1, block_ms=1000
            )
            assert len(entries) == 1
            if not heartbeat:
                # It dies holding the event: its last heartbeat is long gone at the deadline.
                await beat(bus, "stuck", "stuck-1", seen=time.time() - 3600)
        [result] = results
        outcome = result.outcomes["stuck"]
        assert (outcome.status, outcome.consumer) == ("timed_out", "stuck-1")
        assert outcome.error is not None
        assert "stuck-1" in outcome.error
        [failure] = await bus.failures.recent()
        assert (failure.plugin, failure.consumer, failure.kind) == ("stuck", "stuck-1", kind)
        assert failure.attempt == 1
        assert FailureCount("stuck", "stuck-1", kind, 1) in await bus.failures.counts()

    async def test_required_plugin_that_skips_the_hook_acks_skipped(self, bus: Bus) -> None:
        """A required plugin without the hook answers "skipped" at once, which is ok."""
        async with (
            running_worker(Probe(), bus, consumer="probe-1"),
            Publisher(bus, "reg-a") as publisher,
        ):
            result = await publisher.emit(
                AppUnregistered(), app="shop", timeout=2, required=["probe"]
            )
        outcome = result.outcomes["probe"]
        assert (outcome.status, outcome.consumer) == ("skipped", "probe-1")
        assert result.skipped == [outcome]
        assert result.ok
        assert result.elapsed < 1

    async def test_nothing_required_returns_at_once(self, bus: Bus) -> None:
        """An event nobody is required for is published and returns without waiting."""
        async with Publisher(bus, "reg-a") as publisher:
            result = await publisher.emit(HealthCheck(), app="shop", timeout=5)
        assert (result.required, result.outcomes, result.ok) == ((), {}, True)
        assert result.elapsed < 0.5
        assert await bus.redis.xlen(bus.keys.events) == 1


class TestWaitResult:
    async def test_outcomes_are_sorted_into_their_lists(self, bus: Bus) -> None:
        """acked, failed, skipped and timed_out each list their plugins; results() the values."""
        workers = [
            Worker(Probe("good"), bus, consumer="good-1"),
            Worker(Probe("bad"), bus, consumer="bad-1"),
            Worker(Probe("extra"), bus, consumer="extra-1"),
        ]
        await beat(bus, "ghost", "ghost-1")  # alive, but never reads: a timeout
        async with running_workers(bus, *workers), Publisher(bus, "reg-a") as publisher:
            good = await publisher.emit(
                HealthCheck(health={"n": 1}),
                app="shop",
                timeout=0.5,
                required=["good", "ghost"],
            )
            bad = await publisher.emit(
                HealthCheck(health={"refuse": "no"}), app="shop", timeout=1, required=["bad"]
            )
            skipped = await publisher.emit(
                AppUnregistered(), app="shop", timeout=1, required=["good"]
            )
        assert [o.plugin for o in good.acked] == ["good"]
        assert [o.plugin for o in good.timed_out] == ["ghost"]
        assert good.failed == good.skipped == []
        assert not good.ok
        # Plugins that were not required but answered in time are in results() too.
        assert good.results() == {"good": {"n": 1}, "bad": {"n": 1}, "extra": {"n": 1}}
        assert [o.plugin for o in bad.failed] == ["bad"]
        assert not bad.ok
        assert bad.results() == {}
        assert [o.plugin for o in skipped.skipped] == ["good"]
        assert skipped.ok
        assert skipped.results() == {}


class TestRequiredSet:
    async def test_known_manifest_without_the_hook_is_not_awaited(self, bus: Bus) -> None:
        """A required plugin whose manifest lacks a hook is not awaited for that hook."""
        async with (
            running_worker(Probe(), bus, required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            assert publisher.required_for("app_registered") == ("probe",)
            assert publisher.required_for("health_check") == ("probe",)
            assert publisher.required_for("app_unregistered") == ()
            result = await publisher.emit(AppUnregistered(), app="shop", timeout=2)
        assert (result.required, result.ok) == ((), True)
        assert result.elapsed < 0.5

    @pytest.mark.parametrize("event_type", HOOK_TYPES)
    def test_policy_without_manifest_awaits_every_hook(
        self, offline_bus: Bus, event_type: str
    ) -> None:
        """A plugin only a policy calls required, with no manifest yet, is awaited on each hook."""
        publisher = Publisher(offline_bus, "reg-a", policies={"ghost": PluginPolicy(required=True)})
        assert publisher.required_for(event_type) == ("ghost",)

    def test_custom_events_await_nobody(self, offline_bus: Bus) -> None:
        """Plugin-to-plugin custom events never wait for acks."""
        publisher = Publisher(offline_bus, "reg-a", policies={"ghost": PluginPolicy(required=True)})
        assert publisher.required_for("custom") == ()

    async def test_policy_required_but_manifest_lacks_the_hook(self, bus: Bus) -> None:
        """A policy makes a plugin required, but only for the hooks its manifest lists."""
        async with (
            running_worker(Probe(), bus, required=False),
            Publisher(bus, "reg-a", policies={"probe": PluginPolicy(required=True)}) as publisher,
        ):
            assert publisher.required_for("app_registered") == ("probe",)
            assert publisher.required_for("app_unregistered") == ()

    async def test_policy_can_release_a_manifest_requirement(self, bus: Bus) -> None:
        """A policy with required=False overrides a manifest that says required."""
        async with (
            running_worker(Probe(), bus, required=True),
            Publisher(bus, "reg-a", policies={"probe": PluginPolicy(required=False)}) as publisher,
        ):
            assert publisher.required_for("app_registered") == ()

    async def test_policy_only_plugin_is_awaited_on_an_unimplemented_hook(self, bus: Bus) -> None:
        """Without a manifest, a policy-required plugin is waited for even on a hook it skips."""
        # The worker starts after the publisher read the directory: no manifest is known.
        policies = {"probe": PluginPolicy(required=True)}
        async with (
            Publisher(bus, "reg-a", policies=policies) as publisher,
            running_worker(Probe(), bus, consumer="probe-1"),
        ):
            assert "probe" not in publisher.manifests
            result = await publisher.emit(AppUnregistered(), app="shop", timeout=2)
        assert result.required == ("probe",)
        assert result.outcomes["probe"].status == "skipped"


class TestDeadline:
    async def test_unconfigured_plugin_keeps_the_ack_timeout_beside_a_configured_one(
        self, bus: Bus
    ) -> None:
        """A plugin with no configured timeout is awaited for ack_timeout even when another
        required plugin has a shorter configured one."""
        workers = [
            Worker(Probe("fast"), bus, consumer="fast-1"),
            Worker(Probe("slow", delay=0.4), bus, consumer="slow-1", required=True),
        ]
        policies = {"fast": PluginPolicy(required=True, timeout=0.1)}
        async with (
            running_workers(bus, *workers),
            Publisher(bus, "reg-a", policies=policies, ack_timeout=1.5) as publisher,
        ):
            result = await publisher.emit(HealthCheck(), app="shop")
        assert result.required == ("fast", "slow")
        assert {name: o.status for name, o in result.outcomes.items()} == {
            "fast": "acked",
            "slow": "acked",
        }

    async def test_configured_timeout_longer_than_ack_timeout_is_awaited(self, bus: Bus) -> None:
        """A plugin's configured timeout is its deadline, even beyond the registry's ack_timeout."""
        policies = {"slow": PluginPolicy(required=True, timeout=0.8)}
        async with (
            running_worker(Probe("slow", delay=0.4), bus, consumer="slow-1"),
            Publisher(bus, "reg-a", policies=policies, ack_timeout=0.2) as publisher,
        ):
            result = await publisher.emit(HealthCheck(), app="shop")
        assert result.outcomes["slow"].status == "acked"
        assert 0.4 <= result.elapsed < 1.0


class TestLateAcks:
    async def test_ack_after_the_deadline_is_counted_and_harmless(self, bus: Bus) -> None:
        """An ack arriving after its deadline is counted as late and later waits still work."""
        async with (
            running_worker(Probe(), bus, consumer="probe-1", required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            slow = await publisher.emit(
                HealthCheck(health={"sleep": 0.4}), app="shop", timeout=0.15
            )
            assert slow.outcomes["probe"].status == "timed_out"
            assert slow.outcomes["probe"].consumer == "probe-1"
            await settle(lambda: publisher.late_acks == 1)
            fast = await publisher.emit(HealthCheck(health={"n": 2}), app="shop", timeout=2)
        assert fast.ok
        assert fast.outcomes["probe"].result == {"n": 2}
        assert publisher.late_acks == 1
        [failure] = await bus.failures.recent()
        assert (failure.consumer, failure.kind) == ("probe-1", "timeout")


class TestNoPolling:
    async def test_pending_wait_costs_no_cpu(self, bus: Bus) -> None:
        """While an emit waits for a silent plugin, the process stays nearly idle."""
        await beat(bus, "ghost", "ghost-1")  # alive, so the emit waits for its deadline
        async with (
            Publisher(bus, "reg-a", policies={"ghost": PluginPolicy(required=True)}) as publisher,
            anyio.create_task_group() as group,
        ):
            group.start_soon(lambda: publisher.emit(HealthCheck(), app="shop", timeout=0.7))
            await anyio.sleep(0.1)
            before = time.process_time()
            await anyio.sleep(0.5)
            spent = time.process_time() - before
        assert spent < 0.1


class TestSharedBus:
    @pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
    @pytest.mark.parametrize("at_once", [False, True], ids=["task-per-registry", "task-per-event"])
    async def test_two_registries_each_get_exactly_their_own_acks(
        self, bus: Bus, workers: int, at_once: bool
    ) -> None:
        """Two registries publishing at once both get every ack of theirs, and only theirs."""
        echo_workers = [
            Worker(
                Probe("echo"),
                bus,
                consumer=f"echo-{n}",
                required=True,
                settings=WorkerSettings(concurrency=4),
            )
            for n in range(workers)
        ]
        results: dict[str, list[tuple[int, WaitResult]]] = {"reg-a": [], "reg-b": []}

        async def emit(publisher: Publisher, n: int) -> None:
            health = {"registry": publisher.registry_id, "n": n}
            result = await publisher.emit(HealthCheck(health=health), app=f"app-{n % 5}", timeout=5)
            results[publisher.registry_id].append((n, result))

        async def emit_all(publisher: Publisher) -> None:
            for n in range(EVENTS):
                await emit(publisher, n)

        async with (
            running_workers(bus, *echo_workers),
            Publisher(bus, "reg-a") as first,
            Publisher(bus, "reg-b") as second,
        ):
            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:
                    for publisher in (first, second):
                        if at_once:
                            for n in range(EVENTS):
                                group.start_soon(emit, publisher, n)
                        else:
                            group.start_soon(emit_all, publisher)
        for registry, publisher in (("reg-a", first), ("reg-b", second)):
            got = results[registry]
            assert len(got) == EVENTS
            assert all(result.ok for _, result in got)
            assert all(
                result.outcomes["echo"].result == {"registry": registry, "n": n}
                for n, result in got
            )
            assert len({result.event_id for _, result in got}) == EVENTS
            assert publisher.late_acks == 0
        ids_a = {result.event_id for _, result in results["reg-a"]}
        ids_b = {result.event_id for _, result in results["reg-b"]}
        assert ids_a.isdisjoint(ids_b)
        for registry in ("reg-a", "reg-b"):
            entries = await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=10_000)
            acks = [ack for _, fields in entries for ack in decode_ack_entry(fields)]
            assert len(acks) == EVENTS
