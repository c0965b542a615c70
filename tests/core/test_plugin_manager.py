"""The PluginManager of the seed: batches, load timeouts, error texts, isolation, modes.

Inline plugins on an embedded bus, except the process-mode supervision at the end,
which needs the real Redis. The plugins below are loaded by module path
(``tests.core.test_plugin_manager:Sleeper``), as a configuration names them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry
from rapid_objection.core._loaded import PluginFailed
from rapid_objection.plugin_workers import (
    ENTRY_POINT_GROUP,
    PluginInterface,
    PluginLoadError,
    RegistryView,
)
from rapid_objection.plugin_workers.examples.backup import BackupPlugin
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

HERE = "tests.core.test_plugin_manager"
BACKUP = "rapid_objection.plugin_workers.examples.backup:BackupPlugin"
MONITORING = "rapid_objection.plugin_workers.examples.monitoring:MonitoringPlugin"

BUILT: dict[str, Sleeper] = {}
"""Every Sleeper built during the current test, by name (also those that never loaded)."""


class Sleeper(PluginInterface):
    """Takes ``config["sleep"]`` seconds to initialize; named by ``config["name"]``."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = config or {}
        super().__init__(str(config.get("name", "sleeper")), "1.0.0")
        self.config = config
        self.started: float | None = None
        self.finished: float | None = None
        self.shut_down = False
        BUILT[self.name] = self

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        self.registry = registry
        self.started = time.monotonic()
        await anyio.sleep(float(config.get("sleep", 0.0)))
        self.finished = time.monotonic()

    async def shutdown(self) -> None:
        self.shut_down = True

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> str:
        return app_name


class Validated(PluginInterface):
    """An asynchronous validate_configuration that takes a moment and keeps what it saw."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("validated", "1.0.0")
        self.validated: dict[str, Any] | None = None

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        await anyio.sleep(0.05)
        if config.get("level") not in ("low", "high"):
            raise ValueError("level must be 'low' or 'high'")
        self.validated = config
        return True


class NoInitialize:
    """A plain class: shutdown and get_status, but no initialize."""

    name = "no-initialize"
    version = "1.0.0"

    async def shutdown(self) -> None:
        """Nothing to release."""

    def get_status(self) -> dict[str, Any]:
        return {}


RegistryFactory = Callable[..., Awaitable[AppRegistry]]


def plugin_table(module: str = f"{HERE}:Sleeper", **table: Any) -> dict[str, Any]:
    return {"module": module, **table}


def sleeper(name: str, sleep: float = 0.0, **table: Any) -> dict[str, Any]:
    return plugin_table(config={"name": name, "sleep": sleep}, **table)


@pytest.fixture(autouse=True)
def built() -> Iterator[dict[str, Sleeper]]:
    BUILT.clear()
    yield BUILT
    BUILT.clear()


@pytest.fixture
async def make_registry() -> AsyncIterator[RegistryFactory]:
    """Build (and, unless ``initialize=False``, initialize) registries on embedded buses
    of their own; all of them are shut down at the end."""
    async with AsyncExitStack() as stack:

        async def make(
            plugins: dict[str, Any],
            *,
            initialize: bool = True,
            bus: str | None = None,
            ack_timeout: float = 5.0,
            **manager: Any,
        ) -> AppRegistry:
            name = bus or f"pm-{secrets.token_hex(4)}"
            stack.callback(forget_memory_server, name)
            registry = AppRegistry(
                {
                    "bus": {"url": f"memory://{name}", "ack_timeout": ack_timeout},
                    "plugin_manager": manager,
                    "plugins": plugins,
                }
            )
            stack.push_async_callback(registry.shutdown)
            if initialize:
                await registry.initialize()
            return registry

        yield make


class TestBatches:
    async def test_enabled_plugins_load_in_batches_of_three(
        self, make_registry: RegistryFactory
    ) -> None:
        """Seven plugins whose initialize takes 0.3 s load in three batches (3, 3, 1):
        concurrently within a batch, a batch after the previous one has finished."""
        names = [f"plugin-{number}" for number in range(1, 8)]
        registry = await make_registry(
            {name: sleeper(name, 0.3) for name in names}, initialize=False
        )
        result = await registry.initialize()
        assert result.loaded_plugins == names
        assert result.plugin_count == 7
        batches = [names[0:3], names[3:6], names[6:7]]
        plugins = {name: BUILT[name] for name in names}
        starts = {name: plugin.started for name, plugin in plugins.items()}
        ends = {name: plugin.finished for name, plugin in plugins.items()}
        assert None not in starts.values()
        assert None not in ends.values()
        for batch in batches:
            batch_starts = [starts[name] or 0.0 for name in batch]
            assert max(batch_starts) - min(batch_starts) < 0.1, f"{batch} did not start together"
        for previous, batch in itertools.pairwise(batches):
            last_end = max(ends[name] or 0.0 for name in previous)
            assert min(starts[name] or 0.0 for name in batch) >= last_end
        assert 0.85 <= result.duration < 1.5, "three batches of 0.3 s"

    async def test_a_disabled_plugin_is_neither_loaded_nor_failed(
        self, make_registry: RegistryFactory
    ) -> None:
        """``enabled = false`` keeps a plugin out of loading altogether."""
        registry = await make_registry(
            {"on": sleeper("on"), "off": sleeper("off", enabled=False)}, initialize=False
        )
        result = await registry.initialize()
        assert (result.loaded_plugins, result.failed_plugins) == (["on"], [])
        assert "off" not in BUILT
        assert not registry.plugins.has("off")


class TestLoadTimeout:
    async def test_a_configured_plugin_gets_twice_the_load_timeout(
        self, make_registry: RegistryFactory
    ) -> None:
        """With load_timeout 0.25 s, a plugin taking 0.35 s loads, one taking 1 s fails
        with the seed's timeout text naming 2 x 250 ms, and never comes up later."""
        registry = await make_registry(
            {"in-time": sleeper("in-time", 0.35), "too-slow": sleeper("too-slow", 1.0)},
            initialize=False,
            load_timeout=0.25,
        )
        result = await registry.initialize()
        assert result.loaded_plugins == ["in-time"]
        (failed,) = result.failed_plugins
        assert (failed.name, failed.error, failed.phase) == (
            "too-slow",
            "Timeout (500ms): load configured plugin 'too-slow'",
            "timeout",
        )
        await anyio.sleep(1.0)
        assert BUILT["too-slow"].finished is None, "the timed-out initialize was not cancelled"
        assert await registry.bus.directory.workers("too-slow") == []
        assert registry.get_plugin("too-slow") is None

    async def test_a_plugin_loaded_by_hand_gets_the_load_timeout(
        self, make_registry: RegistryFactory
    ) -> None:
        """load_plugin is protected too (the seed: every plugin operation has a timeout;
        configured plugins get the extended one): once load_timeout, not forever."""
        registry = await make_registry({}, load_timeout=0.25)
        started = anyio.current_time()
        with pytest.raises(PluginFailed, match=r"^Timeout \(250ms\): load plugin 'by-hand'$"):
            await registry.load_plugin(Sleeper, {"name": "by-hand", "sleep": 1.0})
        assert anyio.current_time() - started < 0.75
        assert registry.get_plugin("by-hand") is None


class TestTroubleshootingTexts:
    @pytest.mark.parametrize(
        ("table", "error", "phase"),
        [
            pytest.param(
                {"config": {}},
                "Plugin 'my-plugin' missing required 'module' property",
                "config",
                id="missing-module",
            ),
            pytest.param(
                {"module": "tests.core.no_such_module:Plugin"},
                "Failed to import plugin module 'tests.core.no_such_module': "
                "No module named 'tests.core.no_such_module'",
                "import",
                id="module-not-found",
            ),
            pytest.param(
                {"module": f"{HERE}:NoSuchClass"},
                f"Failed to import plugin module '{HERE}': it has no class 'NoSuchClass'",
                "import",
                id="class-not-found",
            ),
            pytest.param(
                {"module": "no-such-entry-point"},
                "Failed to import plugin module 'no-such-entry-point': not 'module:Class' and "
                "no entry point of that name in group 'rapid_objection.plugins'",
                "import",
                id="entry-point-not-found",
            ),
            pytest.param(
                {"module": f"{HERE}:NoInitialize"},
                "Plugin must implement initialize() method",
                "import",
                id="no-initialize",
            ),
        ],
    )
    async def test_the_seeds_error_texts(
        self, make_registry: RegistryFactory, table: dict[str, Any], error: str, phase: str
    ) -> None:
        """A plugin that cannot load fails with the text of the seed's troubleshooting
        section, reported in initialize()'s result."""
        registry = await make_registry({"my-plugin": table}, initialize=False)
        result = await registry.initialize()
        assert result.loaded_plugins == []
        (failed,) = result.failed_plugins
        assert (failed.name, failed.error, failed.phase) == ("my-plugin", error, phase)
        assert not result.success

    async def test_load_plugin_refuses_a_class_without_initialize(
        self, make_registry: RegistryFactory
    ) -> None:
        """Loading by hand checks the interface too."""
        registry = await make_registry({})
        with pytest.raises(PluginLoadError, match=r"^Plugin must implement initialize\(\) method$"):
            await registry.load_plugin(NoInitialize)
        assert registry.get_all_plugins() == []


class TestIsolation:
    async def test_failures_are_isolated_and_reported(
        self, make_registry: RegistryFactory, tmp_path: Path
    ) -> None:
        """Broken plugins fail one by one, each with its reason and an ``error`` event of
        component PluginManager, while the others load and the registry works."""
        errors: list[dict[str, Any]] = []
        registry = await make_registry(
            {
                "first": sleeper("first"),
                "unimportable": plugin_table("tests.core.no_such_module:Plugin"),
                "moduleless": {"config": {}},
                "backup-plugin": plugin_table(BACKUP, config={}),
                "last": sleeper("last"),
            },
            initialize=False,
        )
        registry.on("error", errors.append)
        result = await registry.initialize()
        assert result.loaded_plugins == ["first", "last"]
        failures = {f.name: (f.phase, f.error) for f in result.failed_plugins}
        assert failures == {
            "unimportable": (
                "import",
                "Failed to import plugin module 'tests.core.no_such_module': "
                "No module named 'tests.core.no_such_module'",
            ),
            "moduleless": ("config", "Plugin 'moduleless' missing required 'module' property"),
            "backup-plugin": (
                "validate",
                "Plugin 'backup-plugin' configuration is invalid: Backup directory is required",
            ),
        }
        assert sorted(errors, key=lambda e: e["plugin"]) == sorted(
            (
                {"component": "PluginManager", "phase": phase, "plugin": name, "error": error}
                for name, (phase, error) in failures.items()
            ),
            key=lambda e: e["plugin"],
        )
        await registry.register_app("shop", {"database": {"url": f"sqlite:///{tmp_path}/s.db"}})
        assert registry.has_app("shop")


class TestNames:
    async def test_a_plugin_configured_under_another_name_is_not_silently_lost(
        self, make_registry: RegistryFactory, tmp_path: Path
    ) -> None:
        """``[plugins.backup]`` naming a plugin whose own name is "backup-plugin": either
        the load fails naming both names, or the plugin serves under its key; never a
        required plugin that is "loaded" while every hook waits for it in vain."""
        registry = await make_registry(
            {
                "backup": plugin_table(
                    BACKUP, required=True, timeout=0.3, config={"directory": str(tmp_path)}
                )
            },
            initialize=False,
            ack_timeout=0.3,
        )
        result = await registry.initialize()
        if result.failed_plugins:
            (failed,) = result.failed_plugins
            assert "backup-plugin" in failed.error
            return
        with anyio.fail_after(1.0):
            await registry.register_app("shop", {"database": {"url": f"sqlite:///{tmp_path}/s.db"}})
        status = await registry.plugins.get_status()
        assert status["plugins"]["backup"]["consumers"] != []


class TestValidation:
    async def test_validate_configuration_is_awaited_with_the_plugin_config(
        self, make_registry: RegistryFactory
    ) -> None:
        """An async validate_configuration runs to its end before the plugin loads."""
        registry = await make_registry(
            {"validated": plugin_table(f"{HERE}:Validated", config={"level": "high"})}
        )
        plugin = registry.get_plugin("validated")
        assert isinstance(plugin, Validated)
        assert plugin.validated == {"level": "high"}

    @pytest.mark.parametrize(
        ("config", "reason"),
        [
            pytest.param({}, "Backup directory is required", id="no-directory"),
            pytest.param(
                {"directory": "backups", "schedule": 7},
                "Schedule must be a valid cron expression",
                id="bad-schedule",
            ),
        ],
    )
    async def test_the_backup_example_refuses_a_bad_configuration(
        self, make_registry: RegistryFactory, config: dict[str, Any], reason: str
    ) -> None:
        """The seed's BackupPlugin validation, by configuration and by load_plugin."""
        registry = await make_registry(
            {"backup-plugin": plugin_table(BACKUP, config=config)}, initialize=False
        )
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        expected = f"Plugin 'backup-plugin' configuration is invalid: {reason}"
        assert (failed.error, failed.phase) == (expected, "validate")
        with pytest.raises(PluginLoadError, match=reason) as caught:
            await registry.load_plugin(BackupPlugin, config)
        assert caught.value.phase == "validate"
        assert not registry.plugins.has("backup-plugin")


class TestRegistryPluginMethods:
    async def test_load_get_and_unload_a_plugin_by_hand(
        self, make_registry: RegistryFactory, tmp_path: Path
    ) -> None:
        """load_plugin returns the running plugin; get_plugin/get_all_plugins find it; it
        handles hooks; unload_plugin shuts it down and forgets it."""
        registry = await make_registry({})
        events: list[tuple[str, dict[str, Any]]] = []
        registry.on("plugin-loaded", lambda event: events.append(("loaded", event)))
        registry.on("plugin-unloaded", lambda event: events.append(("unloaded", event)))
        backups = tmp_path / "backups"
        plugin = await registry.load_plugin(
            BackupPlugin, {"directory": str(backups)}, required=True
        )
        await registry.refresh_plugins()
        assert (plugin.name, plugin.version) == ("backup-plugin", "1.0.0")
        assert registry.get_plugin("backup-plugin") is plugin
        assert registry.get_all_plugins() == [plugin]
        assert registry.plugins.get("backup-plugin") is plugin

        await registry.register_app("shop", {"database": {"url": f"sqlite:///{tmp_path}/s.db"}})
        names = [Path(marker).name for marker in plugin.markers]
        assert names == sorted(names)
        assert [name.split("-", 1)[1] for name in names] == [
            "app_registration_started.json",
            "app_registered.json",
        ]
        with pytest.raises(PluginFailed, match="Plugin 'backup-plugin' is already loaded"):
            await registry.load_plugin(BackupPlugin, {"directory": str(backups)})

        assert await registry.unload_plugin("backup-plugin") is True
        assert (backups / "shutdown.json").exists()
        assert registry.get_plugin("backup-plugin") is None
        assert registry.get_all_plugins() == []
        assert await registry.unload_plugin("backup-plugin") is False
        assert events == [
            (
                "loaded",
                {
                    "name": "backup-plugin",
                    "plugin": "backup-plugin",
                    "mode": "inline",
                    "version": "1.0.0",
                },
            ),
            ("unloaded", {"name": "backup-plugin", "plugin": "backup-plugin", "mode": "inline"}),
        ]

    async def test_get_all_plugins_lists_the_plugins_themselves(
        self, make_registry: RegistryFactory, tmp_path: Path
    ) -> None:
        """get_all_plugins returns the plugin objects, so the seed's example (iterate,
        read ``name`` and ``version``) works as written, for configured and hand-loaded
        plugins alike."""
        registry = await make_registry({"alpha": sleeper("alpha"), "beta": sleeper("beta")})
        backup = await registry.load_plugin(BackupPlugin, {"directory": str(tmp_path)})
        plugins = registry.get_all_plugins()
        lines = sorted(f"{plugin.name} v{plugin.version}" for plugin in plugins)
        assert lines == ["alpha v1.0.0", "backup-plugin v1.0.0", "beta v1.0.0"]
        assert {id(plugin) for plugin in plugins} == {
            id(BUILT["alpha"]),
            id(BUILT["beta"]),
            id(backup),
        }


class TestManagerQueries:
    async def test_get_get_all_has_and_status(self, make_registry: RegistryFactory) -> None:
        """get/get_all/has answer per plugin; get_status counts and describes each plugin,
        a loaded one with its consumer on the bus, a failed one with its reason."""
        registry = await make_registry(
            {
                "alpha": sleeper("alpha"),
                "beta": sleeper("beta"),
                "broken": {"config": {}},
                "off": sleeper("off", enabled=False),
            }
        )
        manager = registry.plugins
        assert manager.get("alpha") is BUILT["alpha"]
        assert manager.get("off") is None
        assert manager.get_all() == {"alpha": BUILT["alpha"], "beta": BUILT["beta"]}
        assert (manager.has("alpha"), manager.has("broken"), manager.has("off")) == (
            True,
            False,
            False,
        )
        status = await manager.get_status()
        assert (status["total"], status["enabled"], status["loaded"], status["failed"]) == (
            4,
            3,
            2,
            1,
        )
        alpha = status["plugins"]["alpha"]
        assert (alpha["status"], alpha["mode"], alpha["version"]) == ("loaded", "inline", "1.0.0")
        assert alpha["plugin"] == {"name": "alpha", "version": "1.0.0"}
        (consumer,) = alpha["consumers"]
        assert (consumer["name"], consumer["alive"]) == (f"{registry.id}-alpha", True)
        assert status["plugins"]["broken"] == {
            "status": "failed",
            "error": "Plugin 'broken' missing required 'module' property",
            "phase": "config",
            "required": False,
        }
        assert "off" not in status["plugins"]

    async def test_the_seeds_status_counts(self, make_registry: RegistryFactory) -> None:
        """The seed's ``status.counts.enabled`` / ``status.counts.total`` read as written."""
        registry = await make_registry(
            {"alpha": sleeper("alpha"), "off": sleeper("off", enabled=False)}
        )
        status = await registry.plugins.get_status()
        line = f"{status['counts']['enabled']}/{status['counts']['total']} plugins enabled"
        assert line == "1/2 plugins enabled"


class TestListeners:
    async def test_the_seeds_debugging_listeners(
        self, make_registry: RegistryFactory, tmp_path: Path
    ) -> None:
        """The seed's "Debugging" snippet, translated: plugin-loaded names the plugin as
        ``event.name``; an ``error`` of component PluginManager has phase and error."""
        lines: list[str] = []
        registry = await make_registry(
            {
                "my-plugin": plugin_table(
                    BACKUP, config={"directory": str(tmp_path), "debug": True}
                ),
                "broken": plugin_table("tests.core.no_such_module:Plugin"),
            },
            initialize=False,
            batch_size=1,
        )

        def on_loaded(event: dict[str, Any]) -> None:
            lines.append(f"Plugin loaded: {event['name']}")

        def on_error(event: dict[str, Any]) -> None:
            if event["component"] == "PluginManager":
                lines.append(f"Plugin error: {event['phase']} {event['error']}")

        registry.on("plugin-loaded", on_loaded)
        registry.on("error", on_error)
        await registry.initialize()
        assert lines == [
            # The configuration's key names the plugin (its consumer group, its policy).
            "Plugin loaded: my-plugin",
            "Plugin error: import Failed to import plugin module 'tests.core.no_such_module': "
            "No module named 'tests.core.no_such_module'",
        ]


class TestEntryPoints:
    async def test_a_plugin_is_found_by_its_entry_point_name(
        self, make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """``module = "<name>"`` loads the class an entry point of ``rapid_objection.plugins``
        of that name points at."""
        found = [EntryPoint("example-backup", BACKUP, ENTRY_POINT_GROUP)]

        def entry_points(*, group: str) -> list[EntryPoint]:
            return found if group == ENTRY_POINT_GROUP else []

        monkeypatch.setattr("rapid_objection.plugin_workers._loader.entry_points", entry_points)
        registry = await make_registry(
            {"backup-plugin": plugin_table("example-backup", config={"directory": str(tmp_path)})}
        )
        assert isinstance(registry.get_plugin("backup-plugin"), BackupPlugin)


class TestExternalMode:
    async def test_no_worker_within_the_load_timeout_fails_the_plugin(
        self, make_registry: RegistryFactory
    ) -> None:
        """An external plugin whose worker never announces itself fails after load_timeout
        (not twice that), with a reason saying so."""
        registry = await make_registry(
            {"remote": plugin_table(MONITORING, mode="external")},
            initialize=False,
            load_timeout=0.5,
        )
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        assert failed.phase == "manifest"
        assert failed.error.startswith(
            "Plugin 'remote' has no worker: none announced itself within 0.5s"
        )
        assert 0.5 <= result.duration < 0.9
        assert not registry.plugins.has("remote")

    async def test_the_reason_names_the_command_that_starts_the_worker(
        self, make_registry: RegistryFactory
    ) -> None:
        """The hint in the reason is a command that would work: ``rapid-objection worker``
        takes the plugin's module (or entry-point name), not its configuration key; and
        it says under which name the worker must announce itself."""
        registry = await make_registry(
            {"remote": plugin_table(MONITORING, mode="external")},
            initialize=False,
            load_timeout=0.1,
        )
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        assert f"rapid-objection worker {MONITORING}" in failed.error
        assert "the plugin's own name, which must be 'remote'" in failed.error

    async def test_a_worker_that_appears_while_loading_is_waited_for(
        self, make_registry: RegistryFactory
    ) -> None:
        """A worker announcing itself within load_timeout makes the plugin loaded."""
        bus_name = f"pm-{secrets.token_hex(4)}"
        registry = await make_registry(
            {"sleeper": sleeper("sleeper", mode="external")},
            initialize=False,
            bus=bus_name,
            load_timeout=5,
        )
        done = anyio.Event()

        async def late_worker(bus: Bus) -> None:
            await anyio.sleep(0.3)
            async with running_worker(Sleeper({"name": "sleeper"}), bus):
                await done.wait()

        async with (
            Bus.connect(f"memory://{bus_name}", "default") as bus,
            anyio.create_task_group() as group,
        ):
            group.start_soon(late_worker, bus)
            result = await registry.initialize()
            status = await registry.plugins.get_status()
            # The registry's own task group was entered inside this one: leave it first.
            await registry.shutdown()
            done.set()
        assert result.loaded_plugins == ["sleeper"]
        assert 0.3 <= result.duration < 2.0
        assert status["plugins"]["sleeper"]["mode"] == "external"


class TestProcessMode:
    async def test_process_mode_is_refused_on_the_embedded_bus(
        self, make_registry: RegistryFactory
    ) -> None:
        """Worker processes cannot join memory://: the plugin fails at once with that
        reason, and nothing is started."""
        registry = await make_registry(
            {"monitoring-plugin": plugin_table(MONITORING, mode="process")}, initialize=False
        )
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        assert (failed.error, failed.phase) == (
            "Plugin 'monitoring-plugin' runs in mode 'process', which needs a Redis bus; "
            "memory:// lives inside this process (use mode 'inline')",
            "config",
        )
        assert result.duration < 1.0
        assert registry.plugins.loaded("monitoring-plugin") is None

    @pytest.mark.slow
    @pytest.mark.redis_server
    async def test_a_killed_worker_is_restarted_and_shutdown_stops_every_worker(
        self, redis_url: str, namespace: str
    ) -> None:
        """SIGKILL one of two supervised workers: a new process takes its slot within a
        few seconds; the registry's shutdown then leaves no worker process behind."""
        config = {
            "registry": {"id": f"registry-{namespace}"},
            "bus": {"url": redis_url, "namespace": namespace},
            "plugin_manager": {"load_timeout": 10, "shutdown_timeout": 5},
            "plugins": {"monitoring-plugin": plugin_table(MONITORING, mode="process", workers=2)},
        }
        registry = AppRegistry(config)
        seen: set[int] = set()
        try:
            result = await registry.initialize()
            assert result.loaded_plugins == ["monitoring-plugin"]
            loaded = registry.plugins.loaded("monitoring-plugin")
            assert loaded is not None
            supervisor = loaded.supervisor
            assert supervisor is not None
            bus = registry.bus
            with anyio.fail_after(10):
                while len(await bus.directory.workers("monitoring-plugin")) < 2:
                    await anyio.sleep(0.05)
            before = set(supervisor.pids)
            assert len(before) == 2
            seen |= before
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            with anyio.fail_after(5):
                while True:
                    announced = {w.pid for w in await bus.directory.workers("monitoring-plugin")}
                    fresh = set(supervisor.pids) - before
                    if fresh and fresh <= announced:
                        break
                    await anyio.sleep(0.05)
            seen |= set(supervisor.pids)
            assert set(supervisor.pids) == (before - {victim}) | fresh
            assert supervisor.restarts == 1
            shutdown = await registry.shutdown()
            assert shutdown.plugins_shut_down == ["monitoring-plugin"]
            assert supervisor.pids == []
            for pid in seen:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
            assert workers_with_consumer_prefix(registry.id) == []
        finally:
            with anyio.CancelScope(shield=True):
                if registry.initialized:
                    await registry.shutdown()
                async with Bus.connect(redis_url, namespace) as bus:
                    await purge(bus)


def workers_with_consumer_prefix(prefix: str) -> list[int]:
    """Pids of live processes whose command line has ``--consumer <prefix>...``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            for flag, value in itertools.pairwise(arguments):
                if flag == b"--consumer" and value.startswith(prefix.encode()):
                    found.append(int(entry.name))
    return found
