"""What a plugin sees of the registries: ``RegistryView``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rapid_objection.bus import Bus, Custom, Publisher
from rapid_objection.bus._tracing import traceparent


class RegistryView:
    """The registries of one bus, as a plugin worker sees them.

    A worker runs apart from any registry, so it sees the app directory that the
    registries keep on the bus and talks to other plugins with ``emit``/``on``
    (the seed's "plugin communication", across processes).
    """

    def __init__(self, bus: Bus, *, plugin: str, consumer: str, registry_id: str = "") -> None:
        self.bus = bus
        self.plugin = plugin
        self.consumer = consumer
        """This worker's consumer name in the plugin's group."""
        self.registry_id = registry_id
        """The registry this plugin runs inside (inline mode), or empty for a worker."""
        self._publisher = Publisher(bus, registry_id=f"{plugin}@{consumer}")
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    async def get_all_apps(self) -> dict[str, str]:
        """App name -> the id of the registry that owns it."""
        return await self.bus.directory.apps()

    async def get_app(self, name: str) -> str | None:
        """The registry that owns app ``name``, or None when no registry has it."""
        return (await self.get_all_apps()).get(name)

    async def emit(self, name: str, data: Any = None) -> str:
        """Publish a custom event to every plugin; returns its event id."""
        custom = Custom(name=name, data=data, source=self.plugin)
        # Inside a hook's span (OpenTelemetry), the event continues the hook's trace.
        envelope, _ = await self._publisher.publish(custom, trace=traceparent())
        return envelope.id

    def on(self, name: str, handler: Callable[..., Any]) -> None:
        """Call ``handler(data)`` (sync or async) for every custom event ``name``."""
        self._handlers.setdefault(name, []).append(handler)

    def off(self, name: str, handler: Callable[..., Any]) -> None:
        handlers = self._handlers.get(name, [])
        if handler in handlers:
            handlers.remove(handler)

    def handlers(self, name: str) -> list[Callable[..., Any]]:
        return list(self._handlers.get(name, ()))
