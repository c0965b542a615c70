"""An orphaned consumer group (its plugin removed, or never started) holds retention back
only for a grace period, shows in status, and ``groups drop NAME`` removes it."""

from __future__ import annotations

import sys
import time

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher, Retention, WorkerInfo
from rapid_objection.bus._retention import drop_group, orphaned_groups, trim_events
from rapid_objection.bus._status import collect_status
from tests.e2e import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")


async def publish(bus: Bus, count: int) -> None:
    publisher = Publisher(bus, "reg-orphan")
    for _ in range(count):
        await publisher.publish(AppRegistered(connection=SQLITE), app="a")


async def stream_length(bus: Bus) -> int:
    return await bus.redis.xlen(bus.keys.events)


async def beat(bus: Bus, plugin: str) -> None:
    now = time.time()
    await bus.directory.beat_worker(
        WorkerInfo(plugin=plugin, consumer=f"{plugin}-1", host="h", pid=1, started=now, seen=now)
    )


class TestOrphanedGroups:
    async def test_within_the_grace_period_an_orphan_still_holds_retention(self, bus: Bus) -> None:
        """A group nobody consumes keeps its unread entries while the grace period runs."""
        await bus.ensure_group("retired")
        await publish(bus, 5)
        removed = await trim_events(bus, Retention(max_len=0, orphan_grace=3600))
        assert removed == 0
        assert await stream_length(bus) == 5

    async def test_past_the_grace_period_an_orphan_no_longer_holds_retention(
        self, bus: Bus
    ) -> None:
        """Once a group has had no live consumer for the grace period, retention trims
        past its position, and status shows since when it is orphaned."""
        await bus.ensure_group("retired")
        await publish(bus, 5)
        await orphaned_groups(bus)  # first seen orphaned now
        await anyio.sleep(0.05)
        removed = await trim_events(bus, Retention(max_len=0, orphan_grace=0.01))
        assert removed == 5
        [plugin] = (await collect_status(bus)).plugins
        assert plugin.name == "retired"
        assert plugin.orphaned_since is not None

    async def test_a_group_with_a_live_consumer_is_never_an_orphan(self, bus: Bus) -> None:
        """A live worker's group keeps what it has not read, however old the grace mark."""
        await bus.ensure_group("alive")
        await bus.redis.hset(bus.keys.orphans, "alive", repr(time.time() - 10**6).encode())
        await beat(bus, "alive")
        await publish(bus, 3)
        assert await trim_events(bus, Retention(max_len=0, orphan_grace=0.01)) == 0
        assert await orphaned_groups(bus) == {}

    async def test_drop_removes_the_group(self, bus: Bus) -> None:
        """Dropping a group removes it (and its pending entries) from the stream."""
        await bus.ensure_group("retired")
        assert await drop_group(bus, "retired")
        assert await bus.redis.xinfo_groups(bus.keys.events) == []
        assert not await drop_group(bus, "retired")


class TestGroupsDropCommand:
    async def test_groups_drop_removes_a_group(self, redis_url: str, namespace: str) -> None:
        """``rapid-objection groups drop NAME`` removes the group and says so."""
        async with Bus.connect(redis_url, namespace) as bus:
            await bus.ensure_group("retired")
            code, out, err = await groups(redis_url, namespace, "drop", "retired")
            assert (code, err) == (0, "")
            assert "retired" in out
            assert await bus.redis.xinfo_groups(bus.keys.events) == []
            await bus.redis.delete(*bus.keys.all_fixed())

    async def test_a_group_with_a_live_worker_is_kept(self, redis_url: str, namespace: str) -> None:
        """Without ``--force`` a group whose plugin has a live worker is not dropped."""
        async with Bus.connect(redis_url, namespace) as bus:
            await bus.ensure_group("busy")
            await beat(bus, "busy")
            code, _, err = await groups(redis_url, namespace, "drop", "busy")
            assert code == 1
            assert "live worker" in err
            assert [g.name for g in await bus.redis.xinfo_groups(bus.keys.events)] == ["busy"]
            await bus.redis.delete(*bus.keys.all_fixed())


async def groups(url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "rapid_objection.core._cli", "groups", args[0], "--bus-url", url]
    argv += ["--namespace", namespace, *args[1:]]
    with anyio.fail_after(15):
        done = await anyio.run_process(argv, check=False, cwd=REPO_ROOT, env=subprocess_env())
    return done.returncode, done.stdout.decode(), done.stderr.decode()
