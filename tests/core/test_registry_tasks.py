"""The registry owns its tasks: shutdown from anywhere, operations in flight, one deadline."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry, RegistryError
from rapid_objection.core._listeners import Listeners
from rapid_objection.plugin_workers import PluginInterface

pytestmark = pytest.mark.anyio

HERE = "tests.core.test_registry_tasks"
MONITORING = "rapid_objection.plugin_workers.examples.monitoring:MonitoringPlugin"


class SlowStart(PluginInterface):
    """Takes ``config["sleep"]`` seconds (default 5) to initialize."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("slow-start", "1.0.0")

    async def initialize(self, registry: Any, config: dict[str, Any]) -> None:
        await anyio.sleep(float(config.get("sleep", 5.0)))


class SlowStop(PluginInterface):
    """Takes 5 seconds to shut down."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("slow-stop", "1.0.0")

    async def shutdown(self) -> None:
        await anyio.sleep(5)


class Stall(PluginInterface):
    """Answers the hooks named in its config only after ``sleep`` seconds (default 30)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("stall", "1.0.0")
        self.config = config or {}

    async def _stall(self, hook: str) -> None:
        if hook in self.config.get("hooks", ()):
            await anyio.sleep(float(self.config.get("sleep", 30.0)))

    async def on_app_registration_started(self, app_name: str, config: Any) -> None:
        await self._stall("app_registration_started")

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        await self._stall("app_registered")

    async def on_app_unregistration_started(self, app_name: str, options: Any) -> None:
        await self._stall("app_unregistration_started")

    async def on_connection_shutdown(self, app_name: str, connection: Any, options: Any) -> None:
        await self._stall("connection_shutdown")

    async def on_operation_failed(
        self, app_name: str, operation: str, error: Any, context: Any
    ) -> None:
        await self._stall("operation_failed")


MakeRegistry = Callable[..., AppRegistry]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Registries (not initialized) on embedded buses of their own; shut down at the end."""
    made: list[tuple[AppRegistry, str]] = []

    def make(*, bus: str | None = None, **config: Any) -> AppRegistry:
        name = bus or f"tasks-{secrets.token_hex(4)}"
        config.setdefault("bus", {"url": f"memory://{name}", "ack_timeout": 5})
        registry = AppRegistry(config)
        made.append((registry, name))
        return registry

    yield make
    with anyio.CancelScope(shield=True):
        for registry, name in made:
            await registry.shutdown()
            forget_memory_server(name)


def app(tmp_path: Path, name: str = "shop") -> dict[str, Any]:
    return {"database": {"url": f"sqlite:///{tmp_path / (name + '.db')}"}}


async def live_registries(url: str) -> set[str]:
    """The ids of the registries the directory of ``url`` holds (a closed one leaves)."""
    async with Bus.connect(url, "default") as bus:
        return {entry.id for entry in await bus.directory.registries()}


async def step_started(registry: AppRegistry, event: str) -> anyio.Event:
    """An event set once the registry starts publishing a step of type ``event``."""
    seen = anyio.Event()

    def note(payload: dict[str, Any]) -> None:
        if payload["event"] == event:
            seen.set()

    registry.on("step-started", note)
    return seen


class TestShutdownFromAnywhere:
    async def test_shutdown_from_another_task(self, make_registry: MakeRegistry) -> None:
        """A registry initialized in one task shuts down cleanly from another one: its
        bus is closed and it leaves the directory."""
        registry = make_registry(registry={"id": "reg-other-task"})
        await registry.initialize()
        url = registry.config.bus.url
        assert "reg-other-task" in await live_registries(url)
        results = []

        async def stop() -> None:
            results.append(await registry.shutdown())

        async with anyio.create_task_group() as group:
            group.start_soon(stop)
        assert results[0].success
        assert not registry.initialized
        assert "reg-other-task" not in await live_registries(url)

    async def test_shutdown_under_a_deadline_of_the_caller(
        self, make_registry: MakeRegistry
    ) -> None:
        """``with fail_after(...)`` around shutdown() is only a deadline, not a cancel
        scope that the registry's own scopes would have to be nested in."""
        registry = make_registry()
        await registry.initialize()
        with anyio.fail_after(5):
            result = await registry.shutdown()
        assert result.success
        assert not registry.initialized

    async def test_two_concurrent_shutdowns_share_one(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """A second shutdown() while the first runs waits for it and returns its result."""
        registry = make_registry()
        await registry.initialize()
        await registry.register_app("shop", app(tmp_path))
        results = []

        async def stop() -> None:
            results.append(await registry.shutdown())

        async with anyio.create_task_group() as group:
            group.start_soon(stop)
            group.start_soon(stop)
        first, second = results
        assert first is second
        assert first.success
        assert first.apps_shut_down == ["shop"]

    async def test_cancelled_while_plugins_load_closes_the_bus(
        self, make_registry: MakeRegistry
    ) -> None:
        """``move_on_after`` around ``async with AppRegistry(...)`` while a plugin is still
        loading leaves nothing open: the registry left the directory, and a new registry
        of the same id starts."""
        config = {
            "registry": {"id": "reg-cancelled"},
            "plugins": {"slow-start": {"module": f"{HERE}:SlowStart"}},
        }
        registry = make_registry(**config)
        url = registry.config.bus.url
        with anyio.move_on_after(0.3) as scope:
            async with registry:
                pytest.fail("initialize() should not have finished")
        assert scope.cancelled_caught
        assert not registry.initialized
        assert "reg-cancelled" not in await live_registries(url)
        again = make_registry(registry={"id": "reg-cancelled"}, bus=registry.config.bus.url[9:])
        await again.initialize()
        assert again.initialized


class TestBackgroundFailures:
    @pytest.mark.redis_server
    async def test_a_worker_that_cannot_be_respawned_does_not_cancel_the_caller(
        self, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A supervised worker dies and cannot be started again (no executable): the
        plugin shows as failed with the OSError in status, the application's task goes
        on, and shutdown is clean."""
        config = {
            "registry": {"id": f"registry-{namespace}"},
            "bus": {"url": redis_url, "namespace": namespace},
            "plugin_manager": {"load_timeout": 10, "shutdown_timeout": 5},
            "plugins": {"monitoring-plugin": {"module": MONITORING, "mode": "process"}},
        }
        registry = AppRegistry(config)
        try:
            result = await registry.initialize()
            assert result.loaded_plugins == ["monitoring-plugin"]
            loaded = registry.plugins.loaded("monitoring-plugin")
            assert loaded is not None
            assert loaded.supervisor is not None
            (pid,) = loaded.supervisor.pids
            monkeypatch.setattr(sys, "executable", "/nonexistent/python")
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(10):
                while loaded.error is None:
                    await anyio.sleep(0.05)
            status = (await registry.get_status())["plugins"]["plugins"]["monitoring-plugin"]
            assert status["status"] == "failed"
            assert status["error"].startswith("FileNotFoundError")
            await anyio.sleep(0.1)  # the caller's task is still alive and not cancelled
            shutdown = await registry.shutdown()
            assert shutdown.success, shutdown.errors
        finally:
            with anyio.CancelScope(shield=True):
                await registry.shutdown()
                async with Bus.connect(redis_url, namespace) as bus:
                    await purge(bus)


class TestOperationsInFlight:
    async def test_a_registration_waiting_on_an_ack_is_cancelled_and_rolled_back(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """Shutdown cancels a registration still waiting for a plugin: the caller gets a
        clear error, the app is not registered, and new operations are refused."""
        registry = make_registry()
        await registry.initialize()
        await registry.load_plugin(Stall, {"hooks": ["app_registered"]}, required=True)
        await registry.refresh_plugins()
        waiting = await step_started(registry, "app_registered")
        outcome: list[BaseException] = []

        async def register() -> None:
            try:
                await registry.register_app("shop", app(tmp_path))
            except RegistryError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(register)
            await waiting.wait()
            group.start_soon(registry.shutdown, 1.0)
            await anyio.sleep(0.05)
            with pytest.raises(RegistryError, match=r"register_app.* refused"):
                await registry.register_app("other", app(tmp_path, "other"))
        (error,) = outcome
        assert "shutting down: register_app('shop') was cancelled" in str(error)
        assert not registry.has_app("shop")
        assert registry.engines.count() == 0

    async def test_an_unregistration_in_flight_ends_with_a_clear_error(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """An unregistration waiting on a plugin when shutdown comes raises a
        RegistryError (not a KeyError), and shutdown closes the app's connection."""
        registry = make_registry()
        await registry.initialize()
        await registry.register_app("shop", app(tmp_path))
        await registry.load_plugin(Stall, {"hooks": ["app_unregistration_started"]}, required=True)
        await registry.refresh_plugins()
        waiting = await step_started(registry, "app_unregistration_started")
        outcome: list[BaseException] = []
        results = []

        async def unregister() -> None:
            try:
                await registry.unregister_app("shop")
            except Exception as exc:
                outcome.append(exc)

        async def stop() -> None:
            results.append(await registry.shutdown(1.0))

        async with anyio.create_task_group() as group:
            group.start_soon(unregister)
            await waiting.wait()
            group.start_soon(stop)
        (error,) = outcome
        assert type(error) is RegistryError
        assert results[0].apps_shut_down == ["shop"]
        assert registry.engines.count() == 0

    async def test_a_plugin_loading_during_shutdown_is_not_left_listed(
        self, make_registry: MakeRegistry
    ) -> None:
        """load_plugin still initializing when shutdown comes is cancelled: it raises, and
        the stopped registry lists no plugin."""
        registry = make_registry()
        await registry.initialize()
        outcome: list[BaseException] = []

        async def load() -> None:
            try:
                await registry.load_plugin(SlowStart, {"sleep": 1.0})
            except RegistryError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(load)
            await anyio.sleep(0.2)
            group.start_soon(registry.shutdown, 1.0)
        (error,) = outcome
        assert "load_plugin" in str(error)
        assert registry.get_all_plugins() == []


class TestUnregisterTimeout:
    async def test_a_timeout_during_connection_shutdown_removes_the_app(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """The engine is released before plugins answer connection_shutdown: a timeout
        there leaves the app unregistered, and its name can be registered again."""
        registry = make_registry()
        await registry.initialize()
        await registry.register_app("shop", app(tmp_path))
        await registry.load_plugin(
            Stall, {"hooks": ["connection_shutdown"], "sleep": 3}, required=True, timeout=10
        )
        await registry.refresh_plugins()
        with pytest.raises(TimeoutError):
            await registry.unregister_app("shop", timeout=0.5)
        assert not registry.has_app("shop")
        assert registry.engines.count() == 0
        await registry.register_app("shop", app(tmp_path))
        assert registry.has_app("shop")


class TestOneDeadline:
    async def test_shutdown_timeout_bounds_apps_and_plugins_together(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """With shutdown_timeout 1 s, a plugin that is slow to answer connection_shutdown
        and one slow to shut down do not make shutdown take their sum."""
        registry = make_registry(
            registry={"shutdown_timeout": 1.0}, plugin_manager={"shutdown_timeout": 3.0}
        )
        await registry.initialize()
        await registry.register_app("shop", app(tmp_path))
        await registry.load_plugin(
            Stall, {"hooks": ["connection_shutdown"], "sleep": 5}, required=True, timeout=10
        )
        await registry.load_plugin(SlowStop)
        await registry.refresh_plugins()
        started = time.monotonic()
        result = await registry.shutdown()
        took = time.monotonic() - started
        assert took < 2.0
        assert not result.success
        assert "within 1s" in "; ".join(result.errors)
        assert registry.engines.count() == 0

    async def test_a_cancelled_registration_does_not_wait_for_acks_to_clean_up(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """``move_on_after(0.5)`` around a registration that a plugin holds up returns
        after about 0.5 s: operation_failed is published, not awaited."""
        registry = make_registry()
        await registry.initialize()
        await registry.load_plugin(
            Stall,
            {"hooks": ["app_registration_started", "operation_failed"], "sleep": 10},
            required=True,
            timeout=3,
        )
        await registry.refresh_plugins()
        started = time.monotonic()
        with anyio.move_on_after(0.5):
            await registry.register_app("shop", app(tmp_path))
        assert time.monotonic() - started < 1.2
        assert not registry.has_app("shop")


class TestLoadingCatchesEverything:
    async def test_a_module_calling_sys_exit_at_import_is_a_failed_plugin(
        self, make_registry: MakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A plugin module that calls sys.exit() when imported fails that plugin (import
        phase); the registry runs, and shuts down cleanly."""
        module = f"exits_{secrets.token_hex(4)}"
        (tmp_path / f"{module}.py").write_text("import sys\nsys.exit(3)\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        registry = make_registry(plugins={"exits": {"module": f"{module}:Plugin"}})
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        assert (failed.name, failed.phase) == ("exits", "import")
        assert failed.error == f"Failed to import plugin module '{module}': SystemExit(3)"
        assert registry.initialized
        assert (await registry.shutdown()).success


class HealthRecorder(PluginInterface):
    """Records health checks and app_unregistered per app; a check of "a" takes 0.3 s."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("health-recorder", "1.0.0")
        self.seen: list[tuple[str, str]] = []
        self.checking_a = anyio.Event()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        self.seen.append(("health_check", app_name))
        if app_name == "a":
            self.checking_a.set()
            await anyio.sleep(0.3)

    async def on_app_unregistered(self, app_name: str, options: Any) -> None:
        self.seen.append(("app_unregistered", app_name))

    async def on_connection_shutdown(self, app_name: str, connection: Any, options: Any) -> None:
        self.seen.append(("connection_shutdown", app_name))


class TestHealthMonitorFollowsTheApps:
    async def test_no_health_check_after_an_apps_last_event(
        self, make_registry: MakeRegistry, tmp_path: Path
    ) -> None:
        """An app unregistered while the monitor checks another one is not checked in
        that round; after shutdown's connection_shutdown no app gets a health check."""
        registry = make_registry(
            registry={"enable_health_monitoring": True, "health_check_interval": 0.1}
        )
        await registry.initialize()
        plugin: HealthRecorder = await registry.load_plugin(HealthRecorder, timeout=3)
        await registry.refresh_plugins()
        published: list[tuple[str, str]] = []
        registry.on("step-started", lambda step: published.append((step["event"], step["app"])))
        await registry.register_app("a", app(tmp_path, "a"))
        await registry.register_app("b", app(tmp_path, "b"))
        with anyio.fail_after(5):
            await plugin.checking_a.wait()
        await registry.unregister_app("b")
        await anyio.sleep(0.5)
        await registry.shutdown()
        after_b = published[published.index(("app_unregistered", "b")) :]
        assert ("health_check", "b") not in after_b
        closed = published.index(("connection_shutdown", "a"))
        assert ("health_check", "a") not in published[closed:]
        assert ("health_check", "a") in published[:closed]


class TestListenersAreTimeLimited:
    async def test_a_stuck_async_listener_is_abandoned_after_the_time_limit(self) -> None:
        """emit() gives an async listener ``timeout`` seconds, then goes on to the next
        listener instead of waiting for ever."""
        listeners = Listeners(timeout=0.2)
        called: list[str] = []

        async def stuck(payload: dict[str, Any]) -> None:
            await anyio.sleep_forever()

        listeners.on("plugin-unloaded", stuck)
        listeners.on("plugin-unloaded", lambda payload: called.append(payload["name"]))
        started = time.monotonic()
        with anyio.fail_after(3):
            await listeners.emit("plugin-unloaded", {"name": "p"})
        assert time.monotonic() - started < 1.0
        assert called == ["p"]

    async def test_a_stuck_listener_does_not_hang_shutdown(
        self, make_registry: MakeRegistry
    ) -> None:
        """A plugin-unloaded listener that never returns does not keep shutdown(timeout=1)
        from returning."""
        registry = make_registry()
        await registry.initialize()
        await registry.load_plugin(SlowStart, {"sleep": 0})

        async def stuck(payload: dict[str, Any]) -> None:
            await anyio.sleep_forever()

        registry.on("plugin-unloaded", stuck)
        started = time.monotonic()
        with anyio.fail_after(10):
            await registry.shutdown(timeout=1)
        assert time.monotonic() - started < 2.0
        assert not registry.initialized
