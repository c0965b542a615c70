"""``AppRegistry``: apps, shared connections and plugins, every step on the bus."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from rapid_objection.bus import Bus, Publisher, Retention, mask_url
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._keyring import ENV_KEYRING, Keyring
from rapid_objection.bus._keys import unique_name
from rapid_objection.bus._requests import Requests

from ._config import (
    AppConfig,
    PluginConfig,
    RegistryConfig,
    check_app_name,
    load_app_config,
    load_registry_config,
)
from ._connections import ConnectionManager, Engines
from ._errors import AppAlreadyRegistered, AppNotOwned, AppNotRegistered, RegistryError
from ._gate import Gate
from ._host import Host, describe
from ._lifecycle import (
    AppContext,
    AppRecord,
    close_connection,
    ownership_lost,
    register,
    unregister,
)
from ._listeners import Listener, Listeners
from ._monitor import HealthMonitor, check_app
from ._ownership import Ownership
from ._plugins import PluginHost, PluginManager
from ._requested import answer, check_action, requested, status_of, track_schema
from ._results import (
    ChangeResult,
    FailedPluginInfo,
    InitializeResult,
    ShutdownResult,
    UnregisterResult,
)
from ._steps import Steps, policies

log = logging.getLogger("rapid_objection.registry")

CLOSE_GRACE = 3.0
"""Seconds past the shutdown deadline for the registry's task to close the publisher and
the bus (each bounded at 2 s) once everything was cancelled."""


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
        self.id = self.config.registry.id or unique_name()
        self.engines = Engines()
        self._listeners = Listeners()
        self.plugins = PluginManager(self.config, self.id, self._listeners, self.engines.engine)
        self.initialized = False
        self._bus: Bus | None = None
        self._context: AppContext | None = None
        self._host: Host[tuple[Bus, Steps]] | None = None
        self._gate = Gate(self.id)
        self._apps: dict[str, AppRecord] = {}
        self._lost: dict[str, tuple[AppRecord, AppNotOwned]] = {}
        """Apps whose ownership lease another registry took: no longer served."""
        self._registering: set[str] = set()
        self._unregistering: set[str] = set()
        self._monitor: HealthMonitor | None = None
        self._monitor_error: str | None = None
        self._shutting_down: anyio.Event | None = None
        self._last_shutdown: ShutdownResult | None = None

    # -- lifecycle of the registry ----------------------------------------------------------

    async def initialize(self) -> InitializeResult:
        """Open the bus, start the publisher and load the configured plugins.

        They run in a task of the registry's own, so that ``shutdown()`` works from any
        task. Whatever fails or is cancelled here shuts down what was started.
        """
        if self._host is not None:
            raise RegistryError(f"registry {self.id!r} is already initialized")
        started = time.monotonic()
        host: Host[tuple[Bus, Steps]] = Host(f"registry {self.id}", self._open)
        self._host = host
        try:
            (bus, steps), tasks = await host.start()
            self._bus = bus
            ownership = Ownership(
                bus.directory.owners,
                self.id,
                self.config.registry.ownership_ttl,
                self._ownership_lost,
            )
            self._context = AppContext(self.id, self.engines, ownership, steps, self._listeners)
            await tasks.start("app ownership", ownership.run, self._ownership_crashed)
            # Operators' migrate and seed requests (rapid-objection migrate APP up).
            serve = partial(Requests(bus).serve, self.id, partial(answer, self))
            await tasks.start("operator requests", serve, self._requests_crashed)
            self.plugins.attach(PluginHost(bus, steps, tasks))
            self.initialized = True
            self._gate.open()
            loaded, failed = await self.plugins.load_configured()
            await steps.refresh()
            if self.config.registry.enable_health_monitoring:
                monitor = HealthMonitor(
                    steps,
                    ownership.confirm,
                    lambda: dict(self._apps),
                    self.config.registry.health_check_interval,
                )
                self._monitor, self._monitor_error = monitor, None
                await tasks.start("health monitor", monitor.run, self._monitor_crashed)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close(self.config.registry.shutdown_timeout)
            raise
        return InitializeResult(
            plugin_count=len(loaded),
            loaded_plugins=loaded,
            failed_plugins=[FailedPluginInfo(f.name, f.error, f.phase) for f in failed],
            duration=time.monotonic() - started,
        )

    async def _open(self, stack: AsyncExitStack) -> tuple[Bus, Steps]:
        """In the registry's own task: the bus and the publisher."""
        settings = self.config.bus
        path = settings.keyring or os.environ.get(ENV_KEYRING) or None
        keyring = Keyring.load(path) if path else None
        bus = await stack.enter_async_context(
            Bus.connect(
                settings.connect_url,
                settings.namespace,
                dead_letters=settings.dead_letters,
                keyring=keyring,
            )
        )
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
        return bus, Steps(publisher, self._listeners, self.plugins.config_of)

    def _monitor_crashed(self, exc: BaseException) -> None:
        self._monitor_error = mask_url(describe(exc))

    def _requests_crashed(self, exc: BaseException) -> None:
        log.error("registry %s no longer answers requests: %s", self.id, describe(exc))

    def _ownership_crashed(self, exc: BaseException) -> None:
        log.error("leases of registry %s no longer renewed: %s", self.id, describe(exc))

    async def _ownership_lost(self, error: AppNotOwned) -> None:
        """Another registry holds an app of ours now: stop serving it and say so. (A
        registration under way fails on its own, by its next confirm or fence.)"""
        record = self._apps.pop(error.app, None)
        if record is None:
            return
        self._lost[error.app] = (record, error)
        context = self._require_context()
        context.steps.track_app(error.app, registered=False)
        await ownership_lost(context, error)

    async def _forget_lost(self, name: str) -> AppNotOwned:
        """Let go of a lost app here (its models, this registry's connection to it; no
        event, nothing in its database); the error to raise for it."""
        record, error = self._lost.pop(name)
        record.models = None
        record.manager.models = {}
        if not record.released:
            record.released = True
            await anyio.to_thread.run_sync(self.engines.release, name)
        return AppNotOwned(name, self.id, error.owner)

    async def shutdown(self, timeout: float | None = None) -> ShutdownResult:
        """Refuse new operations and cancel those in flight (each rolls back), close
        every connection (connection_shutdown, registry_shutdown), stop the plugins
        (inline: shutdown(); processes: a graceful stop), close the bus.

        ``timeout`` (default ``shutdown_timeout``) bounds all of it. Callable from any
        task; a second call while one runs waits for it and returns its result.
        """
        if self._shutting_down is not None:
            with anyio.CancelScope(shield=True):
                await self._shutting_down.wait()
            assert self._last_shutdown is not None
            return self._last_shutdown
        if self._host is None:
            return ShutdownResult(True, 0.0, [], [], [])
        limit = timeout if timeout is not None else self.config.registry.shutdown_timeout
        self._shutting_down = done = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                result = self._last_shutdown = await self._close(limit)
        finally:
            self._shutting_down = None
            done.set()
        return result

    async def _close(self, limit: float) -> ShutdownResult:
        """Everything ``shutdown()`` does, under one deadline of ``limit`` seconds."""
        started = time.monotonic()
        deadline = anyio.current_time() + limit
        errors: list[str] = []
        apps: list[str] = []
        plugins = self.plugins.names()
        with anyio.move_on_after(limit) as scope:
            if self._monitor is not None:
                await self._monitor.close()
            # Operations in flight are cancelled and roll back before any engine closes.
            await self._gate.close()
            apps = list(self._apps)
            for name in apps:
                try:
                    await self._close_app(name)
                except Exception as exc:
                    errors.append(f"app {name!r}: {mask_url(str(exc))}")
            errors.extend(await self.plugins.shutdown(deadline - anyio.current_time()))
        if scope.cancelled_caught:
            errors.append(f"shutdown did not finish within {limit:g}s")
        with anyio.CancelScope(shield=True):
            # Whatever the apps' events did, no engine outlives the registry.
            await anyio.to_thread.run_sync(self.engines.close_all)
            self._apps.clear()
            self._lost.clear()
            host, self._host = self._host, None
            if scope.cancelled_caught:
                self.plugins.hurry()
            finished = True
            if host is not None:
                # Cancels what still runs (workers, supervisors: their processes are
                # killed), then closes the publisher and the bus, in the task that
                # opened them. Bounded: a plain def hook stuck in its thread holds its
                # worker until the thread returns, and no one can stop a thread.
                left = max(deadline - anyio.current_time(), 0.0) + CLOSE_GRACE
                finished = await host.stop(left)
            if not finished:
                errors.append(
                    "a plugin's hook is still running in its thread: its worker and the "
                    "bus close when it returns"
                )
            self.plugins.attach(None)
            self.plugins.forget_all()
        self.initialized = False
        self._bus = self._context = self._monitor = None
        return ShutdownResult(
            success=not errors,
            duration=time.monotonic() - started,
            apps_shut_down=apps,
            plugins_shut_down=plugins,
            errors=errors,
            finished=finished,
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
        check_app_name(name)
        async with self._gate.admit(f"register_app({name!r})"):
            context = self._require_context()
            if name in self._apps or name in self._registering:
                raise AppAlreadyRegistered(name)
            if name in self._lost:
                await self._forget_lost(name)  # lost to another registry: a new start
            self._registering.add(name)
            try:
                app_config = load_app_config(name, config)
                record = await register(context, name, app_config)
                self._apps[name] = record
            finally:
                self._registering.discard(name)
            context.steps.track_app(name, registered=True)
            record.manager.attach(
                partial(self.change, name),
                partial(status_of, name, record.migrations, record.seeds),
            )
            await track_schema(context.steps, name, record)
            await self._listeners.emit("app-registered", {"app": name, "reused": record.reused})
        return record.manager

    async def change(
        self, name: str, action: str, steps: int = 1, *, requested_by: str = ""
    ) -> ChangeResult:
        """Migrate, roll back, seed or unseed registered app ``name`` (``action``: migrate,
        rollback_migrations, seed, rollback_seeds; ``steps`` batches for a rollback), under
        its app lock and fence, published as requested auto-operations. What
        ``app.migrate()`` and ``rapid-objection migrate`` call."""
        checked = check_action(action, steps)
        record = self._record(name)
        if name in self._unregistering:
            raise AppNotRegistered(name)
        async with self._gate.admit(f"{action}({name!r})"):
            context = self._require_context()
            try:
                result = await requested(
                    context, name, record, checked, steps, requested_by=requested_by
                )
            except AppNotOwned:
                if name not in self._lost:
                    raise
                raise await self._forget_lost(name) from None
            finally:
                if name in self._apps:
                    with anyio.CancelScope(shield=True):
                        await track_schema(context.steps, name, record)
        return result

    async def unregister_app(
        self, name: str, rollback: bool = True, force: bool = False, timeout: float | None = None
    ) -> UnregisterResult:
        """Roll back (seeds, then migrations, then models) and close the connection unless
        other apps still share it; each step published and awaited.

        Raises ``AppNotOwned``, touching nothing, when another registry took the app
        over (this registry was paused or cut off past ``ownership_ttl``)."""
        record = self._apps.get(name)
        if record is None and name in self._lost:
            raise await self._forget_lost(name)
        if record is None or name in self._unregistering:
            # A second unregistration at once would roll back a second batch.
            raise AppNotRegistered(name)
        async with self._gate.admit(f"unregister_app({name!r})"):
            context = self._require_context()
            self._unregistering.add(name)
            try:
                with anyio.fail_after(timeout if timeout is not None else float("inf")):
                    result = await unregister(context, name, record, rollback=rollback, force=force)
            except AppNotOwned:
                if name not in self._lost:
                    raise
                raise await self._forget_lost(name) from None
            finally:
                self._unregistering.discard(name)
                if record.released:
                    # Its connection is gone whatever happened after: it is not registered.
                    self._apps.pop(name, None)
                    context.steps.track_app(name, registered=False)
            if result.success or force:
                self._apps.pop(name, None)
                context.steps.track_app(name, registered=False)
                record.manager.attach(None, partial(status_of, name, None, None))
                await self._listeners.emit("app-unregistered", result.as_dict())
        return result

    async def _close_app(self, name: str) -> None:
        """Registry shutdown: close an app's connection without rolling anything back."""
        record = self._apps.pop(name)
        context = self._require_context()
        await close_connection(context, name, record, registry_shutdown=True)
        context.steps.track_app(name, registered=False)

    def _record(self, name: str) -> AppRecord:
        """The record of a registered app, else ``AppNotOwned`` (lost to another
        registry) or ``AppNotRegistered``."""
        record = self._apps.get(name)
        if record is not None:
            return record
        if name in self._lost:
            raise AppNotOwned(name, self.id, self._lost[name][1].owner)
        raise AppNotRegistered(name)

    def get_app(self, name: str) -> ConnectionManager:
        return self._record(name).manager

    def has_app(self, name: str) -> bool:
        return name in self._apps

    def get_all_apps(self) -> dict[str, ConnectionManager]:
        return {name: record.manager for name, record in self._apps.items()}

    async def check_health(self, name: str) -> dict[str, Any]:
        """Run one health check of ``name`` now (as the monitor does each interval)."""
        record = self._record(name)
        async with self._gate.admit(f"check_health({name!r})"):
            context = self._require_context()
            health = await check_app(context.steps, context.ownership.confirm, name, record)
        return health

    async def get_status(self) -> dict[str, Any]:
        """Apps, connections, plugins and the registry's own state (a failed background
        task of the registry itself shows as ``failure``)."""
        host = self._host
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
            "health_monitor_error": self._monitor_error,
            "in_flight": self._gate.in_flight,
            "failure": None if host is None or host.failure is None else repr(host.failure),
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
        async with self._gate.admit(f"load_plugin({type(instance).__name__})"):
            loaded = await self.plugins.load_instance(instance, plugin_config)
        return loaded.instance

    async def unload_plugin(self, name: str) -> bool:
        """Stop one plugin (inline: drained, then shutdown(); processes: a graceful stop)."""
        async with self._gate.admit(f"unload_plugin({name!r})"):
            unloaded = await self.plugins.unload(name)
        return unloaded

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
