"""Signed events and acks (issue 11): with a keyring, only a registry makes a hook run and
only a plugin answers for itself; on the embedded bus and on a real Redis."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    Ack,
    AppRegistered,
    Bus,
    ConnectionInfo,
    Custom,
    DeadLetters,
    Envelope,
    HealthCheck,
    Publisher,
    RedriveError,
    collect_status,
)
from rapid_objection.bus._constants import ACK_FIELD, EVENT_FIELD, SIGNATURE_FIELD
from rapid_objection.bus._contract import encode
from rapid_objection.bus._errors import KeyringError
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import purge
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import envelope_for, running_worker

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")


class Recorder(PluginInterface):
    """Counts its hook calls per event id; sleeps ``delay`` in each."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__(name, "1.0.0")
        self.delay = delay
        self.calls: Counter[str] = Counter()

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        self.calls[app_name] += 1
        await anyio.sleep(self.delay)
        return "seen"

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        self.calls[str(health_status.get("n", app_name))] += 1
        await anyio.sleep(self.delay)
        return {}


@dataclass
class Lane:
    url: str
    namespace: str
    ring: KeyFile

    @asynccontextmanager
    async def bus(self, keys: KeyFile | Keyring | None) -> AsyncIterator[Bus]:
        keyring = Keyring(keys) if isinstance(keys, KeyFile) else keys
        async with Bus.connect(self.url, self.namespace, keyring=keyring) as bus:
            yield bus


@pytest.fixture(params=["embedded", "redis"])
def lane(request: pytest.FixtureRequest) -> Iterator[Lane]:
    namespace = f"t-{secrets.token_hex(6)}"
    ring = KeyFile.generate(["alpha", "beta"])
    if request.param == "embedded":
        name = f"t-{secrets.token_hex(6)}"
        yield Lane(f"memory://{name}", namespace, ring)
        forget_memory_server(name)
    else:
        yield Lane(request.getfixturevalue("redis_url"), namespace, ring)


@pytest.fixture
async def registry_bus(lane: Lane) -> AsyncIterator[Bus]:
    async with lane.bus(lane.ring) as bus:
        try:
            yield bus
        finally:
            await purge(bus)


def forged_event(payload: Any, *, app: str = "shop") -> Envelope:
    """A well-formed envelope, as a registry would make it, but signed by nobody."""
    return envelope_for(payload, app=app, registry="reg")


async def settle(condition: Any, timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.02)


async def letters(bus: Bus) -> list[Any]:
    return [entry.letter for entry in await DeadLetters(bus).list()]


class TestEvents:
    async def test_forged_event_runs_no_hook_and_is_dead_lettered(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """An event XADDed by a client without keys never reaches a hook: it is
        dead-lettered as unauthenticated and counted against the consumer."""
        plugin = Recorder("alpha")
        async with (
            lane.bus(None) as intruder,
            lane.bus(lane.ring.export("alpha")) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1"),
        ):
            forged = forged_event(AppRegistered(connection=CONNECTION), app="victim")
            await intruder.redis.xadd(intruder.keys.events, {EVENT_FIELD: encode(forged)})

            async def dead_lettered() -> bool:
                return bool(await letters(registry_bus))

            await settle(dead_lettered)
        (letter,) = await letters(registry_bus)
        assert (letter.reason, letter.event_id, letter.plugin) == (
            "unauthenticated",
            forged.id,
            "alpha",
        )
        assert plugin.calls == Counter()
        counts = {(c.plugin, c.kind): c.count for c in await registry_bus.failures.counts()}
        assert counts == {("alpha", "unauthenticated"): 1}

    async def test_copy_of_a_genuine_entry_runs_nothing_again(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """A byte-for-byte copy of a genuine entry, added again, is acknowledged without
        running the hook a second time."""
        plugin = Recorder("alpha")
        async with (
            lane.bus(lane.ring.export("alpha")) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1"),
            Publisher(registry_bus, "reg", policies={"alpha": PluginPolicy(True)}) as publisher,
            lane.bus(None) as intruder,
        ):
            first = await publisher.emit(AppRegistered(connection=CONNECTION), app="shop")
            assert first.outcomes["alpha"].status == "acked"
            (entry,) = await intruder.redis.xrange(intruder.keys.events, "-", "+", 10)
            await intruder.redis.xadd(intruder.keys.events, entry[1])
            # The next event of the same app runs after the copy (per-app order).
            second = await publisher.emit(AppRegistered(connection=CONNECTION), app="shop")
            assert second.outcomes["alpha"].status == "acked"
        assert plugin.calls == Counter({"shop": 2})  # the two genuine events, once each
        assert await letters(registry_bus) == []


class TestAcks:
    async def forge_ack_when_published(
        self, intruder: Bus, status: str, plugin: str = "alpha"
    ) -> str:
        """Wait for the registry's event, then answer it in ``plugin``'s name, unsigned."""
        with anyio.fail_after(3):
            while not (entries := await intruder.redis.xrange(intruder.keys.events, "-", "+", 1)):
                await anyio.sleep(0.005)
        from rapid_objection.bus._contract import decode_envelope

        event_id = decode_envelope(entries[0][1][EVENT_FIELD]).id
        ack = Ack(
            event_id=event_id,
            plugin=plugin,
            consumer="alpha-1",
            status=status,  # type: ignore[arg-type]
            error="vetoed" if status == "error" else None,
            permanent=status == "error",
        )
        await intruder.redis.xadd(intruder.keys.acks("reg"), {ACK_FIELD: encode(ack)})
        return event_id

    @pytest.mark.parametrize("status", ["ok", "error"])
    async def test_forged_ack_counts_for_nothing(
        self, lane: Lane, registry_bus: Bus, status: str
    ) -> None:
        """A forged ack for a required plugin whose worker is slow does not answer for it
        (a forged ``ok`` does not satisfy it, a forged ``error`` vetoes nothing): the
        registry waits for the real ack and records the forgery as ``forged``."""
        plugin = Recorder("alpha", delay=0.5)
        async with (
            lane.bus(lane.ring.export("alpha")) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1"),
            Publisher(registry_bus, "reg", policies={"alpha": PluginPolicy(True)}) as publisher,
            lane.bus(None) as intruder,
            anyio.create_task_group() as group,
        ):
            group.start_soon(self.forge_ack_when_published, intruder, status)
            started = time.monotonic()
            result = await publisher.emit(AppRegistered(connection=CONNECTION), app="shop")
        outcome = result.outcomes["alpha"]
        assert (outcome.status, outcome.result) == ("acked", "seen")
        assert time.monotonic() - started >= 0.45  # it waited for the slow worker
        (failure,) = await registry_bus.failures.recent(kind="forged")
        assert (failure.plugin, failure.consumer, failure.event_id) == (
            "alpha",
            "alpha-1",
            result.event_id,
        )

    async def test_ack_signed_by_another_plugin_is_forged(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """A worker of beta, holding beta's export, cannot answer for alpha: while
        alpha's own (slow) worker is live, neither forgery settles the wait."""
        beta = Keyring(lane.ring.export("beta"))
        async with (
            lane.bus(lane.ring.export("alpha")) as alpha_bus,
            # A live consumer keeps the wait open (with none it is decided at once).
            running_worker(Recorder("alpha", delay=2.0), alpha_bus, consumer="alpha-1"),
            Publisher(registry_bus, "reg", policies={"alpha": PluginPolicy(True)}) as publisher,
            lane.bus(beta) as beta_bus,
        ):

            async def answer() -> None:
                event_id = await self.forge_ack_when_published(beta_bus, "ok")
                data = encode(Ack(event_id=event_id, plugin="alpha", consumer="b", status="ok"))
                fields = {ACK_FIELD: data, SIGNATURE_FIELD: beta.seal_acks("beta", data)}
                await beta_bus.redis.xadd(beta_bus.keys.acks("reg"), fields)

            async with anyio.create_task_group() as group:
                group.start_soon(answer)
                result = await publisher.emit(
                    AppRegistered(connection=CONNECTION), app="shop", timeout=0.5
                )
        assert result.outcomes["alpha"].status == "timed_out"
        kinds = Counter(f.kind for f in await registry_bus.failures.recent())
        assert kinds["forged"] == 2


class TestPluginKeys:
    async def test_plugin_cannot_make_another_plugin_run(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """A worker of alpha, with alpha's export, publishes a well-formed event signed
        with alpha's key: beta's worker never runs it (nor a custom event in beta's
        name), while alpha's own custom event reaches beta's handler."""
        beta = Recorder("beta")
        received: list[Any] = []
        async with (
            lane.bus(lane.ring.export("beta")) as beta_bus,
            running_worker(beta, beta_bus, consumer="beta-1") as worker,
            lane.bus(lane.ring.export("alpha")) as alpha_bus,
            Publisher(alpha_bus, "alpha@alpha-1") as alpha,
        ):
            worker.view.on("ping", received.append)
            await alpha.publish(AppRegistered(connection=CONNECTION), app="victim")
            await alpha.publish(Custom(name="ping", data="as-beta", source="beta"))
            await alpha.publish(Custom(name="ping", data="from-alpha", source="alpha"))

            async def handled() -> bool:
                return len(await letters(registry_bus)) == 2 and bool(received)

            await settle(handled)
        assert beta.calls == Counter()
        assert received == ["from-alpha"]
        reasons = sorted(letter.last_error for letter in await letters(registry_bus))
        assert all(reason.startswith("unauthenticated: plugin 'alpha'") for reason in reasons)


class TestRotation:
    async def test_rotation_under_load_then_retired_key_is_refused(
        self, lane: Lane, registry_bus: Bus, tmp_path: Path
    ) -> None:
        """Keys rotate while events flow (nothing is refused), and once the old keys are
        retired an event signed with the old registry key is refused."""
        ring_path, export_path = tmp_path / "ring.json", tmp_path / "alpha.json"
        lane.ring.save(ring_path)
        lane.ring.export("alpha").save(export_path)
        old = Keyring(lane.ring)
        plugin = Recorder("alpha")
        async with (
            lane.bus(Keyring.load(ring_path)) as registry,
            lane.bus(Keyring.load(export_path)) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1"),
            Publisher(registry, "reg", policies={"alpha": PluginPolicy(True)}) as publisher,
        ):
            statuses: Counter[str] = Counter()

            async def load(seconds: float) -> None:
                end = time.monotonic() + seconds
                n = 0
                while time.monotonic() < end:
                    n += 1
                    result = await publisher.emit(HealthCheck(health={"n": n}), app="shop")
                    statuses[result.outcomes["alpha"].status] += 1

            async with anyio.create_task_group() as group:
                group.start_soon(load, 2.6)
                await anyio.sleep(0.3)
                rotated = KeyFile.load(ring_path).rotated()
                rotated.save(ring_path)  # the registry signs with the new keys
                await anyio.sleep(1.1)
                rotated.export("alpha").save(export_path)  # then the worker has them
            assert statuses["acked"] > 10
            assert set(statuses) == {"acked"}
            rotated.retired().save(ring_path)
            rotated.retired().export("alpha").save(export_path)
            await anyio.sleep(1.1)
            after = await publisher.emit(HealthCheck(health={"n": "after"}), app="shop")
            assert after.outcomes["alpha"].status == "acked"
            stale = forged_event(HealthCheck(health={"n": "stale"}))
            data = encode(stale)
            await registry.redis.xadd(
                registry.keys.events, {EVENT_FIELD: data, SIGNATURE_FIELD: old.seal_event(data)}
            )

            async def refused() -> bool:
                return bool(await letters(registry_bus))

            await settle(refused)
        assert "stale" not in plugin.calls
        (letter,) = await letters(registry_bus)
        assert letter.reason == "unauthenticated"
        assert await registry_bus.failures.recent(kind="forged") == []


class TestStatus:
    async def test_status_says_whether_the_bus_is_authenticated(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """``status`` says the bus is unauthenticated while a live registry has no
        keyring, and counts the unauthenticated events once every registry signs."""
        async with lane.bus(None) as plain, Publisher(plain, "plain"):
            assert not (await collect_status(registry_bus)).signed
        plugin = Recorder("alpha")
        async with (
            Publisher(registry_bus, "reg"),
            lane.bus(lane.ring.export("alpha")) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1"),
        ):
            forged = forged_event(HealthCheck(health={}))
            await worker_bus.redis.xadd(worker_bus.keys.events, {EVENT_FIELD: encode(forged)})

            async def counted() -> bool:
                return (await collect_status(registry_bus)).unauthenticated == 1

            await settle(counted)
            report = await collect_status(registry_bus)
        assert report.signed
        assert report.forged == 0


class TestMisconfiguration:
    async def test_a_consumer_of_a_plugin_without_keys_fails_at_once(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """A worker whose keyring has no key of its plugin fails when it starts, naming the
        plugin and how to add its keys, instead of refusing every event."""
        with pytest.raises(KeyringError, match=r"no key of plugin 'gamma'.*--plugin gamma"):
            async with running_worker(Recorder("gamma"), registry_bus, consumer="g-1"):
                pass


class Failing(Recorder):
    """Fails every health check until ``fixed``."""

    fixed = False

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        self.calls[app_name] += 1
        if not self.fixed:
            raise RuntimeError("not yet")
        return {}


class TestRedrive:
    async def test_genuine_letters_redrive_and_unauthenticated_ones_do_not(
        self, lane: Lane, registry_bus: Bus
    ) -> None:
        """A genuine event a plugin gave up on is re-driven (signed by the ring) and runs;
        an unauthenticated one is refused: re-driving would launder it."""
        plugin = Failing("alpha")
        async with (
            lane.bus(lane.ring.export("alpha")) as worker_bus,
            running_worker(plugin, worker_bus, consumer="alpha-1", max_deliveries=1),
            Publisher(registry_bus, "reg") as publisher,
            lane.bus(None) as intruder,
        ):
            await publisher.publish(HealthCheck(health={}), app="shop")
            forged = forged_event(HealthCheck(health={}), app="other")
            await intruder.redis.xadd(intruder.keys.events, {EVENT_FIELD: encode(forged)})

            async def two_letters() -> bool:
                return len(await letters(registry_bus)) == 2

            await settle(two_letters)
            entries = {e.letter.app: e.id for e in await DeadLetters(registry_bus).list()}
            with pytest.raises(RedriveError, match="does not verify"):
                await DeadLetters(registry_bus).redrive(entries["other"])
            plugin.fixed = True
            await DeadLetters(registry_bus).redrive(entries["shop"])

            async def ran_again() -> bool:
                return plugin.calls["shop"] == 2

            await settle(ran_again)
        assert "other" not in plugin.calls
