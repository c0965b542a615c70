"""The seed's ``BackupPlugin``: a backup directory, four hooks, a marker file per hook.

Where the seed leaves the backup itself to the reader, each hook here writes a small
JSON marker into ``<directory>/<app>/``, named ``<seq>-<event type>.json`` after the
event's per-registry sequence number, so the files sort in the order the registry
published the events. A re-delivered event rewrites its own marker instead of adding
one. ``shutdown()`` writes ``<directory>/shutdown.json``.

Configuration (the ``[plugins.backup-plugin.config]`` table)::

    directory = "./backups"      # required
    schedule = "0 2 * * *"       # optional; a cron expression, kept for a scheduler
    compression = true           # optional; recorded in the markers
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import anyio

from rapid_objection.plugin_workers import (
    PluginInterface,
    RegistryView,
    RemoteError,
    current_delivery,
)

log = logging.getLogger("rapid_objection.examples.backup")


class BackupPlugin(PluginInterface):
    """Prepares a backup before registration, sets it up after, cleans it up after
    unregistration, and makes an emergency backup when an operation fails."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("backup-plugin", "1.0.0")
        self.backup_scheduler: Any = None
        self.config = config or {}
        self.markers: list[str] = []
        """Paths of the markers this instance wrote, in order."""

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        """Initialize plugin with the registry and configuration."""
        self.registry = registry
        # Config is already there from the constructor, but can be updated here.
        self.config = {**self.config, **config}
        await self.setup_backup_directory()
        self.setup_scheduler()
        log.info("Backup plugin initialized with directory: %s", self.config["directory"])

    async def shutdown(self) -> None:
        """Shutdown plugin and cleanup resources."""
        if self.backup_scheduler is not None:
            self.backup_scheduler.stop()
        await self._write(anyio.Path(self.config["directory"]) / "shutdown.json", {})
        log.info("Backup plugin shut down")

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        """Validate plugin configuration (optional; called when the plugin has it)."""
        if not config.get("directory"):
            raise ValueError("Backup directory is required")
        schedule = config.get("schedule")
        if schedule and not isinstance(schedule, str):
            raise ValueError("Schedule must be a valid cron expression")
        return True

    def get_status(self) -> dict[str, Any]:
        return {
            **super().get_status(),
            "directory": self.config.get("directory"),
            "schedule": self.config.get("schedule"),
            "markers": len(self.markers),
        }

    # -- hooks ----------------------------------------------------------------------------

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> str:
        """React to app registration starting."""
        log.info("Preparing backup for app: %s", app_name)
        return await self.prepare_app_backup(app_name, config)

    async def on_app_registered(
        self, app_name: str, connection: Any, config: dict[str, Any]
    ) -> str:
        """React to app registration completion."""
        log.info("Setting up backup for app: %s", app_name)
        return await self.setup_app_backup(app_name, connection)

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> str:
        """React to app unregistration completion."""
        log.info("Cleaning up backup for app: %s", app_name)
        return await self.cleanup_app_backup(app_name, options)

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> str:
        """React to operation failures: an emergency backup before the cleanup."""
        log.info("Operation failed for %s: %s", app_name, operation)
        return await self.create_emergency_backup(
            app_name, {"operation": operation, "error": error.message, "context": context}
        )

    # -- plugin-specific methods ----------------------------------------------------------

    async def setup_backup_directory(self) -> None:
        await anyio.Path(self.config["directory"]).mkdir(parents=True, exist_ok=True)

    def setup_scheduler(self) -> None:
        if self.config.get("schedule"):
            # A cron scheduler for automatic backups would start here; which one is up to
            # you (the bundled backup plugin has one). The example keeps the expression.
            log.info("Backup schedule: %s", self.config["schedule"])

    async def prepare_app_backup(self, app_name: str, config: dict[str, Any]) -> str:
        database = config.get("database", {})
        return await self._marker(app_name, {"database": database.get("url")})

    async def setup_app_backup(self, app_name: str, connection: Any) -> str:
        return await self._marker(
            app_name,
            {"dialect": connection.dialect, "database": connection.database, "url": connection.url},
        )

    async def cleanup_app_backup(self, app_name: str, options: dict[str, Any]) -> str:
        return await self._marker(app_name, {"options": options})

    async def create_emergency_backup(self, app_name: str, details: dict[str, Any]) -> str:
        return await self._marker(app_name, details)

    # -- markers --------------------------------------------------------------------------

    async def _marker(self, app_name: str, details: dict[str, Any]) -> str:
        """Write this event's marker into the app's backup directory; returns its path."""
        delivery = current_delivery()
        envelope = delivery.envelope
        folder = anyio.Path(self.config["directory"]) / app_name
        await folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{envelope.seq:06d}-{envelope.type}.json"
        await self._write(
            path,
            {
                "hook": envelope.type,
                "app": app_name,
                "event_id": envelope.id,
                "registry": envelope.registry,
                "seq": envelope.seq,
                "attempt": delivery.attempt,
                "compression": bool(self.config.get("compression", False)),
                **details,
            },
        )
        self.markers.append(str(path))
        return str(path)

    async def _write(self, path: anyio.Path, content: dict[str, Any]) -> None:
        record = {"plugin": self.name, "pid": os.getpid(), "written_at": time.time(), **content}
        await path.write_text(json.dumps(record, indent=2, default=str))
