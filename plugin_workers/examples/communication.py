"""The seed's "Plugin Communication": plugin A emits a custom event, plugin B listens.

Across processes: ``registry.emit`` publishes a ``custom`` event on the bus and every
plugin's workers receive it; B's ``registry.on`` handler runs in B's worker. B writes
what it received, one JSON line per event, to the file ``inbox`` of its configuration,
so that someone in another process can see it.

A custom event reaches the plugins whose consumer group exists when it is published:
a registry creates the groups of its configured plugins when it starts, so B, declared
in the same registry configuration, gets A's ``plugin-a-ready`` even when A's worker
comes up first. A's ``on_app_registered`` emits ``plugin-a-saw-app`` as well, which
does not depend on start-up order at all.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import anyio

from rapid_objection.bus import Custom
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery

log = logging.getLogger("rapid_objection.examples.communication")

READY = "plugin-a-ready"
SAW_APP = "plugin-a-saw-app"


class PluginA(PluginInterface):
    """Announces itself to the other plugins when it starts, and each app it sees."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("plugin-a", "1.0.0")
        self.config = config or {}

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        self.registry = registry
        # Emit custom event.
        await registry.emit(READY, {"data": "hello", "pid": os.getpid()})

    async def on_app_registered(
        self, app_name: str, connection: Any, config: dict[str, Any]
    ) -> str:
        assert self.registry is not None, "initialize() runs before any hook"
        return await self.registry.emit(SAW_APP, {"app": app_name, "pid": os.getpid()})


class PluginB(PluginInterface):
    """Listens for plugin A's events and keeps what it received."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("plugin-b", "1.0.0")
        self.config = config or {}
        self.received: list[dict[str, Any]] = []

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        self.registry = registry
        self.config = {**self.config, **config}

        # Listen for plugin A's events.
        async def on_ready(event: dict[str, Any]) -> None:
            log.info("Plugin A is ready: %s", event["data"])
            await self.record(READY, event)

        async def on_saw_app(event: dict[str, Any]) -> None:
            log.info("Plugin A saw app: %s", event["app"])
            await self.record(SAW_APP, event)

        registry.on(READY, on_ready)
        registry.on(SAW_APP, on_saw_app)

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "received": len(self.received)}

    async def record(self, name: str, data: dict[str, Any]) -> None:
        """Keep one received event, and append it to the ``inbox`` file when configured."""
        envelope = current_delivery().envelope
        payload = envelope.payload
        entry = {
            "event": name,
            "data": data,
            "event_id": envelope.id,
            "source": payload.source if isinstance(payload, Custom) else "",
            "received_by": os.getpid(),
            "received_at": time.time(),
        }
        self.received.append(entry)
        inbox = self.config.get("inbox")
        if inbox:
            async with await anyio.open_file(inbox, "a") as file:
                await file.write(json.dumps(entry) + "\n")
