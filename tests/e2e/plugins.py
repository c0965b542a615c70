"""Plugins that the end-to-end tests run in worker processes (``tests.e2e.plugins:PluginA``).

Each one counts, in hashes of the test's own namespace, the events its hook started and
finished (``HINCRBY`` per event id, read with ``current_delivery()``), so that a test can
check from the plugins' side that every event was handled, and handled once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio

from rapid_objection.bus import ConnectionInfo, PermanentError
from rapid_objection.bus._keys import Keys
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery


def record_key(keys: Keys, kind: str, plugin: str) -> str:
    """The hash ``event id -> count`` of ``kind`` ("started" or "handled") for ``plugin``."""
    return f"{keys.prefix}e2e:{kind}:{plugin}"


class Recorder(PluginInterface):
    """Handles ``app_registered``: counts the event as started, works, counts it as handled."""

    NAME: ClassVar[str] = "e2e-recorder"

    def __init__(self) -> None:
        super().__init__(self.NAME, "1.0.0")

    async def _count(self, kind: str, event_id: str) -> None:
        view = self.registry
        assert isinstance(view, RegistryView), "initialize() runs before any hook"
        await view.bus.redis.hincrby(record_key(view.bus.keys, kind, self.name), event_id)

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        event_id = current_delivery().envelope.id
        await self._count("started", event_id)
        await self.work(config)
        await self._count("handled", event_id)
        return {"app": app_name, "event_id": event_id}

    async def work(self, config: dict[str, Any]) -> None:
        """What the hook does between "started" and "handled"; nothing by default."""


class PluginA(Recorder):
    NAME = "e2e-a"


class PluginB(Recorder):
    NAME = "e2e-b"


class Gatekeeper(Recorder):
    """Also answers app_registration_started, as an access-control plugin would."""

    NAME = "e2e-gatekeeper"

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        """Lets every app in."""


class Sleeper(Recorder):
    """Sleeps inside the hook for the event's ``config["sleep"]`` seconds."""

    NAME = "e2e-sleeper"

    async def work(self, config: dict[str, Any]) -> None:
        await anyio.sleep(float(config.get("sleep", 0.0)))


class Refuser(Recorder):
    """Refuses (PermanentError: no retry) an event whose config says ``refuse``."""

    NAME = "e2e-refuser"

    async def work(self, config: dict[str, Any]) -> None:
        if config.get("refuse"):
            raise PermanentError(f"refused: {config['refuse']}")


class FailsToBuild(PluginInterface):
    """A plugin whose constructor rejects its configuration."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("e2e-fails-to-build")
        raise ValueError("option 'directory' is required")


class FailsToInitialize(PluginInterface):
    """A plugin whose ``initialize`` fails, e.g. a backend it needs does not answer."""

    def __init__(self) -> None:
        super().__init__("e2e-fails-to-initialize")

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        raise RuntimeError("backup directory /nonexistent is not writable")


class Picky(Recorder):
    """Fails the hook of an app named ``bad`` (a plugin's bug, with a traceback); emits a
    custom event ``picked`` from a span of its own for every app."""

    NAME = "e2e-picky"

    async def work(self, config: dict[str, Any]) -> None:
        # A span of the plugin's own, and a custom event sent from inside it: both belong
        # to the registry step's trace when OpenTelemetry is set up (tests/e2e).
        from opentelemetry import trace

        app = current_delivery().envelope.app
        with trace.get_tracer("tests.e2e").start_as_current_span("picky lookup"):
            assert isinstance(self.registry, RegistryView)
            await self.registry.emit("picked", {"app": app})
            if app == "bad":
                raise LookupError("no such customer: bad")
