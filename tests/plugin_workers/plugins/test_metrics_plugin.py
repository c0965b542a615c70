"""The metrics plugin: a Prometheus endpoint, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rapid_objection.bus import (
    Ack,
    AppRegistered,
    AppRollbackCompleted,
    AutoOperationsCompleted,
    ConnectionInfo,
    Failure,
    HealthCheck,
    OperationFailed,
    Payload,
    Publisher,
)
from rapid_objection.bus.testing import drained
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import PluginLoadError
from rapid_objection.plugin_workers.plugins.metrics import MetricsPlugin, event_status, parse_config
from rapid_objection.plugin_workers.testing import call_hook, envelope_for

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SAMPLE = Path(__file__).parents[2] / "core" / "sample_app"
CONNECTION = ConnectionInfo(dialect="sqlite")


def scrape(url: str) -> Samples:
    """Every sample of the endpoint, by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scraped(plugin: MetricsPlugin) -> Samples:
    return await anyio.to_thread.run_sync(scrape, plugin.get_status()["url"])


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
async def metrics(registry: AppRegistry) -> MetricsPlugin:
    """The metrics plugin inline in a registry, on a free port, refreshing every 0.1 s."""
    plugin: MetricsPlugin = await registry.load_plugin(
        MetricsPlugin, {"port": 0, "refresh_interval": 0.1}, required=True
    )
    await registry.refresh_plugins()
    return plugin


class TestEndpoint:
    async def test_port_zero_picks_a_free_port(self, metrics: MetricsPlugin) -> None:
        """``port = 0`` serves on a free port, which get_status() tells."""
        status = metrics.get_status()
        assert status["running"] is True
        assert isinstance(status["port"], int)
        assert status["port"] > 0
        assert status["url"] == f"http://127.0.0.1:{status['port']}/metrics"

    async def test_hooks_are_counted_by_type_app_and_status(
        self, registry: AppRegistry, metrics: MetricsPlugin, tmp_path: Path
    ) -> None:
        """Registering and unregistering an app counts each of its ten events once."""
        await registry.register_app(
            "shop",
            {
                "database": {"url": f"sqlite:///{tmp_path / 'shop.db'}"},
                "migrations": {"directory": str(SAMPLE / "migrations")},
            },
        )
        await registry.unregister_app("shop")
        samples = await scraped(metrics)
        for event_type in (
            "app_registration_started",
            "connection_created",
            "auto_operations_started",
            "auto_operations_completed",
            "app_registered",
            "app_unregistration_started",
            "app_rollback_started",
            "app_rollback_completed",
            "connection_shutdown",
            "app_unregistered",
        ):
            labels = {"type": event_type, "app": "shop", "status": "ok"}
            assert value(samples, "rapid_objection_hooks_total", **labels) == 1.0, event_type
            count = value(
                samples, "rapid_objection_delivery_latency_seconds_count", type=event_type
            )
            assert count == 1.0, event_type
        assert metrics.get_status()["handled"] == 10

    async def test_delivery_latency_is_the_time_since_publication(
        self, registry: AppRegistry, metrics: MetricsPlugin
    ) -> None:
        """An event published a minute ago lands in the histogram's top bucket only."""
        envelope = msgspec.structs.replace(
            envelope_for(AppRegistered(connection=CONNECTION), app="old"), time=time.time() - 61
        )
        await registry.bus.publish(envelope)
        await drained(registry.bus, "metrics")
        samples = await scraped(metrics)
        name = "rapid_objection_delivery_latency_seconds_bucket"
        assert value(samples, name, type="app_registered", le="60.0") == 0.0
        assert value(samples, name, type="app_registered", le="+Inf") == 1.0
        assert value(samples, "rapid_objection_delivery_latency_seconds_sum", type="app_registered")

    async def test_failures_per_plugin_consumer_and_kind(
        self, registry: AppRegistry, metrics: MetricsPlugin
    ) -> None:
        """The bus's failure counters appear within a refresh interval."""
        failure = Failure(
            event_id="E1",
            type="app_registered",
            app="shop",
            plugin="mailer",
            consumer="mailer-1",
            kind="timeout",
            error="slow",
            time=time.time(),
        )
        nobody = msgspec.structs.replace(failure, consumer=None, kind="no_consumer")
        await registry.bus.failures.record([failure, failure, nobody])
        name = "rapid_objection_plugin_failures_total"
        with anyio.fail_after(5):
            while True:
                samples = await scraped(metrics)
                if value(samples, name, plugin="mailer", consumer="mailer-1", kind="timeout"):
                    break
                await anyio.sleep(0.05)
        assert value(samples, name, plugin="mailer", consumer="mailer-1", kind="timeout") == 2.0
        assert value(samples, name, plugin="mailer", consumer="-", kind="no_consumer") == 1.0

    async def test_group_lag_and_pending(
        self, registry: AppRegistry, metrics: MetricsPlugin
    ) -> None:
        """A plugin's group that reads nothing shows its lag; consumers their liveness."""
        bus = registry.bus
        await bus.ensure_group("sleepy")
        async with Publisher(bus, "reg-lag") as publisher:
            for _ in range(3):
                await publisher.emit(AppRegistered(connection=CONNECTION), app="shop", timeout=0)
        await drained(bus, "metrics")
        await metrics.refresh()
        samples = await scraped(metrics)
        assert value(samples, "rapid_objection_group_lag", plugin="sleepy") == 3.0
        assert value(samples, "rapid_objection_group_pending", plugin="sleepy") == 0.0
        assert value(samples, "rapid_objection_group_lag", plugin="metrics") == 0.0
        consumer = f"{registry.id}-metrics"
        assert value(samples, "rapid_objection_consumer_alive", plugin="metrics", consumer=consumer)
        assert value(samples, "rapid_objection_stream_events") == 3.0
        assert value(samples, "rapid_objection_dead_letters") == 0.0

    async def test_the_registry_is_the_plugins_own(self, metrics: MetricsPlugin) -> None:
        """Nothing goes to prometheus_client's global registry."""
        from prometheus_client import REGISTRY

        assert REGISTRY.get_sample_value("rapid_objection_hooks_total") is None
        assert metrics.metrics is not REGISTRY

    async def test_shutdown_stops_the_server(self, registry: AppRegistry) -> None:
        """Unloading the plugin closes its port and stops its refresh thread."""
        plugin: MetricsPlugin = await registry.load_plugin(MetricsPlugin, {"port": 0})
        url = plugin.get_status()["url"]
        await registry.unload_plugin("metrics")
        assert plugin.get_status()["running"] is False
        with pytest.raises(urllib.error.URLError):
            await anyio.to_thread.run_sync(scrape, url)


class TestStatusLabel:
    @pytest.mark.parametrize(
        ("payload", "replay", "expected"),
        [
            pytest.param(AppRegistered(connection=CONNECTION), False, "ok", id="ok"),
            pytest.param(
                OperationFailed(operation="seeds", error_type="E", error_message="m"),
                False,
                "failed",
                id="operation-failed",
            ),
            pytest.param(AutoOperationsCompleted(success=False), False, "failed", id="auto-failed"),
            pytest.param(AppRollbackCompleted(success=True), False, "ok", id="rollback-ok"),
            pytest.param(HealthCheck(health={"status": "unhealthy"}), False, "unhealthy", id="hc"),
            pytest.param(HealthCheck(), False, "unknown", id="hc-without-status"),
            pytest.param(AppRegistered(connection=CONNECTION), True, "replay", id="replay"),
        ],
    )
    def test_status_is_what_the_event_reports(
        self, payload: Payload, replay: bool, expected: str
    ) -> None:
        """``status`` is the event's own outcome; replays are told apart."""
        envelope = msgspec.structs.replace(envelope_for(payload), replay=replay)
        assert event_status(envelope) == expected

    async def test_hooks_count_without_a_server(self) -> None:
        """Hooks only touch the plugin's own registry: call_hook needs no endpoint."""
        plugin = MetricsPlugin()
        ack = await call_hook(
            plugin, OperationFailed(operation="x", error_type="E", error_message="m")
        )
        assert isinstance(ack, Ack)
        assert ack.status == "ok"
        labels = {"type": "operation_failed", "app": "app", "status": "failed"}
        assert plugin.metrics.get_sample_value("rapid_objection_hooks_total", labels) == 1.0


class TestConfiguration:
    def test_defaults(self) -> None:
        """Port 9464 on 127.0.0.1, the bus read every 5 seconds."""
        settings = parse_config({})
        assert (settings.port, settings.host, settings.refresh_interval) == (9464, "127.0.0.1", 5.0)

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            pytest.param({"port": 70000}, "port", id="port-range"),
            pytest.param({"port": "http"}, "port", id="port-type"),
            pytest.param({"refresh_interval": 0}, "refresh_interval", id="interval"),
            pytest.param({"host": 5}, "host", id="host"),
        ],
    )
    async def test_invalid_configuration_is_refused(
        self, config: dict[str, Any], message: str
    ) -> None:
        """validate_configuration names what is wrong."""
        with pytest.raises(ValueError, match=message):
            await MetricsPlugin().validate_configuration(config)

    async def test_a_taken_port_fails_the_load(self, registry: AppRegistry) -> None:
        """A port in use fails the plugin's initialize, saying why."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(PluginLoadError, match="failed to initialize: OSError"):
                await registry.load_plugin(MetricsPlugin, {"port": port})
