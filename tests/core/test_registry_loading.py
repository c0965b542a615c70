"""Loading and unloading plugins on a running registry: no race, no orphan, no stale record."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import WorkerInfo
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import AppRegistry, RegistryError
from rapid_objection.core._config import PluginConfig, convert
from rapid_objection.core._loaded import PluginFailed
from rapid_objection.plugin_workers import PluginInterface

pytestmark = pytest.mark.anyio


class Late(PluginInterface):
    """Takes ``config["sleep"]`` seconds to initialize; records the registrations it saw."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(str((config or {}).get("name", "late")), "1.0.0")
        self.seen: list[str] = []

    async def initialize(self, registry: Any, config: dict[str, Any]) -> None:
        await anyio.sleep(float(config.get("sleep", 0.0)))

    async def on_app_registration_started(self, app_name: str, config: Any) -> None:
        self.seen.append(app_name)


class BlockingStart:
    """A plugin whose plain ``def initialize`` blocks for two seconds."""

    name = "blocking-start"
    version = "1.0.0"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or {}

    def initialize(self, registry: Any, config: dict[str, Any]) -> None:
        time.sleep(2)

    def shutdown(self) -> None:
        """Nothing to release."""

    def get_status(self) -> dict[str, Any]:
        return {}


class SlowLeaver(PluginInterface):
    """Answers app_registration_started; takes 2 seconds to shut down."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("slow-leaver", "1.0.0")

    async def on_app_registration_started(self, app_name: str, config: Any) -> None:
        """Nothing to do: being awaited is the point."""

    async def shutdown(self) -> None:
        await anyio.sleep(2)


class Reentrant(PluginInterface):
    """Calls back into the registry that runs it, from inside a hook."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("reentrant", "1.0.0")
        self.app_registry: AppRegistry | None = None
        self.refused: list[str] = []

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        assert self.app_registry is not None
        try:
            await self.app_registry.register_app(f"{app_name}-copy", {"database": config})
        except RegistryError as exc:
            self.refused.append(str(exc))


@pytest.fixture
async def registry() -> AsyncIterator[AppRegistry]:
    name = f"loading-{secrets.token_hex(4)}"
    registry = AppRegistry(
        {
            "bus": {"url": f"memory://{name}", "ack_timeout": 5},
            "plugin_manager": {"load_timeout": 3},
        }
    )
    await registry.initialize()
    yield registry
    with anyio.CancelScope(shield=True):
        await registry.shutdown()
    forget_memory_server(name)


def app(tmp_path: Path, name: str = "shop") -> dict[str, Any]:
    return {"database": {"url": f"sqlite:///{tmp_path / (name + '.db')}"}}


class TestLoading:
    async def test_an_event_published_while_a_required_plugin_loads_reaches_it(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """The plugin's consumer group exists before it is awaited: a registration that
        starts while the plugin initializes is delivered to it once it runs, instead of
        being vetoed for want of a consumer."""
        loaded: list[Late] = []

        async def load() -> None:
            loaded.append(
                await registry.load_plugin(
                    Late, {"sleep": 0.5}, required=True, on_failure="abort", timeout=3
                )
            )

        async with anyio.create_task_group() as group:
            group.start_soon(load)
            await anyio.sleep(0.1)
            await registry.register_app("shop", app(tmp_path))
        assert loaded[0].seen == ["shop"]

    async def test_a_dead_workers_record_does_not_count_as_loaded(
        self, registry: AppRegistry
    ) -> None:
        """An external plugin whose only worker record was last seen an hour ago is not
        loaded: loading waits for a live worker and fails after the load timeout."""
        now = time.time()
        await registry.bus.directory.beat_worker(
            WorkerInfo(
                plugin="remote",
                consumer="gone-1",
                host="elsewhere",
                pid=4242,
                started=now - 7200,
                seen=now - 3600,
            )
        )
        plugins = registry.plugins
        started = time.monotonic()
        with pytest.raises(PluginFailed, match="has no worker"):
            with anyio.fail_after(5):
                await plugins.load("remote", _external("example:Remote"))
        assert time.monotonic() - started >= 2.5  # it waited (load_timeout 3)

    async def test_two_loads_of_one_name_at_once_load_it_once(self, registry: AppRegistry) -> None:
        """Of two concurrent load_plugin calls with one name, one is refused; after
        unload_plugin no instance of it is left running."""
        outcomes: list[Any] = []

        async def load() -> None:
            try:
                outcomes.append(await registry.load_plugin(Late, {"sleep": 0.3}))
            except PluginFailed as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(load)
            group.start_soon(load)
        refused = [o for o in outcomes if isinstance(o, PluginFailed)]
        running = [o for o in outcomes if isinstance(o, Late)]
        assert len(refused) == 1
        assert "already loaded" in str(refused[0])
        assert len(running) == 1
        assert await registry.unload_plugin("late") is True
        workers = await registry.bus.directory.workers("late")
        assert workers == []

    async def test_an_unloading_plugin_is_not_awaited_while_it_drains(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """unload_plugin drops the plugin's required policy first: a registration during
        its slow shutdown does not wait for it."""
        await registry.load_plugin(SlowLeaver, required=True, timeout=3)
        await registry.refresh_plugins()
        awaited: list[tuple[str, ...]] = []
        registry.on("step", lambda event: awaited.append(event["result"].required))
        async with anyio.create_task_group() as group:
            group.start_soon(registry.unload_plugin, "slow-leaver")
            await anyio.sleep(0.2)
            started = time.monotonic()
            await registry.register_app("shop", app(tmp_path))
            took = time.monotonic() - started
        assert took < 1.5
        assert all("slow-leaver" not in required for required in awaited)


class Validated(PluginInterface):
    """Counts the calls of its validate_configuration."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("validated", "1.0.0")
        self.validations = 0

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        self.validations += 1
        return True


class TestValidatedOnce:
    async def test_an_inline_plugin_is_validated_once(self, registry: AppRegistry) -> None:
        """As docs/writing-plugins.md says: the worker calls validate_configuration once,
        before initialize; the registry does not call it a second time."""
        plugin: Validated = await registry.load_plugin(Validated, {"level": "low"})
        assert plugin.validations == 1


class TestPlainDefLifecycle:
    async def test_a_blocking_plain_def_initialize_cannot_outlast_the_load_timeout(
        self,
    ) -> None:
        """A plain ``def initialize`` runs in a thread: with a 0.5 s load timeout, a
        2 s blocking initialize fails the load after about 0.5 s, and the event loop
        keeps running meanwhile."""
        name = f"loading-{secrets.token_hex(4)}"
        registry = AppRegistry(
            {"bus": {"url": f"memory://{name}"}, "plugin_manager": {"load_timeout": 0.5}}
        )
        ticks: list[float] = []

        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await anyio.sleep(0.05)

        try:
            await registry.initialize()
            async with anyio.create_task_group() as group:
                group.start_soon(tick)
                started = time.monotonic()
                with pytest.raises(PluginFailed, match=r"Timeout \(500ms\)"):
                    await registry.load_plugin(BlockingStart)
                took = time.monotonic() - started
                group.cancel_scope.cancel()
            assert took < 1.5
            gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
            assert max(gaps) < 0.5
        finally:
            with anyio.CancelScope(shield=True):
                await registry.shutdown()
            forget_memory_server(name)


class TestReentry:
    async def test_a_hook_calling_back_into_its_registry_is_refused(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """register_app from inside an inline hook of the same registry raises at once
        (it would wait for the hook that calls it), and the outer registration goes on."""
        plugin: Reentrant = await registry.load_plugin(Reentrant, required=True, timeout=5)
        plugin.app_registry = registry
        await registry.refresh_plugins()
        started = time.monotonic()
        await registry.register_app("shop", app(tmp_path))
        assert time.monotonic() - started < 2.0
        (refusal,) = plugin.refused
        assert "called from inside a app_registered hook" in refusal
        assert registry.has_app("shop")
        assert not registry.has_app("shop-copy")


def _external(module: str) -> PluginConfig:
    """The ``[plugins.x]`` table of a plugin whose workers run elsewhere."""
    return convert({"module": module, "mode": "external"}, PluginConfig)
