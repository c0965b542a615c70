"""The worker runtime: one consumer of a plugin's group, with manifest and heartbeat."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from rapid_objection.bus import (
    Bus,
    BusUnavailable,
    GroupMissing,
    LoadError,
    Manifest,
    WorkerInfo,
    mask_url,
)
from rapid_objection.bus._constants import HEARTBEAT_INTERVAL, READ_BATCH
from rapid_objection.bus._consumer import Consumer
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._keys import unique_name
from rapid_objection.bus._retry import RetryPolicy
from rapid_objection.bus._tracing import traced

from ._connection import Engines, LiveEngines
from ._dispatch import Dispatcher
from ._errors import ConsumerTaken, PluginLoadError
from ._settings import WorkerSettings
from ._view import RegistryView

log = logging.getLogger("rapid_objection.worker")

MAX_READ_BATCH = 1_000
"""The most entries a plugin's ``read_batch`` may ask a worker to read (and hold) at once."""

SHUTDOWN_TIMEOUT = 15.0
"""Seconds a plugin's shutdown() (and closing its engines) may take when a worker stops."""


def plugin_name(plugin: object) -> str:
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__


def read_batch(plugin: object) -> int:
    """Entries per read: the plugin's ``read_batch`` (a plugin with ``prepare_batch``
    may ask for more than the default, to do its I/O for that many at once)."""
    wanted = getattr(plugin, "read_batch", None)
    if wanted is None:
        return READ_BATCH
    if not isinstance(wanted, int) or isinstance(wanted, bool) or not 1 <= wanted <= MAX_READ_BATCH:
        raise ValueError(
            f"plugin {plugin_name(plugin)!r}: read_batch must be a whole number from 1 to "
            f"{MAX_READ_BATCH}, not {wanted!r}"
        )
    return wanted


async def _call(function: Callable[..., Any], *arguments: Any) -> None:
    """Call a plugin's lifecycle method: a coroutine function on the event loop, a plain
    ``def`` in a worker thread (as hooks are), so that a blocking one cannot stall the
    loop and a load or shutdown timeout still fires (the thread is then abandoned)."""
    if inspect.iscoroutinefunction(function):
        await function(*arguments)
        return
    result = await anyio.to_thread.run_sync(
        functools.partial(function, *arguments), abandon_on_cancel=True
    )
    if inspect.isawaitable(result):
        await result


class Worker:
    """Runs one plugin instance as one consumer of its group until stopped."""

    def __init__(
        self,
        plugin: object,
        bus: Bus,
        *,
        settings: WorkerSettings | None = None,
        consumer: str | None = None,
        config: dict[str, Any] | None = None,
        required: bool = False,
        registry_id: str = "",
        live_engines: LiveEngines | None = None,
        name: str | None = None,
    ) -> None:
        self.plugin = plugin
        self.bus = bus
        # The name under which the registry configured the plugin wins over its own.
        self.name = name or plugin_name(plugin)
        self.consumer_name = consumer or unique_name()
        if "|" in self.consumer_name or not self.consumer_name.strip():
            # "|" separates plugin, consumer and kind in the directory and the counters.
            raise ValueError(f"consumer name {self.consumer_name!r} must be non-empty without '|'")
        self.config = dict(config or {})
        self.required = required
        self.settings = settings = (settings or WorkerSettings()).worker_settings()
        self.shutdown_timeout = SHUTDOWN_TIMEOUT
        """Seconds for the plugin's shutdown() once consuming ended; a registry that runs
        the worker inline sets what is left of its own shutdown deadline."""
        self.engines = Engines(self.config, live_engines)
        self.view = RegistryView(
            bus, plugin=self.name, consumer=self.consumer_name, registry_id=registry_id
        )
        self.dispatcher = Dispatcher(
            plugin,
            self.name,
            self.consumer_name,
            timeout=settings.timeout,
            custom_handlers=self.view.handlers,
            engines=self.engines,
            threads=settings.concurrency,
        )
        self.consumer = Consumer(
            bus,
            self.name,
            self.consumer_name,
            # Each hook in a span (OpenTelemetry, when installed); else the dispatcher itself.
            traced(self.dispatcher, self.dispatcher.handles, self.name, self.consumer_name),
            concurrency=settings.concurrency,
            retry=RetryPolicy(max_deliveries=settings.max_deliveries),
            claim_idle=settings.claim_idle,
            prepare=self.dispatcher.prepare if self.dispatcher.prepare_batch else None,
            batch=read_batch(plugin),
        )
        self._started = time.time()
        # What the namespace keeps of this worker besides its group, put back with the
        # group when Redis lost it (bus/_restore.py).
        self.consumer.restorer.add("manifest", self._restore_manifest)
        self.consumer.restorer.add("heartbeat record", self._beat)

    @property
    def manifest(self) -> Manifest:
        return Manifest(
            plugin=self.name,
            version=str(getattr(self.plugin, "version", "0.0.0")),
            hooks=tuple(sorted(self.dispatcher.hooks)),
            required=self.required,
            timeout=self.dispatcher.timeout,
            max_deliveries=self.settings.max_deliveries,
            updated=time.time(),
        )

    def stop(self) -> None:
        """Stop reading; in-flight hooks finish and are acked before ``run`` returns."""
        self.consumer.stop()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Initialize the plugin, announce it, consume until stopped, shut the plugin down."""
        await self._check_consumer_name()
        try:
            await self._start_plugin()
        except PluginLoadError as exc:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.bus.directory.report_load_error(
                    LoadError(
                        plugin=self.name,
                        consumer=self.consumer_name,
                        error=str(exc),
                        time=time.time(),
                        phase=exc.phase,
                    )
                )
            raise
        try:
            # The group first: a registry that sees the manifest may publish at once,
            # and an event published before the group exists never reaches it.
            await self.bus.ensure_group(self.name)
            await self.bus.directory.announce(self.manifest)
            await self._beat()
            self._banner()
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat)
                await group.start(self._consume, group.cancel_scope)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()

    def _banner(self) -> None:
        """Say once, at start, what this worker serves and how (INFO: a worker's default
        level shows it; a registry running plugins inline stays quiet)."""
        manifest = self.manifest
        fields = {
            "plugin": self.name,
            "version": manifest.version,
            "hooks": list(manifest.hooks),
            "namespace": self.bus.namespace,
            "consumer": self.consumer_name,
            "concurrency": self.settings.concurrency,
            "bus_url": mask_url(self.bus.url),
            "keyring": self.bus.keyring is not None,
        }
        log.info(
            "worker of plugin %s %s started: consumer %s, namespace %s, bus %s, "
            "concurrency %d, keyring %s; hooks: %s",
            self.name,
            manifest.version,
            self.consumer_name,
            self.bus.namespace,
            fields["bus_url"],
            self.settings.concurrency,
            "on" if fields["keyring"] else "off",
            ", ".join(manifest.hooks) or "none (custom events only)",
            extra=fields,
        )

    async def _check_consumer_name(self) -> None:
        """Refuse a consumer name that a live process of another host or pid uses (its
        heartbeat says so); a record of a process of this host that no longer exists is
        stale, so that a worker restarted under its old name starts at once."""
        me = (socket.gethostname(), os.getpid())
        for info in await self.bus.directory.workers(self.name):
            if info.consumer != self.consumer_name or (info.host, info.pid) == me:
                continue
            if is_alive(info.seen) and not (info.host == me[0] and not _exists(info.pid)):
                raise ConsumerTaken(self.name, self.consumer_name, info.host, info.pid)

    async def _start_plugin(self) -> None:
        """validate_configuration (when the plugin has it), then initialize; the only
        place either runs, for inline plugins and worker processes alike."""
        # The seed's troubleshooting texts (docs/writing-plugins.md).
        for method, phase, failure in (
            ("validate_configuration", "validate", "configuration is invalid: {}"),
            ("initialize", "initialize", "failed to initialize: {type}: {}"),
        ):
            function = getattr(self.plugin, method, None)
            if function is None:
                continue
            arguments = (
                (self.config,) if method == "validate_configuration" else (self.view, self.config)
            )
            try:
                await _call(function, *arguments)
            except Exception as exc:
                raise PluginLoadError(
                    self.name,
                    f"Plugin '{self.name}' " + failure.format(exc, type=type(exc).__name__),
                    phase=phase,
                ) from exc

    async def _consume(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.consumer.run(task_status=task_status)
        scope.cancel()  # the heartbeat ends with the consumer

    async def _leave(self) -> None:
        """Shut the plugin down, drop the heartbeat and, when nothing is pending, the consumer."""
        shutdown = getattr(self.plugin, "shutdown", None)
        # Bounded: this runs shielded, and a plugin that hangs must not hang the exit.
        with anyio.move_on_after(self.shutdown_timeout) as scope:
            if shutdown is not None:
                try:
                    await _call(shutdown)
                except Exception:
                    log.exception("plugin %s failed to shut down", self.name)
            await anyio.to_thread.run_sync(self.engines.dispose, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning("plugin %s did not shut down within %gs", self.name, self.shutdown_timeout)
        with anyio.move_on_after(2):
            try:
                await self.bus.directory.forget_worker(self.name, self.consumer_name)
                pending = await self.bus.redis.xpending(
                    self.bus.keys.events, self.name, consumer=self.consumer_name, count=1
                )
                if not pending:
                    # Safe only now: a consumer deleted with pending entries strands them.
                    await self.bus.redis.delete_consumer(
                        self.bus.keys.events, self.name, self.consumer_name
                    )
            except (BusUnavailable, GroupMissing) as exc:
                log.warning("worker %s could not leave cleanly: %s", self.consumer_name, exc)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_INTERVAL)
            try:
                # A record or manifest gone missing since the last beat: the namespace
                # lost them (an empty restart, a flush), and with them perhaps the group.
                if await self._beat():
                    await self.consumer.restorer.restore("heartbeat record")
                elif await self._restore_manifest():
                    await self.consumer.restorer.restore("manifest")
            except BusUnavailable as exc:
                log.warning("heartbeat of %s: %s", self.consumer_name, exc)

    async def _restore_manifest(self) -> bool:
        return await self.bus.directory.restore_manifest(self.manifest)

    async def _beat(self) -> bool:
        """Write the heartbeat; True when the record was not there."""
        return await self.bus.directory.beat_worker(
            WorkerInfo(
                plugin=self.name,
                consumer=self.consumer_name,
                host=socket.gethostname(),
                pid=os.getpid(),
                started=self._started,
                seen=time.time(),
                concurrency=self.settings.concurrency,
                in_flight=self.consumer.in_flight,
                handled=self.consumer.handled,
                failed=self.consumer.failed,
                last_duration=self.consumer.last_duration,
            )
        )


def _exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
