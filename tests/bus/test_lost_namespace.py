"""A namespace that loses its data under a running registry and worker (a flush, an
empty restart: see tests/faults/test_emptied.py for the real restart) is put back by its
owners, on every lane: groups, manifest, heartbeats, registry record, ack position."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher
from rapid_objection.bus import _publisher as publisher_module
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import encode
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus.testing import drained, purge
from rapid_objection.plugin_workers import PluginInterface, current_delivery
from rapid_objection.plugin_workers import _worker as worker_module
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

REGISTRY = "reg-lost"
LISTED = "listed"
"""A plugin the registry's configuration names, with no worker."""

BACK_WITHIN = 3.0


class Counter(PluginInterface):
    """Counts the calls of its hook per event id."""

    def __init__(self) -> None:
        super().__init__("counter", "2.0.0")
        self.calls: dict[str, int] = {}

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        event = current_delivery().envelope.id
        self.calls[event] = self.calls.get(event, 0) + 1


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats (which notice a lost record) every 50 ms instead of every second."""
    monkeypatch.setattr(publisher_module, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(worker_module, "HEARTBEAT_INTERVAL", 0.05)


def registered() -> AppRegistered:
    return AppRegistered(connection=ConnectionInfo(dialect="sqlite"))


async def groups(bus: Bus) -> set[str]:
    return {group.name for group in await bus.redis.xinfo_groups(bus.keys.events)}


class TestLostNamespace:
    async def test_a_flushed_namespace_is_put_back_and_the_next_event_delivered(
        self, bus: Bus, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After every key of the namespace is deleted, the next event is delivered and
        acked; the worker's manifest (required), heartbeat and group, the registry's
        record, the listed plugin's group and the saved ack position come back, and
        the worker and the registry each warn once, naming what was lost."""
        caplog.set_level(logging.WARNING, "rapid_objection.bus")
        plugin = Counter()
        policies = {LISTED: PluginPolicy()}
        async with (
            running_worker(plugin, bus, consumer="c-1", required=True),
            Publisher(bus, REGISTRY, policies=policies) as publisher,
        ):
            before = await publisher.emit(registered(), app="a", timeout=3)
            assert before.outcomes["counter"].status == "acked"
            await purge(bus)
            after = await publisher.emit(registered(), app="a", required=["counter"], timeout=3)
            with anyio.fail_after(BACK_WITHIN):
                while not (
                    await groups(bus) == {"counter", LISTED}
                    and "counter" in await bus.directory.manifests()
                    and await bus.directory.workers("counter")
                    and await bus.directory.registries()
                    and await bus.redis.hget(bus.keys.ack_positions, REGISTRY)
                ):
                    await anyio.sleep(0.02)
            manifest = (await bus.directory.manifests())["counter"]
            await publisher.refresh_directory()
            awaited = publisher.required_for("app_registered")
        assert after.outcomes["counter"].status == "acked", after.outcomes["counter"]
        assert plugin.calls == {before.event_id: 1, after.event_id: 1}
        assert (manifest.version, manifest.hooks, manifest.required) == (
            "2.0.0",
            ("app_registered",),
            True,
        )
        assert awaited == ("counter",)
        warnings = [r.getMessage() for r in caplog.records if "had lost" in r.getMessage()]
        assert len(warnings) == 2, warnings
        worker_warning, registry_warning = sorted(warnings)
        assert "consumer 'c-1'" in worker_warning
        assert "manifest" in worker_warning
        assert f"registry {REGISTRY!r}" in registry_warning
        assert f"consumer group {LISTED!r}" in registry_warning

    async def test_a_dropped_group_comes_back_after_what_it_had_delivered(self, bus: Bus) -> None:
        """A group deleted under its running worker is created again after the last entry
        the worker had read: the events it handled before do not run again, the one
        published next does."""
        plugin = Counter()
        async with running_worker(plugin, bus, consumer="c-1"), Publisher(bus, REGISTRY) as pub:
            old = [(await pub.publish(registered(), app="a"))[0].id for _ in range(3)]
            await drained(bus, "counter")
            # Deleted and the next event published in one step (MULTI/EXEC): the event
            # is in the stream before the worker can notice that its group is gone.
            new = pub.envelope(registered(), app="a")
            destroy = ("XGROUP", "DESTROY", bus.keys.events, "counter")
            batch = bus.redis.batch()._add(destroy, "xgroup_destroy", bus.keys.events, "counter")
            await batch.xadd(bus.keys.events, {EVENT_FIELD: encode(new)}).execute()
            with anyio.fail_after(BACK_WITHIN):
                while new.id not in plugin.calls:
                    await anyio.sleep(0.02)
            await drained(bus, "counter")
        assert plugin.calls == dict.fromkeys([*old, new.id], 1)
