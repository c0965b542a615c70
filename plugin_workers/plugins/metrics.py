"""The metrics plugin: a Prometheus endpoint for the hooks, their latency and the bus.

Every lifecycle event reaches every plugin's group, so this plugin sees them all and
counts them. The figures only the bus knows (failures per plugin, consumer and kind;
each group's lag and pending count; dead letters) are read with ``collect_status``
every ``refresh_interval`` seconds and exposed as last read. Everything lives in a
``CollectorRegistry`` of the plugin's own, served on ``http://host:port/metrics``. The
metrics and every configuration key are described in ``docs/plugins.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
import msgspec

from rapid_objection._extras import missing_extra
from rapid_objection.bus import (
    AppRollbackCompleted,
    AutoOperationsCompleted,
    BusError,
    Envelope,
    HealthCheck,
    OperationFailed,
    StatusReport,
    collect_status,
)
from rapid_objection.bus._failures import NO_CONSUMER
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery

try:  # the [metrics] extra
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client import Counter as PromCounter
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import start_http_server
    from prometheus_client.registry import Collector
except ImportError as exc:
    extra = missing_extra(exc, "the metrics plugin")
    if extra is None:
        raise
    raise extra from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from rapid_objection.bus import ConnectionInfo
    from rapid_objection.plugin_workers import RemoteError

log = logging.getLogger("rapid_objection.plugins.metrics")

VERSION: Final = "1.0.0"
PREFIX: Final = "rapid_objection"
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Seconds; a hook is normally delivered within milliseconds, a backlog takes longer."""


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The metrics plugin's ``config`` table; every key has a default."""

    port: int = 9464
    """0 picks a free port; ``get_status()["port"]`` tells which."""
    host: str = "127.0.0.1"
    refresh_interval: float = 5.0
    """Seconds between two reads of the bus's failures, lag and pending counts."""


def parse_config(config: Mapping[str, Any]) -> MetricsConfig:
    """The metrics configuration, checked; raises ``ValueError`` naming the bad key."""
    try:
        parsed = msgspec.convert(dict(config), MetricsConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"metrics configuration: {exc}") from None
    if not 0 <= parsed.port <= 65535:
        raise ValueError(f"metrics configuration: port {parsed.port} is not 0-65535")
    if not parsed.refresh_interval > 0:
        raise ValueError("metrics configuration: refresh_interval must be positive")
    return parsed


def event_status(envelope: Envelope) -> str:
    """The ``status`` label of an event: what the event itself reports.

    ``replay`` for a replayed event; ``failed`` for operation_failed and for
    auto_operations_completed / app_rollback_completed that did not succeed; a health
    check's own status (``healthy``, ``unhealthy``); otherwise ``ok``.
    """
    payload = envelope.payload
    if envelope.replay:
        return "replay"
    if isinstance(payload, OperationFailed):
        return "failed"
    if isinstance(payload, AutoOperationsCompleted | AppRollbackCompleted):
        return "ok" if payload.success else "failed"
    if isinstance(payload, HealthCheck):
        return str(payload.health.get("status") or "unknown")
    return "ok"


class BusCollector(Collector):
    """Exposes the last ``StatusReport`` read from the bus (none until the first read)."""

    def __init__(self) -> None:
        self.report: StatusReport | None = None

    def collect(self) -> Iterator[Metric]:
        report = self.report  # one reference: a refresh swaps it whole
        if report is None:
            return
        failures = CounterMetricFamily(
            f"{PREFIX}_plugin_failures",
            "Failures recorded on the bus, by plugin, consumer and kind.",
            labels=("plugin", "consumer", "kind"),
        )
        for count in report.failure_counts:
            failures.add_metric(
                (count.plugin, count.consumer or NO_CONSUMER, count.kind), count.count
            )
        lag = GaugeMetricFamily(
            f"{PREFIX}_group_lag", "Events not yet read by the plugin's group.", labels=("plugin",)
        )
        pending = GaugeMetricFamily(
            f"{PREFIX}_group_pending",
            "Events read by the plugin's group and not yet acknowledged.",
            labels=("plugin",),
        )
        consumer_pending = GaugeMetricFamily(
            f"{PREFIX}_consumer_pending",
            "Events a consumer holds unacknowledged.",
            labels=("plugin", "consumer"),
        )
        alive = GaugeMetricFamily(
            f"{PREFIX}_consumer_alive",
            "1 while the consumer's heartbeat is fresh, else 0.",
            labels=("plugin", "consumer"),
        )
        for plugin in report.plugins:
            if plugin.group:
                pending.add_metric((plugin.name,), plugin.pending)
                if plugin.lag is not None:
                    lag.add_metric((plugin.name,), plugin.lag)
            for consumer in plugin.consumers:
                consumer_pending.add_metric((plugin.name, consumer.name), consumer.pending)
                alive.add_metric((plugin.name, consumer.name), 1 if consumer.alive else 0)
        yield failures
        yield lag
        yield pending
        yield consumer_pending
        yield alive
        yield GaugeMetricFamily(
            f"{PREFIX}_stream_events", "Events in the event stream.", value=report.events
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_dead_letters",
            "Entries in the dead-letter stream.",
            value=report.dead_letters,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_status_refreshed_seconds",
            "When the bus figures above were read (Unix time).",
            value=report.time,
        )


class MetricsPlugin(PluginInterface):
    """Serves Prometheus metrics of the hooks it sees and of the bus's status."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("metrics", VERSION)
        self.config = dict(config or {})
        self.settings: MetricsConfig | None = None
        self.metrics = CollectorRegistry(auto_describe=True)
        self.hook_counter = PromCounter(
            f"{PREFIX}_hooks",
            "Events handled by the metrics plugin, by type, app and the status they report.",
            ("type", "app", "status"),
            registry=self.metrics,
        )
        self.latency = Histogram(
            f"{PREFIX}_delivery_latency_seconds",
            "Seconds from an event's publication to its hook in the metrics plugin.",
            ("type",),
            buckets=LATENCY_BUCKETS,
            registry=self.metrics,
        )
        self.bus_figures = BusCollector()
        self.metrics.register(self.bus_figures)
        self.port: int | None = None
        self.handled: Counter[str] = Counter()
        self.refreshes = 0
        self.refresh_errors = 0
        self.last_refresh_error: str | None = None
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        parse_config({**self.config, **config})
        return True

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        settings = self.settings = parse_config(self.config)
        await self.refresh()
        server, thread = start_http_server(settings.port, settings.host, registry=self.metrics)
        self._server, self._server_thread = server, thread
        self.port = int(server.server_address[1])
        # Read the bus periodically: a thread that sleeps, then runs ``refresh`` on this
        # event loop (the bus's connection belongs to it).
        self._stop.clear()
        self._refresher = threading.Thread(
            target=self._refresh_periodically,
            args=(anyio.lowlevel.current_token(), settings.refresh_interval),
            name=f"{self.name}-refresh",
            daemon=True,
        )
        self._refresher.start()

    async def shutdown(self) -> None:
        self._stop.set()
        refresher, self._refresher = self._refresher, None
        server, self._server = self._server, None
        thread, self._server_thread = self._server_thread, None
        if refresher is not None:
            # In a thread: a refresh in progress needs this event loop to finish.
            await anyio.to_thread.run_sync(refresher.join)
        if server is not None:
            await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)

    def get_status(self) -> dict[str, Any]:
        settings = self.settings or MetricsConfig()
        report = self.bus_figures.report
        return {
            **super().get_status(),
            "running": self._server is not None,
            "host": settings.host,
            "port": self.port,
            "url": f"http://{settings.host}:{self.port}/metrics" if self.port else None,
            "refresh_interval": settings.refresh_interval,
            "handled": sum(self.handled.values()),
            "by_type": dict(sorted(self.handled.items())),
            "refreshes": self.refreshes,
            "refresh_errors": self.refresh_errors,
            "last_refresh": report.time if report is not None else None,
            "last_refresh_error": self.last_refresh_error,
        }

    async def refresh(self) -> None:
        """Read the bus's failures, lag and pending counts now (also done periodically)."""
        if self.registry is None:
            return
        interval = self.settings.refresh_interval if self.settings is not None else 0.0
        try:
            # A bus that does not answer must not pile refreshes up behind each other.
            with anyio.fail_after(max(5.0, interval)):
                report = await collect_status(self.registry.bus, recent=0)
        except (BusError, TimeoutError) as exc:
            self.refresh_errors += 1
            self.last_refresh_error = f"{type(exc).__name__}: {exc}"
            log.warning("metrics could not read the bus: %s", self.last_refresh_error)
            return
        self.bus_figures.report = report
        self.refreshes += 1

    def _refresh_periodically(self, token: anyio.lowlevel.EventLoopToken, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                anyio.from_thread.run(self.refresh, token=token)
            except anyio.RunFinishedError:
                return
            except Exception:  # the next round may succeed; the thread must live on
                self.refresh_errors += 1
                log.exception("metrics refresh failed")

    def _observe(self) -> None:
        envelope = current_delivery().envelope
        self.hook_counter.labels(envelope.type, envelope.app, event_status(envelope)).inc()
        if not envelope.replay:
            self.latency.labels(envelope.type).observe(max(0.0, time.time() - envelope.time))
        self.handled[envelope.type] += 1

    # -- the twelve hooks: each counts its event ----------------------------------------

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        self._observe()

    async def on_connection_created(self, app_name: str, connection: ConnectionInfo) -> None:
        self._observe()

    async def on_auto_operations_started(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        self._observe()

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> None:
        self._observe()

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        self._observe()

    async def on_app_unregistration_started(self, app_name: str, options: dict[str, Any]) -> None:
        self._observe()

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> None:
        self._observe()

    async def on_app_rollback_completed(self, app_name: str, result: AppRollbackCompleted) -> None:
        self._observe()

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> None:
        self._observe()

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> None:
        self._observe()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> None:
        self._observe()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        self._observe()
