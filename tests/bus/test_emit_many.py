"""Publisher.emit_many: several events of several apps in one round trip, each awaited
for its own required plugins, on every lane (embedded, Redis, cluster) and signed."""

from __future__ import annotations

from typing import Any

import pytest

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    Emission,
    HealthCheck,
    Publisher,
)
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus.testing import purge
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")


class Echo(PluginInterface):
    """Answers with the app it was called for (and, for a health check, its payload)."""

    def __init__(self, name: str = "echo") -> None:
        super().__init__(name, "1.0.0")
        self.seen: list[str] = []

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        self.seen.append(app_name)
        return app_name

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        self.seen.append(app_name)
        return {"app": app_name, **health_status}


async def stream_events(bus: Bus) -> list[tuple[str, str]]:
    """(entry id, envelope id) of every event in the stream, oldest first."""
    entries = await bus.redis.xrange(bus.keys.events, "-", "+", 100)
    return [(entry_id, decode_envelope(fields[EVENT_FIELD]).id) for entry_id, fields in entries]


class TestEmitMany:
    async def test_events_of_several_apps_are_acked_in_order(self, bus: Bus) -> None:
        """Each result matches its event (app, type, the plugin's answer), in the order
        given; the events went to the stream in that order, next to each other."""
        plugin = Echo()
        events = [
            Emission(AppRegistered(connection=CONNECTION), app="shop"),
            Emission(HealthCheck(health={"n": 1}), app="billing"),
            Emission(HealthCheck(health={"n": 2}), app="shop"),
        ]
        async with (
            running_worker(plugin, bus, consumer="echo-1", required=True),
            Publisher(bus, "reg-a", policies={"echo": PluginPolicy(required=True)}) as publisher,
        ):
            results = await publisher.emit_many(events, timeout=3)
        assert [(r.app, r.type) for r in results] == [
            ("shop", "app_registered"),
            ("billing", "health_check"),
            ("shop", "health_check"),
        ]
        assert all(r.ok and r.required == ("echo",) for r in results)
        assert [r.outcomes["echo"].result for r in results] == [
            "shop",
            {"app": "billing", "n": 1},
            {"app": "shop", "n": 2},
        ]
        assert sorted(plugin.seen) == ["billing", "shop", "shop"]
        assert await stream_events(bus) == [(r.entry_id, r.event_id) for r in results]
        assert all(0 <= r.elapsed < 3 for r in results)

    async def test_each_event_waits_for_its_own_plugins(self, bus: Bus) -> None:
        """An event that requires a plugin nobody runs is decided at once (timed out, a
        no_consumer failure recorded) without holding back the others of the batch."""
        async with (
            running_worker(Echo(), bus, consumer="echo-1", required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            results = await publisher.emit_many(
                [
                    Emission(HealthCheck(health={}), app="shop", required=["echo"]),
                    Emission(HealthCheck(health={}), app="billing", required=["ghost"]),
                    Emission(HealthCheck(health={}), app="crm", required=[]),
                ],
                timeout=5,
            )
            failures = await bus.failures.recent(plugin="ghost")
        assert [r.ok for r in results] == [True, False, True]
        assert results[0].outcomes["echo"].status == "acked"
        assert results[1].outcomes["ghost"].status == "timed_out"
        assert results[1].elapsed < 2  # not the 5 s deadline
        assert results[2].outcomes == {}
        assert [(f.kind, f.app, f.entry_id) for f in failures] == [
            ("no_consumer", "billing", results[1].entry_id)
        ]

    async def test_bare_payloads_and_nothing_at_all(self, bus: Bus) -> None:
        """A payload without an Emission goes under no app; an empty batch sends nothing."""
        async with Publisher(bus, "reg-a") as publisher:
            assert await publisher.emit_many([]) == []
            (result,) = await publisher.emit_many([HealthCheck(health={})], timeout=1)
        assert (result.app, result.ok, result.outcomes) == ("", True, {})
        assert await stream_events(bus) == [(result.entry_id, result.event_id)]
        assert publisher.stats()["waiting"] == 0


async def test_a_signed_batch_is_accepted_in_order(two_lane_url: str, namespace: str) -> None:
    """With a keyring, every event of a batch is signed and chained to the one before: the
    worker's check accepts each (no dead letter, every event acked), and so the next emit."""
    ring = KeyFile.generate(["echo"])
    async with Bus.connect(two_lane_url, namespace, keyring=Keyring(ring)) as bus:
        try:
            async with (
                running_worker(Echo(), bus, consumer="echo-1", required=True),
                Publisher(bus, "reg-a", policies={"echo": PluginPolicy(required=True)}) as pub,
            ):
                first = await pub.emit_many(
                    [Emission(HealthCheck(health={"n": n}), app=f"a{n % 3}") for n in range(5)],
                    timeout=3,
                )
                second = await pub.emit(HealthCheck(health={"n": 5}), app="a0", timeout=3)
            assert [r.ok for r in [*first, second]] == [True] * 6
            assert await bus.redis.xlen(bus.keys.dlq) == 0
        finally:
            await purge(bus)
