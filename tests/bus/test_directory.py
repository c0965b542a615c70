"""Directory: plugin manifests, worker and registry heartbeats, app ownership, on both lanes."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    HOOK_METHODS,
    Bus,
    ConnectionInfo,
    Manifest,
    Publisher,
    RegistryInfo,
    WorkerInfo,
)
from rapid_objection.bus._constants import ALIVE_AFTER_HEARTBEATS, HEARTBEAT_INTERVAL
from rapid_objection.bus._directory import is_alive
from rapid_objection.plugin_workers import PluginInterface, implemented_hooks
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio


class Silent(PluginInterface):
    """Implements no hook at all."""

    def __init__(self) -> None:
        super().__init__("silent", "0.1.0")


class Registrar(PluginInterface):
    """Implements two hooks."""

    def __init__(self) -> None:
        super().__init__("registrar", "2.0.1")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        pass

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        pass


class Everything(PluginInterface):
    """Implements all twelve hooks (defined below the class body)."""

    def __init__(self) -> None:
        super().__init__("everything", "12.0.0")


async def _noop(self: object, *args: object) -> None:
    pass


for _method in HOOK_METHODS.values():
    setattr(Everything, _method, _noop)


class TestManifests:
    @pytest.mark.parametrize(
        "plugin",
        [
            pytest.param(Silent(), id="no-hooks"),
            pytest.param(Registrar(), id="two-hooks"),
            pytest.param(Everything(), id="all-hooks"),
        ],
    )
    async def test_worker_announces_the_hooks_it_implements(
        self, bus: Bus, plugin: PluginInterface
    ) -> None:
        """A running worker's manifest lists exactly the hooks its plugin implements."""
        async with running_worker(plugin, bus, required=True, timeout=2.5):
            manifests = await bus.directory.manifests()
        manifest = manifests[plugin.name]
        assert set(manifest.hooks) == set(implemented_hooks(plugin))
        assert len(manifest.hooks) == len(implemented_hooks(plugin))
        assert (manifest.version, manifest.required, manifest.timeout) == (
            plugin.version,
            True,
            2.5,
        )

    async def test_all_twelve_hooks_are_listed(self, bus: Bus) -> None:
        """A plugin implementing every hook announces all twelve event types."""
        async with running_worker(Everything(), bus):
            manifest = (await bus.directory.manifests())["everything"]
        assert len(manifest.hooks) == 12

    async def test_announce_replaces_the_previous_manifest(self, bus: Bus) -> None:
        """Announcing a plugin again replaces its manifest; other plugins' stay."""
        await bus.directory.announce(Manifest(plugin="audit", version="1.0.0"))
        await bus.directory.announce(Manifest(plugin="backup", version="1.0.0"))
        await bus.directory.announce(
            Manifest(plugin="audit", version="1.1.0", hooks=("app_registered",))
        )
        manifests = await bus.directory.manifests()
        assert manifests["audit"] == Manifest(
            plugin="audit", version="1.1.0", hooks=("app_registered",)
        )
        assert set(manifests) == {"audit", "backup"}


class TestWorkers:
    async def test_running_worker_heartbeat_describes_it(self, bus: Bus) -> None:
        """A running worker's heartbeat names its plugin, consumer, host, pid and concurrency."""
        before = time.time()
        async with running_worker(Registrar(), bus, consumer="registrar-1", concurrency=3):
            [info] = await bus.directory.workers("registrar")
        assert (info.plugin, info.consumer) == ("registrar", "registrar-1")
        assert (info.host, info.pid, info.concurrency) == (socket.gethostname(), os.getpid(), 3)
        assert before - 1 <= info.started <= info.seen <= time.time()
        assert is_alive(info.seen)

    async def test_workers_are_filtered_by_plugin_and_sorted(self, bus: Bus) -> None:
        """workers(plugin) lists that plugin's workers only, sorted by consumer."""
        now = time.time()
        for plugin, consumer in [("b", "b-2"), ("a", "a-1"), ("b", "b-1")]:
            await bus.directory.beat_worker(
                WorkerInfo(plugin=plugin, consumer=consumer, host="h", pid=1, started=now, seen=now)
            )
        assert [(w.plugin, w.consumer) for w in await bus.directory.workers()] == [
            ("a", "a-1"),
            ("b", "b-1"),
            ("b", "b-2"),
        ]
        assert [w.consumer for w in await bus.directory.workers("b")] == ["b-1", "b-2"]

    async def test_a_beat_replaces_the_previous_one(self, bus: Bus) -> None:
        """A worker's next heartbeat replaces its previous entry instead of adding one."""
        info = WorkerInfo(plugin="a", consumer="a-1", host="h", pid=1, started=1.0, seen=1.0)
        await bus.directory.beat_worker(info)
        await bus.directory.beat_worker(
            WorkerInfo(
                plugin="a", consumer="a-1", host="h", pid=1, started=1.0, seen=2.0, handled=7
            )
        )
        [seen] = await bus.directory.workers()
        assert (seen.seen, seen.handled) == (2.0, 7)

    async def test_forget_worker_removes_its_heartbeat(self, bus: Bus) -> None:
        """forget_worker removes exactly that worker's heartbeat entry."""
        for consumer in ("a-1", "a-2"):
            await bus.directory.beat_worker(
                WorkerInfo(plugin="a", consumer=consumer, host="h", pid=1, started=1.0, seen=1.0)
            )
        await bus.directory.forget_worker("a", "a-1")
        assert [w.consumer for w in await bus.directory.workers()] == ["a-2"]


class TestIsAlive:
    @pytest.mark.parametrize(
        ("age", "alive"),
        [
            pytest.param(0.0, True, id="just-now"),
            pytest.param(HEARTBEAT_INTERVAL * ALIVE_AFTER_HEARTBEATS - 0.1, True, id="almost-late"),
            pytest.param(HEARTBEAT_INTERVAL * ALIVE_AFTER_HEARTBEATS, False, id="missed-five"),
            pytest.param(3600.0, False, id="an-hour-ago"),
        ],
    )
    def test_alive_while_the_last_heartbeat_is_recent(self, age: float, alive: bool) -> None:
        """A sender is alive while its last heartbeat is younger than five intervals."""
        assert is_alive(1_000.0, now=1_000.0 + age) is alive


class TestRegistries:
    async def test_publisher_is_listed_while_open_and_forgotten_after(self, bus: Bus) -> None:
        """An open Publisher heartbeats its registry; closing it removes the entry."""
        async with Publisher(bus, "reg-a"):
            [info] = await bus.directory.registries()
            assert (info.id, info.pid) == ("reg-a", os.getpid())
            assert is_alive(info.seen)
        assert await bus.directory.registries() == []

    async def test_registries_are_sorted_and_forgettable(self, bus: Bus) -> None:
        """registries() lists every beating registry by id; forget_registry drops one."""
        for registry in ("reg-b", "reg-a"):
            await bus.directory.beat_registry(
                RegistryInfo(id=registry, host="h", pid=1, started=1.0, seen=1.0, apps=("shop",))
            )
        assert [r.id for r in await bus.directory.registries()] == ["reg-a", "reg-b"]
        await bus.directory.forget_registry("reg-a")
        assert [r.id for r in await bus.directory.registries()] == ["reg-b"]


class TestApps:
    async def test_first_claim_wins(self, bus: Bus) -> None:
        """The first registry to claim an app owns it; a second claim returns its lease."""
        assert (await bus.directory.claim_app("shop", "reg-a")).owner == "reg-a"
        assert (await bus.directory.claim_app("shop", "reg-b")).owner == "reg-a"
        assert (await bus.directory.claim_app("shop", "reg-a")).owner == "reg-a"
        assert await bus.directory.apps() == {"shop": "reg-a"}

    async def test_an_owner_that_stops_renewing_loses_its_apps(self, bus: Bus) -> None:
        """A lease that ran out (its owner crashed or paused) goes to the next claimant."""
        assert (await bus.directory.claim_app("shop", "reg-gone", ttl_ms=50)).owner == "reg-gone"
        await anyio.sleep(0.1)
        assert (await bus.directory.claim_app("shop", "reg-b")).owner == "reg-b"
        assert await bus.directory.apps() == {"shop": "reg-b"}

    async def test_release_frees_the_app_for_another_registry(self, bus: Bus) -> None:
        """After release_app another registry can claim the app."""
        await bus.directory.claim_app("shop", "reg-a")
        await bus.directory.claim_app("blog", "reg-a")
        await bus.directory.release_app("shop", "reg-a")
        assert (await bus.directory.claim_app("shop", "reg-b")).owner == "reg-b"
        assert await bus.directory.apps() == {"shop": "reg-b", "blog": "reg-a"}

    async def test_a_registry_cannot_release_another_ones_app(self, bus: Bus) -> None:
        """release_app by a registry that does not own the app leaves the claim."""
        await bus.directory.claim_app("shop", "reg-a")
        await bus.directory.release_app("shop", "reg-b")
        assert await bus.directory.apps() == {"shop": "reg-a"}
        assert (await bus.directory.claim_app("shop", "reg-b")).owner == "reg-a"

    async def test_releasing_an_unowned_app_is_harmless(self, bus: Bus) -> None:
        """release_app of an app nobody owns changes nothing."""
        await bus.directory.release_app("ghost", "reg-a")
        assert await bus.directory.apps() == {}
