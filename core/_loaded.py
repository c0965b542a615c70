"""What the PluginManager knows of each plugin (loaded, failed) and the checks of loading."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from rapid_objection.plugin_workers import PluginLoadError, Worker, load_plugin_class

from ._config import PluginConfig
from ._supervisor import Supervisor


class PluginFailed(PluginLoadError):  # noqa: N818 - a load outcome, carried in initialize()'s result
    """A plugin that could not be loaded; the message is the seed's troubleshooting text."""

    def __init__(self, plugin: str, message: str, phase: str) -> None:
        super().__init__(plugin, message, phase)
        self.plugin = plugin


@dataclass
class LoadedPlugin:
    """A plugin this registry runs or waits for."""

    name: str
    mode: Literal["inline", "process", "external"]
    config: PluginConfig
    instance: Any = None
    """The plugin object (inline mode only)."""
    worker: Worker | None = None
    supervisor: Supervisor | None = None
    loaded_at: float = field(default_factory=time.time)
    stopped: anyio.Event = field(default_factory=anyio.Event)
    error: str | None = None
    """Why its worker or supervisor failed after it had started (it no longer runs)."""

    @property
    def version(self) -> str | None:
        return getattr(self.instance, "version", None)

    @property
    def state(self) -> str:
        """loaded; failed (no longer runs); restarting (a supervised worker is down)."""
        if self.error is not None:
            return "failed"
        if self.supervisor is not None and len(self.supervisor.pids) < self.supervisor.workers:
            return "restarting"
        return "loaded"


@dataclass(frozen=True, slots=True)
class FailedPlugin:
    name: str
    error: str
    phase: str


async def import_plugin_class(module: str) -> type[Any]:
    """``load_plugin_class`` in a thread; a module that exits or interrupts at import
    (``sys.exit()``) is a plugin that failed to import, not the end of the registry."""
    try:
        return await anyio.to_thread.run_sync(load_plugin_class, module, abandon_on_cancel=True)
    except (SystemExit, KeyboardInterrupt) as exc:
        raise PluginLoadError(
            module, f"Failed to import plugin module '{module.partition(':')[0]}': {exc!r}"
        ) from None
