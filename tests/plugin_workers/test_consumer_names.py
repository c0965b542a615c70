"""One consumer name, one live process: a worker refuses a name a live process uses."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from rapid_objection.bus import Bus, WorkerInfo
from rapid_objection.plugin_workers import ConsumerTaken, PluginInterface
from rapid_objection.plugin_workers._worker import Worker
from rapid_objection.plugin_workers.testing import running_worker
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio


class Named(PluginInterface):
    def __init__(self) -> None:
        super().__init__("named", "1.0.0")

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        return None


def unused_pid() -> int:
    """A pid no process of this host has."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


async def holder(bus: Bus, host: str, pid: int) -> None:
    """A heartbeat of consumer ``c1`` of ``named`` from ``host``/``pid``, just now."""
    now = time.time()
    info = WorkerInfo(plugin="named", consumer="c1", host=host, pid=pid, started=now, seen=now)
    await bus.directory.beat_worker(info)


class TestConsumerNames:
    async def test_a_name_a_live_process_elsewhere_uses_is_refused(self, bus: Bus) -> None:
        """ConsumerTaken names the holder's host and pid; nothing of the plugin ran."""
        await holder(bus, "other-host", 4242)
        plugin = Named()
        with pytest.raises(ConsumerTaken) as caught:
            await Worker(plugin, bus, consumer="c1").run()
        assert (caught.value.host, caught.value.pid) == ("other-host", 4242)
        assert "already in use by process 4242 on other-host" in str(caught.value)
        assert plugin.registry is None  # never initialized

    async def test_a_stale_record_of_this_host_does_not_block_a_restart(self, bus: Bus) -> None:
        """A record of a process of this host that no longer exists is stale: a worker
        restarted at once under the same name starts."""
        await holder(bus, socket.gethostname(), unused_pid())
        async with running_worker(Named(), bus, consumer="c1") as worker:
            assert worker.consumer_name == "c1"

    async def test_the_worker_command_says_so_in_one_line(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """``rapid-objection worker --consumer c1`` exits 1 with one line naming the holder."""
        await holder(redis_bus, "other-host", 4242)
        code, _, err = await run_cli(
            "worker",
            "tests.plugin_workers.test_consumer_names:Named",
            "--consumer",
            "c1",
            "--bus-url",
            redis_url,
            "--namespace",
            redis_bus.namespace,
        )
        assert code == 1, err
        assert len(err.strip().splitlines()) == 1, err
        assert "already in use by process 4242 on other-host" in err
