"""A registry restarting under the same id, on both lanes: it continues reading its ack
stream where it stopped, and cleans up after registries that are gone."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Ack, AppRegistered, Bus, ConnectionInfo, Publisher, RegistryInfo
from rapid_objection.bus import _publisher as publisher_module
from rapid_objection.bus._constants import ACK_FIELD
from rapid_objection.bus._contract import decode_ack_entry, encode
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")
REGISTRY = "reg-r"


class Echo(PluginInterface):
    """Answers every app_registered with the app's name."""

    def __init__(self) -> None:
        super().__init__("echo", "1.0.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        return app_name


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry heartbeats (which save the ack position) every 20 ms instead of every second."""
    monkeypatch.setattr(publisher_module, "HEARTBEAT_INTERVAL", 0.02)


async def _acks(bus: Bus, registry: str) -> list[tuple[str, Ack]]:
    entries = await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=1000)
    return [(entry_id, ack) for entry_id, fields in entries for ack in decode_ack_entry(fields)]


async def _acked(bus: Bus, registry: str, event_id: str) -> str:
    """Wait until ``event_id``'s ack is in ``registry``'s ack stream; its entry id."""
    with anyio.fail_after(1.5):
        while True:
            for entry_id, ack in await _acks(bus, registry):
                if ack.event_id == event_id:
                    return entry_id
            await anyio.sleep(0.02)


async def _saved_position(bus: Bus, registry: str) -> str | None:
    saved = await bus.redis.hget(bus.keys.ack_positions, registry)
    return None if saved is None else saved.decode()


async def _unclaimed(publisher: Publisher, event_id: str) -> Ack:
    with anyio.fail_after(1.5):
        while True:
            for ack in publisher.unclaimed_acks:
                if ack.event_id == event_id:
                    return ack
            await anyio.sleep(0.02)


async def _first_life(bus: Bus) -> str:
    """A registry ``REGISTRY`` that read the ack of one event, saved its position and
    stopped; returns that event's id."""
    async with Publisher(bus, REGISTRY) as publisher:
        envelope, _ = await publisher.publish(AppRegistered(connection=SQLITE), app="first")
        position = await _acked(bus, REGISTRY, envelope.id)
        await _unclaimed(publisher, envelope.id)
        with anyio.fail_after(1):
            while await _saved_position(bus, REGISTRY) != position:
                await anyio.sleep(0.02)
    return envelope.id


class TestRestart:
    async def test_an_ack_written_while_the_registry_was_down_is_read_on_restart(
        self, bus: Bus
    ) -> None:
        """An ack that arrived while no publisher of the id ran is read by the next one
        (from the saved position, not skipped) and kept in ``unclaimed_acks``."""
        async with running_worker(Echo(), bus):
            await _first_life(bus)
            offline = Publisher(bus, REGISTRY)  # never entered: no reader, no heartbeat
            envelope, _ = await offline.publish(AppRegistered(connection=SQLITE), app="down")
            await _acked(bus, REGISTRY, envelope.id)
            async with Publisher(bus, REGISTRY) as restarted:
                ack = await _unclaimed(restarted, envelope.id)
        assert (ack.plugin, ack.status, ack.result) == ("echo", "ok", "down")
        assert restarted.late_acks >= 1

    async def test_acks_read_before_the_stop_are_not_read_again(self, bus: Bus) -> None:
        """A restarted registry continues after the position its previous life saved:
        acks that life already read are not reported again."""
        async with running_worker(Echo(), bus):
            first = await _first_life(bus)
            offline = Publisher(bus, REGISTRY)
            envelope, _ = await offline.publish(AppRegistered(connection=SQLITE), app="down")
            await _acked(bus, REGISTRY, envelope.id)
            async with Publisher(bus, REGISTRY) as restarted:
                await _unclaimed(restarted, envelope.id)
                await anyio.sleep(0.1)  # a few heartbeats: the position is saved again
                seen = [ack.event_id for ack in restarted.unclaimed_acks]
                position = await _saved_position(bus, REGISTRY)
        assert seen == [envelope.id], f"the first life's {first} came back"
        assert position == (await _acks(bus, REGISTRY))[-1][0]

    async def test_a_new_registry_id_starts_at_the_end_of_its_ack_stream(self, bus: Bus) -> None:
        """A registry id that never saved a position starts after the acks already in
        its stream: it reports none of them."""
        stale = Ack(event_id="01OLD", plugin="echo", consumer="c", status="ok")
        await bus.redis.xadd(bus.keys.acks("reg-new"), {ACK_FIELD: encode(stale)})
        async with Publisher(bus, "reg-new") as publisher:
            await anyio.sleep(0.1)
            assert list(publisher.unclaimed_acks) == []


class TestGoneRegistries:
    @pytest.mark.parametrize(
        ("age", "removed"), [(10.0, True), (0.0, False)], ids=["gone-long", "recent"]
    )
    async def test_a_registry_gone_for_long_is_cleaned_up_by_the_next_publisher(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch, age: float, removed: bool
    ) -> None:
        """A registry whose last heartbeat is older than REGISTRY_GONE_AFTER loses its ack
        stream, its saved position and its directory entry when a Publisher starts; a
        recent one keeps them."""
        monkeypatch.setattr(publisher_module, "REGISTRY_GONE_AFTER", 5.0)
        now = time.time()
        info = RegistryInfo(id="reg-old", host="h", pid=1, started=now - age, seen=now - age)
        await bus.directory.beat_registry(info)
        ack = Ack(event_id="01E", plugin="echo", consumer="c", status="ok")
        position = await bus.redis.xadd(bus.keys.acks("reg-old"), {ACK_FIELD: encode(ack)})
        await bus.redis.hset(bus.keys.ack_positions, "reg-old", position.encode())
        async with Publisher(bus, "reg-next"):
            registries = {r.id for r in await bus.directory.registries()}
            assert ("reg-old" not in registries) is removed
            assert (await bus.redis.xlen(bus.keys.acks("reg-old")) == 0) is removed
            assert (await _saved_position(bus, "reg-old") is None) is removed
            assert "reg-next" in registries


class TestLeavingForGood:
    async def test_a_generated_registry_leaves_its_ack_stream_expiring(self, bus: Bus) -> None:
        """A registry with a generated id lets its ack stream expire soon after it leaves
        (never a stream without a TTL that a late ack re-creates)."""
        from rapid_objection.bus._constants import ACK_STREAM_GONE_TTL_MS

        async with Publisher(bus) as publisher:
            key = bus.keys.acks(publisher.registry_id)
            await bus.redis.xadd(key, {b"a": b"late"})
        ttl = await bus.redis._client.pttl(key)
        assert 0 < ttl <= ACK_STREAM_GONE_TTL_MS
