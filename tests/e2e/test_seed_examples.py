"""The seed's plugin examples as worker processes of a registry on the real Redis.

Backup and plugin communication run in ``mode = "process"`` (the registry starts and
supervises their workers); monitoring runs in ``mode = "external"`` with a worker this
test starts itself with ``rapid-objection worker``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from rapid_objection.bus import Bus, Custom
from rapid_objection.core import AppRegistry, MigrationFailed
from rapid_objection.plugin_workers.examples.communication import READY, SAW_APP

from . import CLI, REPO_ROOT, subprocess_env

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

BACKUP = "rapid_objection.plugin_workers.examples.backup:BackupPlugin"
MONITORING = "rapid_objection.plugin_workers.examples.monitoring:MonitoringPlugin"
PLUGIN_A = "rapid_objection.plugin_workers.examples.communication:PluginA"
PLUGIN_B = "rapid_objection.plugin_workers.examples.communication:PluginB"

FAILING_UPGRADE = (
    "def upgrade(op):\n    raise RuntimeError('no way')\n\n\ndef downgrade(op):\n    pass\n"
)
FAILING_DOWNGRADE = (
    "import sqlalchemy as sa\n\n\n"
    "def upgrade(op):\n"
    "    op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))\n\n\n"
    "def downgrade(op):\n    raise RuntimeError('this migration cannot be undone')\n"
)


def registry_config(
    redis_url: str, namespace: str, plugins: dict[str, Any], **manager: float
) -> dict[str, Any]:
    return {
        "registry": {"id": f"registry-{namespace}"},
        "bus": {"url": redis_url, "namespace": namespace, "ack_timeout": 10},
        "plugin_manager": {"load_timeout": 10, **manager},
        "plugins": plugins,
    }


def sqlite_app(tmp_path: Path, name: str, migration: str | None = None) -> dict[str, Any]:
    """An app on an SQLite file of its own, with one migration file when given."""
    config: dict[str, Any] = {"database": {"url": f"sqlite:///{tmp_path / (name + '.db')}"}}
    if migration is not None:
        directory = tmp_path / f"{name}-migrations"
        directory.mkdir()
        (directory / "001_first.py").write_text(migration)
        config["migrations"] = {"directory": str(directory)}
    return config


def markers(directory: Path) -> list[dict[str, Any]]:
    """The backup markers of one app, in the order of their file names."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def supervised_pids(registry: AppRegistry, plugin: str) -> list[int]:
    loaded = registry.plugins.loaded(plugin)
    supervisor = loaded.supervisor if loaded is not None else None
    assert supervisor is not None, f"{plugin} is not supervised"
    return supervisor.pids


class TestBackupPlugin:
    async def test_each_hook_leaves_its_marker_in_order(
        self, redis_bus: Bus, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """A required backup plugin in a supervised process writes a marker per hook, in
        the order the registry published them, an emergency backup when a registration
        fails, and its shutdown marker when the registry stops it."""
        backups = tmp_path / "backups"
        plugins = {
            "backup-plugin": {
                "module": BACKUP,
                "mode": "process",
                "required": True,
                "config": {"directory": str(backups), "compression": True},
            }
        }
        registry = AppRegistry(registry_config(redis_url, namespace, plugins))
        async with registry:
            (worker_pid,) = supervised_pids(registry, "backup-plugin")
            await registry.register_app("shop", sqlite_app(tmp_path, "shop"))
            await registry.unregister_app("shop")
            with pytest.raises(MigrationFailed):
                await registry.register_app(
                    "broken", sqlite_app(tmp_path, "broken", FAILING_UPGRADE)
                )
            assert not (backups / "shutdown.json").exists()

        shop = markers(backups / "shop")
        assert [marker["hook"] for marker in shop] == [
            "app_registration_started",
            "app_registered",
            "app_unregistered",
        ]
        assert shop[0]["database"] == f"sqlite:///{tmp_path / 'shop.db'}"
        assert (shop[1]["dialect"], shop[1]["database"]) == ("sqlite", str(tmp_path / "shop.db"))
        assert shop[2]["options"] == {"rollback": True, "force": False}
        broken = markers(backups / "broken")
        assert [marker["hook"] for marker in broken] == [
            "app_registration_started",
            "operation_failed",
        ]
        emergency = broken[1]
        assert emergency["operation"] == "register_app"
        assert "no way" in emergency["error"]
        assert emergency["context"] == {"stage": "migrations", "rolled_back": []}
        for marker in shop + broken:
            assert marker["pid"] == worker_pid != os.getpid()
            assert marker["registry"] == registry.id
            assert marker["compression"] is True
        assert json.loads((backups / "shutdown.json").read_text())["pid"] == worker_pid

    async def test_a_process_plugin_with_an_invalid_configuration_fails_with_its_reason(
        self, redis_bus: Bus, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """Without ``directory`` the backup plugin's validate_configuration refuses it, and
        initialize() reports that reason at once, as it does for an inline plugin, instead
        of a load timeout."""
        plugins = {"backup-plugin": {"module": BACKUP, "mode": "process", "config": {}}}
        load_timeout = 2.0
        registry = AppRegistry(
            registry_config(redis_url, namespace, plugins, load_timeout=load_timeout)
        )
        started = anyio.current_time()
        try:
            result = await registry.initialize()
            elapsed = anyio.current_time() - started
        finally:
            await registry.shutdown()
        (failed,) = result.failed_plugins
        assert failed.name == "backup-plugin"
        assert "Backup directory is required" in failed.error, failed.error
        assert failed.phase == "validate"
        assert elapsed < load_timeout


@pytest.fixture
async def monitoring_worker(
    redis_bus: Bus, redis_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[Path, Process]]:
    """A registry configuration with the monitoring plugin in external mode, and one
    ``rapid-objection worker`` process of it, started from that same file."""
    config_file = tmp_path / "registry.toml"
    config_file.write_text(
        f'[registry]\nid = "registry-{namespace}"\n\n'
        f'[bus]\nurl = "{redis_url}"\nnamespace = "{namespace}"\nack_timeout = 10\n\n'
        "[plugin_manager]\nload_timeout = 15\n\n"
        f'[plugins.monitoring-plugin]\nmodule = "{MONITORING}"\nmode = "external"\n'
        "required = true\n\n"
        "[plugins.monitoring-plugin.config]\nerror_threshold = 0.5\ninterval = 0\n"
    )
    command = [CLI, "worker", MONITORING, "--config", str(config_file)]
    command += ["--consumer", f"monitoring-{namespace}"]
    with (tmp_path / "monitoring-worker.log").open("wb") as log:
        process = await anyio.open_process(
            command, stdin=None, stdout=log, stderr=log, cwd=REPO_ROOT, env=subprocess_env()
        )
        try:
            yield config_file, process
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


class TestMonitoringPlugin:
    async def test_metrics_are_merged_into_the_health_and_failures_counted(
        self,
        redis_bus: Bus,
        namespace: str,
        tmp_path: Path,
        monitoring_worker: tuple[Path, Process],
    ) -> None:
        """An external monitoring worker adds latency, pool usage and error rate to the
        app's health; a failed rollback raises the error rate and an alert event; the
        registry's shutdown leaves the external worker running."""
        config_file, process = monitoring_worker
        consumer = f"monitoring-{namespace}"
        async with AppRegistry(config_file) as registry:
            status = await registry.plugins.get_status()
            entry = status["plugins"]["monitoring-plugin"]
            worker_log = (tmp_path / "monitoring-worker.log").read_text(errors="replace")
            assert (entry["status"], entry["mode"]) == ("loaded", "external"), worker_log
            assert [c["name"] for c in entry["consumers"]] == [consumer]
            (info,) = await redis_bus.directory.workers("monitoring-plugin")
            assert (info.consumer, info.pid) == (consumer, process.pid)

            await registry.register_app("shop", sqlite_app(tmp_path, "shop", FAILING_DOWNGRADE))
            first = await registry.check_health("shop")
            assert first["status"] == "healthy"
            assert first["plugins"]["monitoring-plugin"] == {
                "query_latency": first["response_time_ms"],
                "connection_pool_usage": 0.0,
                "error_rate": 0.0,
            }

            result = await registry.unregister_app("shop")
            assert not result.success
            second = await registry.check_health("shop")
            metrics = second["plugins"]["monitoring-plugin"]
            assert metrics["error_rate"] == 1.0
            average = (first["response_time_ms"] + second["response_time_ms"]) / 2
            assert metrics["query_latency"] == pytest.approx(average, abs=0.001)
            assert "plugin_errors" not in second

            page = await redis_bus.history.page(types=["custom"])
            customs = [entry.envelope.payload for entry in page.entries]
            (alert,) = [
                custom
                for custom in customs
                if isinstance(custom, Custom) and custom.name == "monitoring-alert"
            ]
            assert alert.source == "monitoring-plugin"
            assert alert.data["message"] == "High error rate detected for shop"
            assert alert.data["operation"] == "unregister_app"
            assert "cannot be undone" in alert.data["error"]

        assert process.returncode is None, "an external worker is not the registry's to stop"


class TestPluginCommunication:
    async def test_b_receives_what_a_emits_in_another_process(
        self, redis_bus: Bus, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """Plugin A's worker emits plugin-a-ready when it starts and plugin-a-saw-app per
        registered app; plugin B's worker, another process, receives both."""
        inbox = tmp_path / "inbox.jsonl"
        plugins = {
            "plugin-a": {"module": PLUGIN_A, "mode": "process"},
            "plugin-b": {"module": PLUGIN_B, "mode": "process", "config": {"inbox": str(inbox)}},
        }
        async with AppRegistry(registry_config(redis_url, namespace, plugins)) as registry:
            (a_pid,) = supervised_pids(registry, "plugin-a")
            (b_pid,) = supervised_pids(registry, "plugin-b")
            await registry.register_app("shop", sqlite_app(tmp_path, "shop"))
            received: dict[str, dict[str, Any]] = {}
            with anyio.fail_after(10):
                while set(received) != {READY, SAW_APP}:
                    await anyio.sleep(0.05)
                    if inbox.exists():
                        lines = inbox.read_text().splitlines()
                        received = {entry["event"]: entry for entry in map(json.loads, lines)}

        assert len({a_pid, b_pid, os.getpid()}) == 3
        assert received[READY]["data"] == {"data": "hello", "pid": a_pid}
        assert received[SAW_APP]["data"] == {"app": "shop", "pid": a_pid}
        for entry in received.values():
            assert entry["source"] == "plugin-a"
            assert entry["received_by"] == b_pid
