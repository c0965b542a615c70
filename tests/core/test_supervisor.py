"""Process mode under failure: a worker that exits while starting, one that crash-loops."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._retry import Backoff
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry

pytestmark = [pytest.mark.anyio, pytest.mark.redis_server]

MONITORING = "rapid_objection.plugin_workers.examples.monitoring:MonitoringPlugin"
QUITTER = "tests.core.demo_plugins:QuitterPlugin"


@pytest.fixture
async def cleanup(redis_url: str, namespace: str) -> AsyncIterator[list[AppRegistry]]:
    """Registries to shut down, and the namespace to purge, at the end."""
    made: list[AppRegistry] = []
    yield made
    with anyio.CancelScope(shield=True):
        for registry in made:
            await registry.shutdown()
        async with Bus.connect(redis_url, namespace) as bus:
            await purge(bus)


def process_config(redis_url: str, namespace: str, module: str, **table: Any) -> dict[str, Any]:
    return {
        "registry": {"id": f"registry-{namespace}"},
        "bus": {"url": redis_url, "namespace": namespace},
        "plugin_manager": {"load_timeout": 10, "shutdown_timeout": 5},
        "plugins": {"supervised": {"module": module, "mode": "process", **table}},
    }


class TestAWorkerThatExitsWhileStarting:
    async def test_the_plugin_fails_with_the_exit_status_not_a_timeout(
        self, redis_url: str, namespace: str, cleanup: list[AppRegistry]
    ) -> None:
        """A worker process that exits inside initialize fails its plugin at once with
        the exit status, instead of after twice the load timeout as "Timeout"."""
        registry = AppRegistry(process_config(redis_url, namespace, QUITTER, config={"status": 7}))
        cleanup.append(registry)
        started = time.monotonic()
        result = await registry.initialize()
        took = time.monotonic() - started
        (failed,) = result.failed_plugins
        assert failed.phase == "initialize"
        assert "exited with status 7 before it announced itself" in failed.error
        assert took < 10

    @pytest.mark.parametrize(
        "case",
        [
            ("tests.core.no_such_module:Plugin", "Failed to import plugin module"),
            ("json:JSONDecoder", "Plugin must implement initialize() method"),
        ],
        ids=["module-missing", "not-a-plugin"],
    )
    async def test_a_module_that_does_not_load_says_why(
        self, redis_url: str, namespace: str, cleanup: list[AppRegistry], case: tuple[str, str]
    ) -> None:
        """A worker process whose plugin module does not import (or is no plugin) tells
        its registry why before it exits: the plugin fails with that reason, as inline
        mode says it, not only "exited with status 1"."""
        module, said = case
        registry = AppRegistry(process_config(redis_url, namespace, module))
        cleanup.append(registry)
        result = await registry.initialize()
        (failed,) = result.failed_plugins
        assert said in failed.error
        assert failed.phase == "import"


class TestACrashLoopingWorker:
    async def test_stop_does_not_wait_out_the_backoff_and_status_says_why(
        self, redis_url: str, namespace: str, cleanup: list[AppRegistry]
    ) -> None:
        """While a killed worker waits for its restart, status shows the plugin as
        restarting, with the restart count and how the worker ended; shutdown then
        ends the wait at once instead of sleeping out the backoff."""
        registry = AppRegistry(process_config(redis_url, namespace, MONITORING))
        cleanup.append(registry)
        result = await registry.initialize()
        assert result.loaded_plugins == ["supervised"]
        loaded = registry.plugins.loaded("supervised")
        assert loaded is not None
        supervisor = loaded.supervisor
        assert supervisor is not None
        supervisor.backoff = Backoff(first=20.0, cap=20.0)  # a long pause before restarting
        (pid,) = supervisor.pids
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            while supervisor.restarts < 1:
                await anyio.sleep(0.05)
        status = (await registry.get_status())["plugins"]["plugins"]["supervised"]
        assert status["status"] == "restarting"
        assert status["processes"] == {
            "pids": [],
            "workers": 1,
            "restarts": 1,
            "last_exit_code": -signal.SIGKILL,
            "last_exit_reason": "killed by SIGKILL",
        }
        started = time.monotonic()
        shutdown = await registry.shutdown()
        assert time.monotonic() - started < 3.0
        assert shutdown.success, shutdown.errors
