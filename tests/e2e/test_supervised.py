"""Supervised worker processes: never outlive their registry, never show its secrets.

A ``rapid-objection run`` registry with a ``mode = "process"`` plugin on a Redis of the
test's own that wants a password. The workers get the bus URL by environment (``ps``
shows every process's argv to every local user) and stop on their own when the
registry dies, however it died: here by SIGKILL, which gives it no chance to stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._directory import is_alive
from tests.core.test_cli_run import READY, processes_with, running
from tests.topologies import Servers, TopologyError, free_ports

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

PASSWORD = "s3cret-bus-pw"  # noqa: S105 - the test server's, made up here
WORKERS = 2


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[str]:
    """The URL of a redis-server of this test's own that requires a password."""
    servers = Servers(tmp_path / "redis")
    try:
        [port] = free_ports(1)
        servers.start(port, "--requirepass", PASSWORD)
    except TopologyError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"password lane: {exc}")
        pytest.skip(f"password lane: {exc}")
    try:
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        servers.close()


def registry_toml(tmp_path: Path, url: str, namespace: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(
        f'[bus]\nurl = "{url}"\nnamespace = "{namespace}"\nack_timeout = 5.0\n\n'
        "[plugins.monitoring]\n"
        'module = "tests.core.demo_plugins:MonitoringPlugin"\n'
        f'mode = "process"\nworkers = {WORKERS}\n'
    )
    return path


def command_line(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    return b""


async def live_workers(url: str, namespace: str) -> list[int]:
    async with Bus.connect(url, namespace) as bus:
        return sorted(w.pid for w in await bus.directory.workers() if is_alive(w.seen))


async def test_workers_hide_the_password_and_die_with_their_registry(
    tmp_path: Path, guarded_redis: str, namespace: str
) -> None:
    """No worker's argv holds the bus password; SIGKILL of the registry stops all its
    workers within 5 s; a restarted registry runs exactly ``workers`` of them again."""
    config = str(registry_toml(tmp_path, guarded_redis, namespace))
    try:
        async with running(tmp_path, config) as run:
            await run.printed(READY)
            pids = processes_with("worker", "--namespace", namespace)
            assert len(pids) == WORKERS
            for pid in [*pids, run.process.pid]:
                assert PASSWORD.encode() not in command_line(pid)
            run.signal(signal.SIGKILL)
            with anyio.fail_after(5):
                while processes_with("worker", "--namespace", namespace):
                    await anyio.sleep(0.1)
        async with running(tmp_path, config) as run:
            await run.printed(READY)
            again = processes_with("worker", "--namespace", namespace)
            assert len(again) == WORKERS
            assert not set(again) & set(pids)
            with anyio.fail_after(10):
                while await live_workers(guarded_redis, namespace) != sorted(again):
                    await anyio.sleep(0.2)
            run.signal(signal.SIGTERM)
            assert await run.exit_code() == 0
    finally:
        for pid in processes_with("worker", "--namespace", namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
