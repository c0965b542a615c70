"""The PluginManager: loads configured plugins in batches, isolates their failures.

Enabled plugins load in batches of ``batch_size`` (3), concurrently within a batch; a
configured plugin gets twice ``load_timeout`` for import plus initialize; a plugin that
fails is reported in ``initialize()``'s result while the others load. Three run modes:

* ``inline``: the plugin's worker runs as a task in the registry's process and consumes
  through the same bus (audit, acks and failures are the same as for a process);
* ``process``: the registry starts ``workers`` worker processes and supervises them;
* ``external``: workers run elsewhere (``rapid-objection worker``); loading waits up to
  ``load_timeout`` for their manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import sqlalchemy as sa

from rapid_objection.bus import Bus, collect_status
from rapid_objection.bus._directory import is_alive
from rapid_objection.plugin_workers import PluginLoadError, Worker, build_plugin
from rapid_objection.plugin_workers._loader import validate_interface
from rapid_objection.plugin_workers._settings import WorkerTable

from ._config import PluginConfig, RegistryConfig
from ._errors import RegistryError
from ._host import BackgroundTasks, describe
from ._listeners import Listeners
from ._loaded import (
    FailedPlugin,
    LoadedPlugin,
    PluginFailed,
    import_plugin_class,
)
from ._steps import Steps
from ._supervisor import Supervisor

log = logging.getLogger("rapid_objection.plugins")

MANIFEST_POLL = 0.1
"""Seconds between two looks for an external plugin's manifest while loading."""


@dataclass(frozen=True, slots=True)
class PluginHost:
    """What running plugins takes of an initialized registry."""

    bus: Bus
    steps: Steps
    """The plugins' policies (who is awaited) and the manifests' refresh."""
    tasks: BackgroundTasks
    """Where inline workers and process supervisors run."""


class PluginManager:
    """Loads, runs and unloads the plugins of one registry."""

    def __init__(
        self,
        config: RegistryConfig,
        registry_id: str,
        listeners: Listeners,
        live_engines: Callable[[str], sa.Engine],
    ) -> None:
        self.config = config
        self.registry_id = registry_id
        self.settings = config.plugin_manager
        self._listeners = listeners
        self._live_engines = live_engines
        self._host: PluginHost | None = None
        self._plugins: dict[str, LoadedPlugin] = {}
        self._stalled: set[str] = set()
        self._loading: set[str] = set()
        self._abandoned = False
        """The registry is stopping during its startup: no more waiting for workers."""
        self.failed: dict[str, FailedPlugin] = {}

    def abandon_loading(self) -> None:
        """Stop waiting for workers to announce themselves (a stop during startup: the
        plugins still waited for fail to load at once, instead of at their timeout)."""
        self._abandoned = True

    def attach(self, host: PluginHost | None) -> None:
        """Run plugins on ``host`` from now on (None: the registry is not initialized)."""
        self._host = host

    def _require_host(self) -> PluginHost:
        if self._host is None:
            raise RegistryError(
                f"registry {self.registry_id!r} is not initialized: await initialize()"
            )
        return self._host

    # -- queries (the seed's get, getAll, has, getStatus) -------------------------------

    def get(self, name: str) -> Any:
        """The plugin object of an inline plugin, else its LoadedPlugin record; or None."""
        loaded = self._plugins.get(name)
        if loaded is None:
            return None
        return loaded.instance if loaded.instance is not None else loaded

    def get_all(self) -> dict[str, Any]:
        return {name: self.get(name) for name in self._plugins}

    def names(self) -> list[str]:
        return list(self._plugins)

    def loaded(self, name: str) -> LoadedPlugin | None:
        """The record of a loaded plugin (its mode, worker or supervisor), or None."""
        return self._plugins.get(name)

    def has(self, name: str) -> bool:
        return name in self._plugins

    def config_of(self, name: str) -> PluginConfig | None:
        """The policy a plugin runs under: as loaded, else as configured."""
        loaded = self._plugins.get(name)
        return loaded.config if loaded is not None else self.config.plugins.get(name)

    async def get_status(self) -> dict[str, Any]:
        """Counts and each plugin's status with its consumers (from the bus)."""
        consumers: dict[str, list[dict[str, Any]]] = {}
        if self._host is not None:
            report = await collect_status(self._host.bus, recent=0)
            for plugin in report.plugins:
                consumers[plugin.name] = [
                    {"name": c.name, "alive": c.alive, "pending": c.pending, "handled": c.handled}
                    for c in plugin.consumers
                ]
        configured = self.config.plugins
        plugins: dict[str, Any] = {}
        for name, loaded in self._plugins.items():
            own = loaded.instance.get_status() if loaded.instance is not None else {}
            plugins[name] = {
                "status": loaded.state,
                "error": loaded.error,
                "mode": loaded.mode,
                "version": loaded.version,
                "required": loaded.config.required,
                "on_failure": loaded.config.on_failure,
                "loaded_at": loaded.loaded_at,
                "plugin": own,
                "consumers": consumers.get(name, []),
            }
            if loaded.supervisor is not None:
                plugins[name]["processes"] = loaded.supervisor.status()
        for name, failure in self.failed.items():
            plugins[name] = {
                "status": "failed",
                "error": failure.error,
                "phase": failure.phase,
                # Still awaited (fail closed): its hooks fail while no worker of it runs.
                "required": self._required_here(name),
            }
        counts = {
            "total": len(configured) + len(set(self._plugins) - set(configured)),
            "enabled": sum(1 for c in configured.values() if c.enabled),
            "loaded": len(self._plugins),
            "failed": len(self.failed),
        }
        return {**counts, "counts": counts, "plugins": plugins}

    # -- loading --------------------------------------------------------------------------

    async def load_configured(self) -> tuple[list[str], list[FailedPlugin]]:
        """Load every enabled plugin of the configuration, in batches."""
        enabled = [(n, c) for n, c in self.config.plugins.items() if c.enabled]
        size = max(1, self.settings.batch_size)
        for start in range(0, len(enabled), size):
            async with anyio.create_task_group() as group:
                for name, config in enabled[start : start + size]:
                    group.start_soon(self._load_isolated, name, config)
        loaded = [name for name, _ in enabled if name in self._plugins]
        failed = [self.failed[name] for name, _ in enabled if name in self.failed]
        return loaded, failed

    async def _load_isolated(self, name: str, config: PluginConfig) -> None:
        limit = 2 * self.settings.load_timeout
        try:
            await self._load_with_timeout(name, config, limit)
        finally:
            if name not in self._plugins and name not in self._loading:
                self._settle_policy(name)

    async def _load_with_timeout(self, name: str, config: PluginConfig, limit: float) -> None:
        try:
            with anyio.fail_after(limit):
                await self.load(name, config)
        except TimeoutError:
            await self._fail(
                name, f"Timeout ({int(limit * 1000)}ms): load configured plugin '{name}'", "timeout"
            )
        except PluginLoadError as exc:  # PluginFailed too
            await self._fail(name, str(exc), exc.phase)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # a module's sys.exit() is a failed plugin too
            await self._fail(name, f"Plugin '{name}' failed to initialize: {exc!r}", "initialize")

    async def _fail(self, name: str, message: str, phase: str) -> None:
        self.failed[name] = FailedPlugin(name, message, phase)
        log.error("plugin %s: %s", name, message)
        await self._listeners.emit(
            "error",
            {"component": "PluginManager", "phase": phase, "plugin": name, "error": message},
        )

    async def load(self, name: str, config: PluginConfig) -> LoadedPlugin:
        """Load one plugin in its mode; raises PluginFailed / PluginLoadError."""
        if not config.module:
            raise PluginFailed(
                name, f"Plugin '{name}' missing required 'module' property", "config"
            )
        with self._reserve(name):
            try:
                await self._await_policy(name, config)
                loaded = await self._start(name, config, config.module)
            except BaseException:
                self._settle_policy(name)
                raise
            self.failed.pop(name, None)
            self._plugins[name] = loaded
        steps = self._require_host().steps
        steps.set_policy(name, config)  # running: no live consumer now fails its hooks at once
        await steps.refresh()  # its manifest now decides what it awaits
        await self._listeners.emit(
            "plugin-loaded",
            {"name": name, "plugin": name, "mode": loaded.mode, "version": loaded.version},
        )
        return loaded

    async def _start(self, name: str, config: PluginConfig, module: str) -> LoadedPlugin:
        """Start ``name`` in its mode; returns once a worker of it has announced itself."""
        if config.mode == "inline":
            plugin_class = await import_plugin_class(module)
            instance = build_plugin(plugin_class, dict(config.config))
            return await self._start_inline(name, instance, config)
        if config.mode == "process":
            return await self._start_processes(name, config)
        await self._await_manifest(name, self.settings.load_timeout, module)
        return LoadedPlugin(name, "external", config)

    async def load_instance(self, instance: Any, config: PluginConfig) -> LoadedPlugin:
        """Run an already-built plugin object inline (``AppRegistry.load_plugin``)."""
        name = getattr(instance, "name", None) or type(instance).__name__
        limit = self.settings.load_timeout
        with self._reserve(name):
            try:
                with anyio.fail_after(limit):
                    await self._await_policy(name, config)
                    loaded = await self._start_inline(name, instance, config)
            except TimeoutError:
                self._settle_policy(name)
                raise PluginFailed(
                    name, f"Timeout ({int(limit * 1000)}ms): load plugin '{name}'", "timeout"
                ) from None
            except BaseException:
                self._settle_policy(name)
                raise
            self._plugins[name] = loaded
        steps = self._require_host().steps
        steps.set_policy(name, config)
        await steps.refresh()
        await self._listeners.emit(
            "plugin-loaded",
            {"name": name, "plugin": name, "mode": "inline", "version": loaded.version},
        )
        return loaded

    @contextmanager
    def _reserve(self, name: str) -> Iterator[None]:
        """Hold ``name`` while it loads: a second load of it at once is refused, instead
        of both succeeding and the first instance running on, orphaned."""
        if name in self._plugins or name in self._loading:
            raise PluginFailed(name, f"Plugin '{name}' is already loaded", "load")
        self._loading.add(name)
        try:
            yield
        finally:
            self._loading.discard(name)

    async def _await_policy(self, name: str, config: PluginConfig) -> None:
        """Await ``name`` from now on, its consumer group first: an event published
        while it loads then waits in the group for its first worker."""
        host = self._require_host()
        await host.bus.ensure_group(name)
        host.steps.set_policy(name, config, starting=True)

    async def _start_inline(self, name: str, instance: Any, config: PluginConfig) -> LoadedPlugin:
        validate_interface(type(instance))
        # The worker validates the configuration and initializes the plugin as it starts.
        bus = self._require_host().bus
        worker = Worker(
            instance,
            bus,
            consumer=f"{self.registry_id}-{name}",
            settings=config,
            config=dict(config.config),
            # This registry's policy makes it required here; the manifest must not
            # impose that on the other registries of the bus.
            required=False,
            registry_id=self.registry_id,
            live_engines=self._live_engines,
            name=name,
        )
        loaded = LoadedPlugin(name, "inline", config, instance=instance, worker=worker)

        async def run(
            *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                await worker.run(task_status=task_status)
            finally:
                loaded.stopped.set()

        await self._require_host().tasks.start(f"plugin {name}", run, self._crashed(loaded))
        return loaded

    def _crashed(self, loaded: LoadedPlugin) -> Callable[[BaseException], None]:
        def mark(exc: BaseException) -> None:
            loaded.error = describe(exc)
            log.error("plugin %s stopped running: %s", loaded.name, loaded.error)

        return mark

    async def _start_processes(self, name: str, config: PluginConfig) -> LoadedPlugin:
        bus = self._require_host().bus
        if bus.embedded:
            raise PluginFailed(
                name,
                f"Plugin '{name}' runs in mode 'process', which needs a Redis bus; "
                "memory:// lives inside this process (use mode 'inline')",
                "config",
            )
        assert config.module is not None
        supervisor = Supervisor(
            name,
            config.module,
            workers=config.workers,
            bus_url=self.config.bus.connect_url,
            namespace=bus.namespace,
            table=WorkerTable.of(name, config.config, config, self.config.bus.dead_letters),
            consumer_prefix=self.registry_id,
            shutdown_timeout=self.settings.shutdown_timeout,
            keyring=bus.keyring,
        )
        loaded = LoadedPlugin(name, "process", config, supervisor=supervisor)

        async def run(
            *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                await supervisor.run(task_status=task_status)
            finally:
                loaded.stopped.set()

        await self._require_host().tasks.start(f"plugin {name}", run, self._crashed(loaded))
        try:
            await self._await_manifest(name, None, config.module, supervisor)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await supervisor.stop()
            raise
        return loaded

    async def _await_manifest(
        self, name: str, limit: float | None, module: str, supervisor: Supervisor | None = None
    ) -> None:
        """Wait until a worker of ``name`` has announced itself, or reported why it could
        not start (a poll of the directory, a few times a second, only while loading)."""
        bus = self._require_host().bus
        since = time.time()
        told = False
        with anyio.move_on_after(limit if limit is not None else float("inf")) as scope:
            while True:
                # Only a live worker: a dead one's record stays until it is cleaned up.
                if any(is_alive(w.seen) for w in await bus.directory.workers(name)):
                    break
                if self._abandoned:
                    raise PluginFailed(
                        name, "the registry is stopping: no longer waiting for a worker", "manifest"
                    )
                if not told and limit is not None:
                    # An external plugin: the wait may be long; say what it waits for.
                    told = True
                    await self._listeners.emit(
                        "plugin-waiting", {"name": name, "module": module, "timeout": limit}
                    )
                error = await bus.directory.load_error(name)
                if error is not None and error.time >= since:
                    raise PluginFailed(name, error.error, error.phase)
                if supervisor is not None and supervisor.last_exit_reason is not None:
                    # It ended before announcing itself (sys.exit() in initialize, a
                    # crash): no use waiting for the load timeout. What it reported
                    # before exiting (a module that does not import) says why.
                    error = await bus.directory.load_error(name)
                    if error is not None and error.time >= since:
                        raise PluginFailed(name, error.error, error.phase)
                    raise PluginFailed(
                        name,
                        f"Plugin '{name}' worker {supervisor.last_exit_reason} before it "
                        "announced itself",
                        "initialize",
                    )
                await anyio.sleep(MANIFEST_POLL)
        if scope.cancelled_caught:
            raise PluginFailed(
                name,
                f"Plugin '{name}' has no worker: none announced itself within "
                f"{limit:g}s (start one with `rapid-objection worker {module} ...`; a worker "
                f"that runs announces the plugin's own name, which must be '{name}')",
                "manifest",
            )
        await self._require_host().steps.refresh()

    # -- unloading ------------------------------------------------------------------------

    async def unload(self, name: str, timeout: float | None = None) -> bool:
        """Stop one plugin (inline: drain and call shutdown(); process: stop the workers)."""
        loaded = self._plugins.pop(name, None)
        if loaded is None:
            return False
        # No step waits for a plugin that is leaving, even while it drains (unless the
        # configuration requires it: then its steps fail closed).
        self._settle_policy(name)
        limit = timeout if timeout is not None else self.settings.shutdown_timeout
        with anyio.move_on_after(limit, shield=True) as scope:
            if loaded.worker is not None:
                loaded.worker.shutdown_timeout = limit
                loaded.worker.stop()
                await loaded.stopped.wait()
            elif loaded.supervisor is not None:
                await loaded.supervisor.stop()
                await loaded.stopped.wait()
        if scope.cancelled_caught:
            self._stalled.add(name)
        if self._host is not None and self._required_here(name):
            # Still awaited: the next step must know at once that its worker is gone.
            await self._host.steps.refresh()
        await self._listeners.emit(
            "plugin-unloaded", {"name": name, "plugin": name, "mode": loaded.mode}
        )
        return True

    async def shutdown(self, timeout: float) -> list[str]:
        """Unload every plugin, concurrently, within ``timeout`` seconds; returns what did
        not stop in time (the registry's task then cancels it)."""
        names = list(self._plugins)
        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(self.unload, name, max(timeout, 0.0))
        return [
            f"plugin {name!r} did not stop within {timeout:g}s"
            for name in names
            if name in self._stalled
        ]

    def hurry(self) -> None:
        """The shutdown deadline has passed: a plugin's shutdown() gets no more time."""
        for loaded in self._plugins.values():
            if loaded.worker is not None:
                loaded.worker.shutdown_timeout = 0.0

    def kill_processes(self) -> None:
        """SIGKILL every supervised worker process now (the process is about to exit)."""
        for loaded in self._plugins.values():
            if loaded.supervisor is not None:
                loaded.supervisor.kill_all()

    def forget_all(self) -> None:
        """The registry's task is gone: no plugin of it runs any more."""
        self._plugins.clear()
        self._stalled.clear()

    def _settle_policy(self, name: str) -> None:
        """``name`` does not run here (it failed to load, or is unloaded): a plugin the
        configuration marks required stays awaited, so that its hooks fail closed (at
        once, as ``no_consumer``, while no live worker of it serves); any other is no
        longer awaited."""
        if self._host is None:
            return
        configured = self.config.plugins.get(name)
        if configured is not None and self._required_here(name):
            self._host.steps.set_policy(name, configured)
        else:
            self._host.steps.drop_policy(name)

    def _required_here(self, name: str) -> bool:
        """Whether this registry's configuration marks ``name`` required (and enabled)."""
        configured = self.config.plugins.get(name)
        return configured is not None and configured.enabled and configured.required
