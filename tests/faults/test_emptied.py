"""Redis restarted empty under a running registry and its workers (a server without
persistence, a failover to an empty replica, a FLUSHALL): each of them notices what its
namespace lost and puts its own part back at once; the first event after the loss is
delivered and acked."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, BusUnavailable, ConnectionInfo, Publisher
from rapid_objection.bus._publisher import PluginPolicy
from tests.e2e import CLI, REPO_ROOT, subprocess_env
from tests.topologies import Servers, TopologyError, free_ports

from .conftest import _unavailable
from .plugins import Recorder
from .tally import counts
from .workers import process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.redis_server]

PLUGIN = Recorder.NAME
REGISTRY = "emptied-registry"
LISTED = "listed-plugin"
"""Named in the registry's configuration, with no worker: only the registry keeps its group."""

RESTORED_WITHIN = 5.0
"""Seconds by which the namespace must be back (a heartbeat is 1 s)."""


@pytest.fixture
def servers(redis_server_path: str, tmp_path: Path) -> Iterator[tuple[Servers, int]]:
    """A redis-server without persistence: a restart comes back empty."""
    started, port = Servers(tmp_path / "redis"), free_ports(1)[0]
    try:
        started.start(port)
    except TopologyError as exc:
        _unavailable(f"redis-server lane: {exc}")
    try:
        yield started, port
    finally:
        started.close()


def registered(app: str) -> AppRegistered:
    return AppRegistered(connection=ConnectionInfo(dialect="sqlite"), config={"app": app})


def status(url: str, namespace: str) -> dict[str, Any]:
    """``rapid-objection status --json``, as an operator runs it."""
    command = [CLI, "status", "--json", "--bus-url", url, "--namespace", namespace]
    done = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def groups(bus: Bus) -> set[str]:
    return {group.name for group in await bus.redis.xinfo_groups(bus.keys.events)}


async def restored(url: str, namespace: str) -> dict[str, Any]:
    """The status report once the plugin's manifest is back (or the last one)."""
    report: dict[str, Any] = {}
    with anyio.move_on_after(RESTORED_WITHIN):
        while True:
            report = await anyio.to_thread.run_sync(status, url, namespace)
            plugins = {plugin["name"]: plugin for plugin in report["plugins"]}
            if plugins.get(PLUGIN, {}).get("version") and report["registries"]:
                return report
            await anyio.sleep(0.2)
    return report


class TestEmptiedServer:
    async def test_the_namespace_comes_back_and_the_first_event_is_delivered(
        self, servers: tuple[Servers, int], namespace: str, tmp_path: Path
    ) -> None:
        """After an empty restart the very first event is delivered to the required
        plugin and acked; its worker announces its manifest again (version, hooks,
        required), so registries that do not list it await it again; the registry writes
        its record back and recreates the group of the plugin its configuration lists;
        the worker says once, as a warning, what was lost; nothing from before runs again."""
        server, port = servers
        url = f"redis://127.0.0.1:{port}/0"
        policies = {LISTED: PluginPolicy()}
        async with Bus.connect(url, namespace) as bus:
            async with process_workers(bus, url, tmp_path) as workers:
                (name,) = await workers.start(Recorder, required=True, claim_idle=1.0)
                async with Publisher(bus, REGISTRY, policies=policies) as publisher:
                    before = await publisher.emit(registered("before"), app="before", timeout=5)
                    assert before.required == (PLUGIN,), "the worker's --required is not awaited"
                    assert before.outcomes[PLUGIN].status == "acked"

                    server.kill(port)
                    await anyio.to_thread.run_sync(server.restart, port)

                    with anyio.fail_after(10):
                        while True:
                            try:
                                after = await publisher.emit(
                                    registered("after"), app="after", required=[PLUGIN], timeout=5
                                )
                                break
                            except BusUnavailable:
                                await anyio.sleep(0.05)  # the registry's connection is back soon
                    with anyio.move_on_after(RESTORED_WITHIN):
                        while await groups(bus) != {PLUGIN, LISTED}:
                            await anyio.sleep(0.05)
                    report = await restored(url, namespace)
                    await publisher.refresh_directory()
                    awaited = publisher.required_for("app_registered")
                    restored_groups = await groups(bus)
                    calls = await counts(bus, "calls", PLUGIN)
            log = workers.processes[name].log()

        assert after.outcomes[PLUGIN].status == "acked", after.outcomes[PLUGIN]
        assert calls == {after.event_id: 1}, "an event from before the loss ran again"
        plugins = {plugin["name"]: plugin for plugin in report["plugins"]}
        assert PLUGIN in plugins, report
        manifest = plugins[PLUGIN]
        assert (manifest["version"], manifest["hooks"], manifest["required"]) == (
            "1.0.0",
            ["app_registered"],
            True,
        )
        assert [registry["info"]["id"] for registry in report["registries"]] == [REGISTRY]
        assert awaited == (PLUGIN,)
        assert restored_groups == {PLUGIN, LISTED}
        warnings = [line for line in log.splitlines() if "had lost" in line and name in line]
        assert len(warnings) == 1, log
        assert "consumer group" in warnings[0], warnings[0]
        assert "manifest" in warnings[0], warnings[0]
