"""Required plugins fail closed: a plugin the configuration marks required stays awaited
whatever happens to its workers, and each of its hooks without a live consumer is decided
at once as ``no_consumer`` (on the embedded bus, a real Redis and a cluster)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Bus, collect_status
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry, PluginVeto
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

HOOK_TIMEOUT = 5.0
"""The plugin's ack deadline: every decision below comes long before it."""

AT_ONCE = 1.5
"""Seconds within which a registration without a live consumer of its gate is decided."""

REGISTRATION_HOOKS = [
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
]


class Gate(PluginInterface):
    """An access-control plugin that lets every registration through."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("gate", "1.0.0")

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        pass


GATE = f"{Gate.__module__}:Gate"

Factory = Callable[..., Awaitable[AppRegistry]]


@pytest.fixture
async def make_registry(bus_url: str, namespace: str) -> AsyncIterator[Factory]:
    """Registries on the test's bus whose ``gate`` plugin is required; all shut down,
    and the namespace purged, at the end."""
    made: list[AppRegistry] = []

    async def make(
        on_failure: str = "abort",
        mode: str = "external",
        *,
        module: str = GATE,
        initialize: bool = True,
    ) -> AppRegistry:
        registry = AppRegistry(
            {
                "bus": {"url": bus_url, "namespace": namespace},
                "plugin_manager": {"load_timeout": 0.3},
                "plugins": {
                    "gate": {
                        "module": module,
                        "mode": mode,
                        "required": True,
                        "on_failure": on_failure,
                        "timeout": HOOK_TIMEOUT,
                    }
                },
            }
        )
        made.append(registry)
        if initialize:
            await registry.initialize()
        return registry

    yield make
    with anyio.CancelScope(shield=True):
        for registry in made:
            await registry.shutdown()
        async with Bus.connect(bus_url, namespace) as bus:
            await purge(bus)


def app(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"database": {"url": f"sqlite:///{tmp_path / name}.db"}}


async def vetoed(registry: AppRegistry, tmp_path: Path, name: str = "tmp-evil") -> PluginVeto:
    """Register ``name`` and return the veto, checking it came at once and left no app."""
    started = time.monotonic()
    with pytest.raises(PluginVeto) as caught:
        await registry.register_app(name, app(tmp_path, name))
    assert time.monotonic() - started < AT_ONCE
    veto = caught.value
    assert (veto.plugin, veto.event, veto.consumer) == ("gate", "app_registration_started", None)
    assert "no live consumer" in str(veto)
    assert not registry.has_app(name)
    assert name not in await registry.bus.directory.apps()
    assert not (tmp_path / f"{name}.db").exists()  # it never got as far as connecting
    return veto


class TestNotLoaded:
    async def test_abort_vetoes_the_registration_at_once(
        self, make_registry: Factory, tmp_path: Path
    ) -> None:
        """No worker announced itself within load_timeout: initialize() reports the
        plugin failed, and register_app raises PluginVeto ("no live consumer") at once,
        registering nothing; the failure is recorded and ``status`` shows it."""
        registry = await make_registry()
        status = await registry.get_status()
        assert status["plugins"]["plugins"]["gate"]["status"] == "failed"
        assert status["plugins"]["plugins"]["gate"]["required"] is True
        await vetoed(registry, tmp_path)
        report = await collect_status(registry.bus)
        # The vetoed step, then the operation_failed that reports it (awaited too: the
        # plugin's hooks are unknown while no worker of it has announced them).
        failures = sorted(report.recent_failures, key=lambda f: f.time)
        assert [(f.type, f.plugin, f.consumer, f.kind, f.app) for f in failures] == [
            ("app_registration_started", "gate", None, "no_consumer", "tmp-evil"),
            ("operation_failed", "gate", None, "no_consumer", "tmp-evil"),
        ]
        assert "required plugin 'gate' has no live consumer" in report.problems()
        [gate] = [plugin for plugin in report.plugins if plugin.name == "gate"]
        assert gate.required_by == (registry.id,)

    async def test_initialize_reports_it_failed(self, make_registry: Factory) -> None:
        """The plugin is still reported in initialize()'s failed_plugins."""
        registry = await make_registry(initialize=False)
        result = await registry.initialize()
        assert [(f.name, f.phase) for f in result.failed_plugins] == [("gate", "manifest")]
        assert result.loaded_plugins == []

    async def test_continue_goes_on_and_records_each_hook(
        self, make_registry: Factory, tmp_path: Path
    ) -> None:
        """With on_failure "continue" the registration goes on at once, and each hook of
        it is recorded as no_consumer against the plugin."""
        registry = await make_registry("continue")
        started = time.monotonic()
        await registry.register_app("shop", app(tmp_path, "shop"))
        assert time.monotonic() - started < AT_ONCE
        assert registry.has_app("shop")
        failures = await registry.bus.failures.recent(20, plugin="gate")
        assert sorted(f.type for f in failures) == sorted(REGISTRATION_HOOKS)
        assert {f.app for f in failures} == {"shop"}
        assert {f.kind for f in failures} == {"no_consumer"}

    async def test_an_inline_plugin_that_does_not_import_stays_required(
        self, make_registry: Factory, tmp_path: Path
    ) -> None:
        """A required inline plugin whose module does not import can never run a worker:
        every registration is vetoed for it."""
        registry = await make_registry(mode="inline", module="tests.core.no_such_module:Gate")
        assert registry.plugins.failed["gate"].phase == "import"
        await vetoed(registry, tmp_path)

    async def test_a_worker_that_starts_later_is_awaited(
        self, make_registry: Factory, tmp_path: Path
    ) -> None:
        """The plugin failed to load, but a worker of it that starts afterwards serves it:
        the registration is awaited and acked."""
        registry = await make_registry()
        async with running_worker(Gate(), registry.bus, consumer="gate-late"):
            await registry.register_app("shop", app(tmp_path, "shop"))
        assert registry.has_app("shop")
        assert await registry.bus.failures.recent() == []


class TestWorkersGone:
    async def test_all_workers_stopped(
        self, make_registry: Factory, tmp_path: Path, bus_url: str, namespace: str
    ) -> None:
        """The plugin loaded while its worker ran; once that worker has stopped, the next
        registration is vetoed at once rather than after the plugin's deadline."""
        async with Bus.connect(bus_url, namespace) as bus:
            async with running_worker(Gate(), bus, consumer="gate-1"):
                registry = await make_registry()
                assert registry.plugins.has("gate")
                await registry.register_app("shop", app(tmp_path, "shop"))
            await vetoed(registry, tmp_path)
        assert registry.plugins.has("gate")  # loaded it was, and awaited it stays

    async def test_unloaded_stays_required(self, make_registry: Factory, tmp_path: Path) -> None:
        """unload_plugin of a plugin the configuration requires stops it, but does not
        open the gate: the next registration is vetoed."""
        registry = await make_registry(mode="inline")
        assert registry.plugins.has("gate")
        assert await registry.unload_plugin("gate") is True
        await vetoed(registry, tmp_path)
