"""Two sample plugins for the CLI tests: an audit log and a monitor.

They are ordinary ``PluginInterface`` subclasses (they could run as worker processes
with ``rapid-objection worker tests.core.demo_plugins:AuditLogPlugin``); they run
inline in the tests of `rapid-objection run`, on the embedded bus.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rapid_objection.bus import AppRollbackCompleted, AutoOperationsCompleted, ConnectionInfo
from rapid_objection.plugin_workers import PluginInterface, RegistryView, RemoteError


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One hook as the audit log saw it."""

    number: int
    event: str
    app: str
    time: float
    detail: dict[str, Any]


class AuditLogPlugin(PluginInterface):
    """Records every hook it sees, in order, and answers with the record's number.

    A stand-in for the bundled audit plugin (which writes to a SQL table): it keeps the
    records in memory and shows, in its results, what reached it, e.g. the app's
    configuration with its secrets already masked by the bus.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("audit-log", "1.0.0")
        self.config = dict(config or {})
        self.records: list[AuditRecord] = []
        self.running = False

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        self.running = True

    async def shutdown(self) -> None:
        self.running = False

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "running": self.running, "records": len(self.records)}

    def events(self, app: str | None = None) -> list[str]:
        """The event types recorded (for one app), in the order they arrived."""
        return [r.event for r in self.records if app is None or r.app == app]

    def _record(self, event: str, app: str, **detail: Any) -> dict[str, Any]:
        record = AuditRecord(len(self.records) + 1, event, app, time.time(), detail)
        self.records.append(record)
        return {"record": record.number, **detail}

    # -- registration ---------------------------------------------------------------------

    async def on_app_registration_started(
        self, app_name: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        database = config.get("database", {})
        backup = config.get("backup", {})
        return self._record(
            "app_registration_started",
            app_name,
            database=database.get("url"),
            backup=backup.get("target"),
        )

    async def on_connection_created(
        self, app_name: str, connection: ConnectionInfo
    ) -> dict[str, Any]:
        return self._record(
            "connection_created", app_name, url=connection.url, refs=connection.reference_count
        )

    async def on_auto_operations_started(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        enabled = [part for part in ("migrations", "seeds", "models") if part in config]
        return self._record("auto_operations_started", app_name, operations=enabled)

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> dict[str, Any]:
        done = {op.operation: len(op.items) for op in result.operations}
        return self._record("auto_operations_completed", app_name, items=done)

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return self._record("app_registered", app_name, dialect=connection.dialect)

    # -- unregistration -------------------------------------------------------------------

    async def on_app_unregistration_started(
        self, app_name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        return self._record("app_unregistration_started", app_name, options=options)

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return self._record("app_rollback_started", app_name)

    async def on_app_rollback_completed(
        self, app_name: str, result: AppRollbackCompleted
    ) -> dict[str, Any]:
        steps = [step.operation for step in result.steps]
        return self._record("app_rollback_completed", app_name, steps=steps)

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return self._record(
            "connection_shutdown", app_name, last_reference=options.get("last_reference")
        )

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> dict[str, Any]:
        return self._record("app_unregistered", app_name)

    # -- errors and monitoring ------------------------------------------------------------

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> dict[str, Any]:
        return self._record("operation_failed", app_name, operation=operation, error=error.type)

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> dict[str, Any]:
        record = self._record("health_check", app_name, status=health_status.get("status"))
        # What is returned is merged into the app's health: say how long the trail is.
        return {"audit_records": record["record"]}


class MonitoringPlugin(PluginInterface):
    """Times app registrations and adds metrics to every health check.

    The seed's MonitoringPlugin: ``on_health_check`` returns custom metrics that the
    registry merges into the app's health. It implements only the hooks it needs; the
    others are acknowledged as skipped by its worker without calling anything.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("monitoring", "1.0.0")
        self.config = dict(config or {})
        self.registration_ms: dict[str, float] = {}
        self.health_checks: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def get_status(self) -> dict[str, Any]:
        return {
            **super().get_status(),
            "apps": sorted(self.registration_ms),
            "health_checks": sum(self.health_checks.values()),
        }

    async def on_app_registration_started(
        self, app_name: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        self._started[app_name] = time.perf_counter()
        return {"timer": "started"}

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        started = self._started.pop(app_name, None)
        if started is None:  # a worker that joined mid-registration has no start time
            return {"registration_ms": None}
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        self.registration_ms[app_name] = elapsed
        return {"registration_ms": elapsed}

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> dict[str, Any]:
        self.failures[app_name] = self.failures.get(app_name, 0) + 1
        return {"failures": self.failures[app_name]}

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> dict[str, Any]:
        checks = self.health_checks[app_name] = self.health_checks.get(app_name, 0) + 1
        pool = health_status.get("pool", {})
        size, used = pool.get("size") or 0, pool.get("checked_out") or 0
        return {
            "registration_ms": self.registration_ms.get(app_name),
            "pool_usage": round(used / size, 2) if size else None,
            "error_rate": round(self.failures.get(app_name, 0) / checks, 2),
            "health_checks": checks,
        }

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> dict[str, Any]:
        self.registration_ms.pop(app_name, None)
        self.health_checks.pop(app_name, None)
        self.failures.pop(app_name, None)
        return {"tracked_apps": len(self.registration_ms)}


class QuitterPlugin(PluginInterface):
    """Ends its worker process inside initialize with ``config["status"]`` (default 7),
    as a plugin that calls ``sys.exit()`` there would, without any cleanup."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("quitter", "1.0.0")
        self.config = config or {}

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        os._exit(int(config.get("status", 7)))
