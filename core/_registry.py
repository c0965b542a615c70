"""``AppRegistry``: apps, shared connections and plugins, every step on the bus."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from rapid_objection.bus import Bus, Publisher, Retention, mask_url
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._publisher import default_registry_id

from ._config import (
    AppConfig,
    PluginConfig,
    RegistryConfig,
    load_app_config,
    load_registry_config,
)
from ._connections import ConnectionManager, Engines
from ._errors import AppAlreadyRegistered, AppNotRegistered, ConfigError, RegistryError
from ._inflight import InFlight
from ._lifecycle import AppContext, AppRecord, close_connection, register, unregister
from ._listeners import Listener, Listeners
from ._monitor import HealthMonitor, check_app
from ._plugins import PluginHost, PluginManager
from ._results import FailedPluginInfo, InitializeResult, ShutdownResult, UnregisterResult
from ._steps import Steps, policies

log = logging.getLogger("rapid_objection.registry")

APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class AppRegistry:
    """A registry of database apps whose lifecycle steps are published on the bus.

    ``async with AppRegistry(config) as registry:`` initializes (bus, plugins) and shuts
    down (connections, plugins, bus). ``config`` is a dict, a TOML file path or a
    ``RegistryConfig``.
    """

    def __init__(
        self, config: RegistryConfig | Mapping[str, Any] | str | Path | None = None
    ) -> None:
        self.config = load_registry_config(config)
        self.id = self.config.registry.id or default_registry_id()
        self.engines = Engines()
        self._listeners = Listeners()
        self.plugins = PluginManager(self.config, self.id, self._listeners, self.engines.engine)
        self.initialized = False
        self._bus: Bus | None = None
        self._steps: Steps | None = None
        self._context: AppContext | None = None
        self._apps: dict[str, AppRecord] = {}
        self._registering: set[str] = set()
        self._in_flight = InFlight()
        self._unregistering: set[str] = set()
        self._stack: AsyncExitStack | None = None
        self._group: TaskGroup | None = None
        self._monitor: HealthMonitor | None = None

    # -- lifecycle of the registry ----------------------------------------------------------

    async def initialize(self) -> InitializeResult:
        """Open the bus, start the publisher and load the configured plugins."""
        if self.initialized:
            raise RegistryError(f"registry {self.id!r} is already initialized")
        started = time.monotonic()
        settings = self.config.bus
        async with AsyncExitStack() as stack:
            bus = await stack.enter_async_context(Bus.connect(settings.url, settings.namespace))
            for other in await bus.directory.registries():
                if other.id == self.id and is_alive(other.seen):
                    # Two registries under one id would share an ack stream and apps.
                    raise RegistryError(
                        f"a live registry with id {self.id!r} is already on {bus.url} "
                        f"(namespace {settings.namespace!r}, pid {other.pid} on {other.host})"
                    )
            retention = None
            if settings.retention_max_age is not None or settings.retention_max_len is not None:
                retention = Retention(settings.retention_max_age, settings.retention_max_len)
            publisher = await stack.enter_async_context(
                Publisher(
                    bus,
                    self.id,
                    ephemeral=self.config.registry.id is None,
                    policies=policies(self.config.plugins),
                    ack_timeout=settings.ack_timeout,
                    retention=retention,
                )
            )
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            self._stack = stack.pop_all()
        steps = Steps(publisher, self._listeners, self.plugins.config_of)
        self._bus, self._steps, self._group = bus, steps, group
        self._context = AppContext(self.id, self.engines, bus.directory, steps, self._listeners)
        self.plugins.attach(PluginHost(bus, steps, group))
        self.initialized = True
        loaded, failed = await self.plugins.load_configured()
        await steps.refresh()
        if self.config.registry.enable_health_monitoring:
            self._monitor = HealthMonitor(
                steps, lambda: dict(self._apps), self.config.registry.health_check_interval
            )
            await group.start(self._monitor.run)
        return InitializeResult(
            plugin_count=len(loaded),
            loaded_plugins=loaded,
            failed_plugins=[FailedPluginInfo(f.name, f.error, f.phase) for f in failed],
            duration=time.monotonic() - started,
        )

    async def shutdown(self, timeout: float | None = None) -> ShutdownResult:
        """Close every connection (connection_shutdown, registry_shutdown), stop the
        plugins (inline: shutdown(); processes: a graceful stop), close the bus."""
        started = time.monotonic()
        limit = timeout if timeout is not None else self.config.registry.shutdown_timeout
        errors: list[str] = []
        apps = list(self._apps)
        plugins: list[str] = []
        with anyio.move_on_after(limit, shield=True) as scope:
            if self._monitor is not None:
                self._monitor.stop()
            # Registrations in flight roll back before their engines are closed.
            await self._in_flight.cancel_all()
            apps = list(self._apps)
            for name in apps:
                try:
                    await self._close_app(name)
                except Exception as exc:
                    errors.append(f"app {name!r}: {mask_url(str(exc))}")
        if scope.cancelled_caught:
            errors.append(f"closing the apps did not finish within {limit:g}s")
        # Whatever the apps' events did, no engine outlives the registry.
        await anyio.to_thread.run_sync(self.engines.close_all)
        self._apps.clear()
        # The plugins get their own budget: workers must stop even after a slow close.
        with anyio.CancelScope(shield=True):
            plugins = await self.plugins.shutdown(self.config.plugin_manager.shutdown_timeout)
        stack, self._stack = self._stack, None
        if stack is not None:
            # Not inside a new cancel scope: the task group in the stack was entered
            # outside it and must be exited from the scope it was entered in.
            await stack.aclose()
        self.initialized = False
        self._in_flight.reopen()
        self.plugins.attach(None)
        self._bus = self._steps = self._context = self._group = None
        self._monitor = None
        return ShutdownResult(
            success=not errors,
            duration=time.monotonic() - started,
            apps_shut_down=apps,
            plugins_shut_down=plugins,
            errors=errors,
        )

    async def __aenter__(self) -> AppRegistry:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- apps -------------------------------------------------------------------------------

    async def register_app(
        self, name: str, config: AppConfig | Mapping[str, Any] | str | Path | None = None
    ) -> ConnectionManager:
        """Connect, migrate, seed and load models for ``name``; each step published and awaited.

        Raises ``AppAlreadyRegistered`` for a taken name (also when another registration
        of it is in progress), and otherwise the step's own error, after publishing
        operation_failed and closing what was opened.
        """
        context = self._require_context()
        if not isinstance(name, str) or not APP_NAME.match(name):
            raise ConfigError(
                "an app name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit; got {name!r}",
                path="apps",
            )
        if name in self._apps or name in self._registering:
            raise AppAlreadyRegistered(name)
        self._registering.add(name)
        try:
            app_config = load_app_config(name, config)
            with self._in_flight.track(name) as scope:
                record = await register(context, name, app_config)
            if scope.cancelled_caught:
                raise RegistryError(
                    f"the registration of app {name!r} was rolled back: the registry is "
                    "shutting down"
                )
            self._apps[name] = record
        finally:
            self._registering.discard(name)
        context.steps.track_app(name, registered=True)
        await self._listeners.emit("app-registered", {"app": name, "reused": record.reused})
        return record.manager

    async def unregister_app(
        self, name: str, rollback: bool = True, force: bool = False, timeout: float | None = None
    ) -> UnregisterResult:
        """Roll back (seeds, then migrations, then models) and close the connection unless
        other apps still share it; each step published and awaited."""
        record = self._apps.get(name)
        if record is None or name in self._unregistering:
            # A second unregistration at once would roll back a second batch.
            raise AppNotRegistered(name)
        context = self._require_context()
        self._unregistering.add(name)
        try:
            with anyio.fail_after(timeout if timeout is not None else float("inf")):
                result = await unregister(context, name, record, rollback=rollback, force=force)
        finally:
            self._unregistering.discard(name)
            if record.released:
                # Its connection is gone whatever happened after: it is not registered.
                self._apps.pop(name, None)
                context.steps.track_app(name, registered=False)
        if result.success or force:
            self._apps.pop(name, None)
            context.steps.track_app(name, registered=False)
            await self._listeners.emit("app-unregistered", result.as_dict())
        return result

    async def _close_app(self, name: str) -> None:
        """Registry shutdown: close an app's connection without rolling anything back."""
        record = self._apps.pop(name)
        context = self._require_context()
        await close_connection(context, name, record, registry_shutdown=True)
        context.steps.track_app(name, registered=False)

    def get_app(self, name: str) -> ConnectionManager:
        record = self._apps.get(name)
        if record is None:
            raise AppNotRegistered(name)
        return record.manager

    def has_app(self, name: str) -> bool:
        return name in self._apps

    def get_all_apps(self) -> dict[str, ConnectionManager]:
        return {name: record.manager for name, record in self._apps.items()}

    async def check_health(self, name: str) -> dict[str, Any]:
        """Run one health check of ``name`` now (as the monitor does each interval)."""
        record = self._apps.get(name)
        if record is None:
            raise AppNotRegistered(name)
        return await check_app(self._require_context().steps, name, record)

    async def get_status(self) -> dict[str, Any]:
        return {
            "registry": self.id,
            "initialized": self.initialized,
            "bus": {
                "url": mask_url(self.config.bus.url),
                "namespace": self.config.bus.namespace,
            },
            "apps": {name: record.status() for name, record in self._apps.items()},
            "app_count": len(self._apps),
            "connections": self.engines.count(),
            "plugins": await self.plugins.get_status(),
            "health_monitoring": self._monitor is not None,
        }

    # -- plugins ----------------------------------------------------------------------------

    async def load_plugin(
        self,
        plugin_class: type[Any],
        config: Mapping[str, Any] | None = None,
        **policy: Any,
    ) -> Any:
        """Build ``plugin_class(config)`` and run it inline; returns the plugin object.

        ``policy`` takes the keys of a ``[plugins.x]`` table (required, on_failure,
        timeout, max_deliveries).
        """
        from rapid_objection.plugin_workers import build_plugin

        from ._config import convert

        plugin_config = convert({"config": dict(config or {}), **policy}, PluginConfig)
        instance = build_plugin(plugin_class, dict(plugin_config.config))
        loaded = await self.plugins.load_instance(instance, plugin_config)
        return loaded.instance

    async def unload_plugin(self, name: str) -> bool:
        return await self.plugins.unload(name)

    def get_plugin(self, name: str) -> Any:
        """The plugin object of an inline plugin, else its loaded record; or None."""
        return self.plugins.get(name)

    def get_all_plugins(self) -> list[Any]:
        """Every loaded plugin, in load order (each with ``name`` and ``version``)."""
        return list(self.plugins.get_all().values())

    async def refresh_plugins(self) -> None:
        """Re-read which plugins are on the bus now (done every few seconds anyway), so
        that a worker started a moment ago is awaited by the next step."""
        await self._require_context().steps.refresh()

    @property
    def bus(self) -> Bus:
        """The bus this registry publishes on (while it is initialized)."""
        if self._bus is None:
            raise RegistryError(f"registry {self.id!r} is not initialized: await initialize()")
        return self._bus

    # -- listeners --------------------------------------------------------------------------

    def on(self, name: str, listener: Listener) -> None:
        """Call ``listener(payload)`` (sync or async) on this registry's event ``name``:
        app-registered, app-unregistered, connection-created, connection-reused,
        plugin-loaded, plugin-unloaded, step-started, step, warning, error."""
        self._listeners.on(name, listener)

    def off(self, name: str, listener: Listener) -> None:
        self._listeners.off(name, listener)

    def _require_context(self) -> AppContext:
        if self._context is None:
            raise RegistryError(f"registry {self.id!r} is not initialized: await initialize()")
        return self._context
