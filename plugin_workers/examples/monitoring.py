"""The seed's ``MonitoringPlugin``: custom health metrics and operation-failure tracking.

``on_health_check`` returns ``query_latency`` (the mean ``SELECT 1`` time of the app's
recent health checks, ms), ``connection_pool_usage`` (checked-out share of the pool)
and ``error_rate`` (the app's operation failures per minute over ``error_window``
seconds); the registry merges the dict into the app's health, under
``health["plugins"]["monitoring-plugin"]``. A failure that pushes the rate above
``error_threshold`` raises an alert: a log line and a ``monitoring-alert`` custom event
that any other plugin can ``registry.on(...)``.

The seed collects per-app figures on a ``setInterval`` timer. A plugin has no task of its
own to run a timer in (structured concurrency: no loose tasks), so the interval is checked on each
hook instead, which is when there is something new to collect.

Configuration::

    interval = 30.0          # seconds between two collections of every app's figures
    error_threshold = 5.0    # failures per minute above which an alert is raised
    error_window = 60.0      # seconds of failures the rate looks at
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from typing import Any

from rapid_objection.plugin_workers import PluginInterface, RegistryView, RemoteError

log = logging.getLogger("rapid_objection.examples.monitoring")

LATENCY_SAMPLES = 20
"""Health checks per app whose response time the average latency is taken over."""


class MonitoringPlugin(PluginInterface):
    """Adds query latency, pool usage and error rate to each app's health."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("monitoring-plugin", "1.0.0")
        self.config = config or {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.monitored: dict[str, Any] = {}
        """App -> the connection it was registered with."""
        self._latencies: defaultdict[str, deque[float]] = defaultdict(
            lambda: deque(maxlen=LATENCY_SAMPLES)
        )
        self._pool_usage: dict[str, float] = {}
        self._next_collection = 0.0

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        self.registry = registry
        # Merge constructor config with initialize config.
        self.config = {**self.config, **config}
        self.setup_metrics()

    def get_status(self) -> dict[str, Any]:
        return {
            **super().get_status(),
            "apps": sorted(self.monitored),
            "errors": len(self.errors),
            "alerts": len(self.alerts),
        }

    # -- hooks ----------------------------------------------------------------------------

    async def on_app_registered(
        self, app_name: str, connection: Any, config: dict[str, Any]
    ) -> None:
        # Start monitoring this app.
        self.start_app_monitoring(app_name, connection)
        await self.collect_metrics_when_due()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> dict[str, Any]:
        # Enhance the health check with custom metrics.
        self.record_health(app_name, health_status)
        custom_metrics = {
            "query_latency": self.get_average_query_latency(app_name),
            "connection_pool_usage": self.get_connection_pool_usage(app_name),
            "error_rate": self.get_error_rate(app_name),
        }
        # Store the enhanced metrics.
        self.metrics[f"{app_name}-health"] = {
            **health_status,
            **custom_metrics,
            "timestamp": time.time(),
        }
        await self.collect_metrics_when_due()
        return custom_metrics

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> None:
        # Track operation failures for monitoring.
        error_metric = {
            "app_name": app_name,
            "operation": operation,
            "error": error.message,
            "error_type": error.type,
            "context": context,
            "timestamp": time.time(),
        }
        self.record_error(error_metric)
        # Send an alert when the error rate is high.
        if self.get_error_rate(app_name) > float(self.config.get("error_threshold", 5.0)):
            await self.send_alert(f"High error rate detected for {app_name}", error_metric)

    # -- metrics --------------------------------------------------------------------------

    def setup_metrics(self) -> None:
        self._next_collection = time.monotonic()

    async def collect_metrics_when_due(self) -> None:
        if time.monotonic() >= self._next_collection:
            self._next_collection = time.monotonic() + float(self.config.get("interval", 30.0))
            await self.collect_metrics()

    async def collect_metrics(self) -> None:
        """Per-app figures of every app the registries on the bus have."""
        assert self.registry is not None, "initialize() runs before any hook"
        apps = await self.registry.get_all_apps()
        for app, owner in apps.items():
            connection = self.monitored.get(app)
            self.metrics[app] = {
                "registry": owner,
                "connections": getattr(connection, "pool_checked_out", None) or 0,
                "timestamp": time.time(),
            }

    def start_app_monitoring(self, app_name: str, connection: Any) -> None:
        self.monitored[app_name] = connection

    def record_health(self, app_name: str, health_status: dict[str, Any]) -> None:
        latency = health_status.get("response_time_ms")
        if isinstance(latency, int | float):
            self._latencies[app_name].append(float(latency))
        pool = health_status.get("pool") or {}
        size = pool.get("size") or 0
        self._pool_usage[app_name] = pool.get("checked_out", 0) / size if size else 0.0

    def record_error(self, error_metric: dict[str, Any]) -> None:
        self.errors.append(error_metric)

    def get_average_query_latency(self, app_name: str) -> float:
        samples = self._latencies.get(app_name)
        return round(sum(samples) / len(samples), 3) if samples else 0.0

    def get_connection_pool_usage(self, app_name: str) -> float:
        return self._pool_usage.get(app_name, 0.0)

    def get_error_rate(self, app_name: str) -> float:
        """Operation failures of ``app_name`` per minute, over the last ``error_window``."""
        window = float(self.config.get("error_window", 60.0))
        since = time.time() - window
        count = sum(1 for e in self.errors if e["app_name"] == app_name and e["timestamp"] >= since)
        return count * 60.0 / window

    async def send_alert(self, message: str, error_metric: dict[str, Any]) -> None:
        alert = {"message": message, **error_metric}
        self.alerts.append(alert)
        log.warning("%s: %s failed: %s", message, error_metric["operation"], error_metric["error"])
        if self.registry is not None:
            await self.registry.emit("monitoring-alert", alert)
