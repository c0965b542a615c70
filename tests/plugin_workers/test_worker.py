"""Worker: one plugin instance as one consumer of its group, with manifest and heartbeat."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Custom, HealthCheck, Publisher
from rapid_objection.plugin_workers import PluginInterface, RegistryView, Worker, WorkerSettings
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")


class Lifecycle(PluginInterface):
    """Records initialize and shutdown, and answers two hooks."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("lifecycle", "3.1.4")
        self.config = dict(config or {})
        self.initialized: list[tuple[object, dict[str, Any]]] = []
        self.shut_down = 0

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        self.initialized.append((registry, config))

    async def shutdown(self) -> None:
        self.shut_down += 1

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return {"app": app_name, "config": self.config}

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> dict[str, Any]:
        if "sleep" in health_status:
            await anyio.sleep(health_status["sleep"])
        return {"checked": app_name}


class Listener(PluginInterface):
    """Listens for "cache-cleared" custom events from other plugins."""

    def __init__(self) -> None:
        super().__init__("listener")
        self.received: list[Any] = []
        self.arrived = anyio.Event()

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        registry.on("cache-cleared", self._on_cache_cleared)

    async def _on_cache_cleared(self, data: Any) -> None:
        self.received.append(data)
        self.arrived.set()


class Cleaner(PluginInterface):
    """Clears a cache when an app registers and tells the other plugins about it."""

    def __init__(self) -> None:
        super().__init__("cleaner")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        assert self.registry is not None
        return await self.registry.emit("cache-cleared", {"app": app_name, "keys": 12})


@asynccontextmanager
async def running_workers(*workers: Worker) -> AsyncIterator[None]:
    """Run several workers side by side and stop them together."""
    async with anyio.create_task_group() as group:
        for worker in workers:
            await group.start(worker.run)
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()


class TestManifest:
    @pytest.mark.parametrize(
        ("options", "required", "timeout"),
        [
            pytest.param({}, False, 5.0, id="defaults"),
            pytest.param(
                {"required": True, "settings": WorkerSettings(timeout=1.5)},
                True,
                1.5,
                id="required",
            ),
        ],
    )
    async def test_manifest_reflects_plugin_and_options(
        self, bus: Bus, options: dict[str, Any], required: bool, timeout: float
    ) -> None:
        """The manifest names the implemented hooks, the plugin's version, required and timeout."""
        worker = Worker(Lifecycle(), bus, **options)
        manifest = worker.manifest
        assert manifest.plugin == "lifecycle"
        assert sorted(manifest.hooks) == ["app_registered", "health_check"]
        assert (manifest.version, manifest.required, manifest.timeout) == (
            "3.1.4",
            required,
            timeout,
        )

    async def test_announced_manifest_is_the_workers(self, bus: Bus) -> None:
        """A started worker announces its manifest on the bus."""
        async with running_worker(Lifecycle(), bus, required=True, timeout=2.0) as worker:
            announced = (await bus.directory.manifests())["lifecycle"]
            expected = worker.manifest
        assert (announced.plugin, announced.version, announced.hooks) == (
            expected.plugin,
            expected.version,
            expected.hooks,
        )
        assert (announced.required, announced.timeout) == (True, 2.0)

    async def test_plugin_without_name_is_named_after_its_class(self, bus: Bus) -> None:
        """A duck-typed plugin with no ``name`` runs under its class name."""

        class Anonymous:
            def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
                pass

        worker = Worker(Anonymous(), bus)
        assert (worker.name, worker.manifest.hooks) == ("Anonymous", ("health_check",))


class TestLifecycle:
    async def test_initialize_gets_a_registry_view_and_config(self, bus: Bus) -> None:
        """initialize() receives a RegistryView of this bus and the worker's config."""
        plugin = Lifecycle({"directory": "./backups"})
        async with running_worker(plugin, bus, config={"keep": 3}) as worker:
            [(view, config)] = plugin.initialized
            assert isinstance(view, RegistryView)
            assert view is worker.view
            assert (view.bus, view.plugin) == (bus, "lifecycle")
            assert config == {"keep": 3}
            assert plugin.config == {"directory": "./backups", "keep": 3}
            assert plugin.shut_down == 0
        assert plugin.shut_down == 1

    async def test_config_reaches_the_hooks(self, bus: Bus) -> None:
        """What initialize() got is what the hooks see, across the bus."""
        async with (
            running_worker(Lifecycle(), bus, config={"keep": 3}, required=True),
            Publisher(bus, "reg-w") as publisher,
        ):
            result = await publisher.emit(
                AppRegistered(connection=CONNECTION), app="shop", timeout=2
            )
        assert result.outcomes["lifecycle"].result == {"app": "shop", "config": {"keep": 3}}

    async def test_registry_view_sees_the_app_directory(self, bus: Bus) -> None:
        """A plugin's RegistryView lists the apps the registries own."""
        await bus.directory.claim_app("shop", "reg-w")
        plugin = Lifecycle()
        async with running_worker(plugin, bus):
            assert plugin.registry is not None
            assert await plugin.registry.get_all_apps() == {"shop": "reg-w"}
            assert await plugin.registry.get_app("shop") == "reg-w"
            assert await plugin.registry.get_app("blog") is None


class TestStop:
    async def test_clean_stop_removes_heartbeat_and_consumer(self, bus: Bus) -> None:
        """After a clean stop with nothing pending, heartbeat and group consumer are gone."""
        async with (
            running_worker(Lifecycle(), bus, consumer="life-1", required=True),
            Publisher(bus, "reg-w") as publisher,
        ):
            assert [w.consumer for w in await bus.directory.workers("lifecycle")] == ["life-1"]
            result = await publisher.emit(HealthCheck(), app="shop", timeout=2)
            assert result.ok
            consumers = await bus.redis.xinfo_consumers(bus.keys.events, "lifecycle")
            assert [c.name for c in consumers] == ["life-1"]
        assert await bus.directory.workers("lifecycle") == []
        assert await bus.redis.xinfo_consumers(bus.keys.events, "lifecycle") == []
        [group] = await bus.redis.xinfo_groups(bus.keys.events)
        assert (group.name, group.pending) == ("lifecycle", 0)

    async def test_stop_waits_for_the_hook_in_flight(self, bus: Bus) -> None:
        """A hook still running when the worker stops completes and its ack reaches the registry."""
        async with Publisher(bus, "reg-w") as publisher:
            plugin = Lifecycle()
            results = []
            async with running_worker(plugin, bus, consumer="life-1") as worker:

                async def emit() -> None:
                    results.append(
                        await publisher.emit(
                            HealthCheck(health={"sleep": 0.3}),
                            app="shop",
                            timeout=2,
                            required=["lifecycle"],
                        )
                    )

                async with anyio.create_task_group() as group:
                    group.start_soon(emit)
                    with anyio.fail_after(1):
                        while worker.consumer.in_flight == 0:
                            await anyio.sleep(0.01)
                    worker.stop()
        [result] = results
        assert result.ok
        assert result.outcomes["lifecycle"].result == {"checked": "shop"}
        assert plugin.shut_down == 1


class TestCustomEvents:
    async def test_one_plugins_emit_reaches_anothers_handler(self, bus: Bus) -> None:
        """One plugin's registry.emit calls the handler another plugin set with registry.on."""
        listener, cleaner = Listener(), Cleaner()
        async with (
            running_workers(Worker(listener, bus), Worker(cleaner, bus)),
            Publisher(bus, "reg-w") as publisher,
        ):
            result = await publisher.emit(
                AppRegistered(connection=CONNECTION), app="shop", timeout=2, required=["cleaner"]
            )
            assert result.ok
            with anyio.fail_after(1.5):
                await listener.arrived.wait()
        assert listener.received == [{"app": "shop", "keys": 12}]
        event_id = result.outcomes["cleaner"].result
        [entry] = [
            entry
            async for entry in bus.history.iterate(types=("custom",))
            if entry.envelope.id == event_id
        ]
        assert entry.envelope.payload == Custom(
            name="cache-cleared", data={"app": "shop", "keys": 12}, source="cleaner"
        )

    async def test_handler_removed_with_off_is_not_called(self, bus: Bus) -> None:
        """After registry.off the handler no longer receives the event."""
        listener = Listener()
        async with running_worker(listener, bus) as worker:
            worker.view.off("cache-cleared", listener._on_cache_cleared)
            await worker.view.emit("cache-cleared", {"app": "shop"})
            await anyio.sleep(0.2)
        assert listener.received == []


class TestIdle:
    async def test_idle_worker_costs_no_cpu(self, bus: Bus) -> None:
        """A worker with nothing to do keeps the process nearly idle (no polling)."""
        async with running_worker(Lifecycle(), bus):
            await anyio.sleep(0.1)
            before = time.process_time()
            await anyio.sleep(0.5)
            spent = time.process_time() - before
        assert spent < 0.1
