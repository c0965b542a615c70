"""Delivery guarantees under faults: a killed worker, a Redis outage, poison entries, a
slow hook and a hook that always fails. Counted from the server side, reported as one
line per scenario."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import msgspec
import pytest
from msgspec.structs import replace

from rapid_objection.bus import (
    SCHEMA_VERSIONS,
    AppRegistered,
    Bus,
    BusUnavailable,
    ConnectionInfo,
    Publisher,
    WaitResult,
)
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import encode
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._heads import decode_head
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus.testing import drained

from .conftest import Lane, Report
from .plugins import Raiser, Recorder
from .server import RedisServer
from .tally import EVERYTHING, ack_records, counts, event_ids, tally
from .workers import process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REGISTRY = "fault-registry"
APPS = 20
BATCH = 100
"""Events published concurrently at a time."""
DRAIN_TIMEOUT = 60.0


def registered(**config: Any) -> AppRegistered:
    return AppRegistered(connection=ConnectionInfo(dialect="sqlite"), config=config)


async def publish(
    publisher: Publisher, count: int, *, sleep: float = 0.0, batch: int = BATCH
) -> list[str]:
    """Publish ``count`` events (hooks sleep ``sleep``) in concurrent batches, spread over
    ``APPS`` apps; returns their event ids."""
    ids: list[str] = []

    async def one(number: int) -> None:
        envelope, _ = await publisher.publish(registered(sleep=sleep), app=f"app-{number % APPS}")
        ids.append(envelope.id)

    for first in range(0, count, batch):
        async with anyio.create_task_group() as group:
            for number in range(first, min(count, first + batch)):
                group.start_soon(one, number)
    return ids


async def emit_all(
    publisher: Publisher, count: int, plugin: str, *, timeout: float, **config: Any
) -> list[WaitResult]:
    """Emit ``count`` events at once, one app each, awaiting ``plugin``'s acks."""
    results: list[WaitResult] = []

    async def one(number: int) -> None:
        event = registered(**config)
        results.append(
            await publisher.emit(event, app=f"app-{number}", required=[plugin], timeout=timeout)
        )

    with anyio.fail_after(timeout + 5):
        async with anyio.create_task_group() as group:
            for number in range(count):
                group.start_soon(one, number)
    return results


async def until_handled(bus: Bus, plugin: str, count: int, *, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while len(await counts(bus, "handled", plugin)) < count:
            await anyio.sleep(0.01)


async def holding(bus: Bus, plugin: str, consumer: str, *, timeout: float = 10.0) -> None:
    """Wait until XPENDING shows ``consumer`` holding entries of ``plugin``'s group."""
    with anyio.fail_after(timeout):
        while not await bus.redis.xpending(bus.keys.events, plugin, consumer=consumer, count=1):
            await anyio.sleep(0.005)


async def last_delivered(bus: Bus, plugin: str) -> str:
    groups = {group.name: group for group in await bus.redis.xinfo_groups(bus.keys.events)}
    return groups[plugin].last_delivered


def poison(publisher: Publisher, number: int) -> bytes:
    """Bytes that are not a valid envelope, five kinds in turn."""
    envelope = publisher.envelope(registered(), app="poison")
    valid = encode(envelope)
    kinds = (
        random.Random(number).randbytes(32),  # not MessagePack
        valid[: len(valid) // 2],  # truncated
        msgspec.msgpack.encode({"id": f"not-an-envelope-{number}"}),  # not an envelope
        encode(replace(envelope, type="health_check")),  # type and payload disagree
        encode(replace(envelope, version=SCHEMA_VERSIONS["app_registered"] + 1)),  # too new
    )
    return kinds[number % len(kinds)]


class TestWorkerKilled:
    """Scenario 1: SIGKILL one of two workers of a group in the middle of its hooks."""

    EVENTS = 5_000
    HOOK_SLEEP = 0.0015
    CLAIM_IDLE = 1.0

    @pytest.mark.redis_server
    async def test_nothing_is_lost_and_duplicates_stay_within_what_it_held(
        self, report: Report, server: RedisServer, server_bus: Bus
    ) -> None:
        """Every event is handled and acked (pending 0, lag 0); the only events handled
        twice are among those the killed worker held unacked when it died."""
        bus, plugin = server_bus, Recorder.NAME
        async with process_workers(bus, server.url, server.directory) as workers:
            victim, survivor = await workers.start(
                Recorder, 2, concurrency=4, claim_idle=self.CLAIM_IDLE
            )
            async with Publisher(bus, REGISTRY) as publisher, anyio.create_task_group() as group:
                group.start_soon(partial(publish, publisher, self.EVENTS, sleep=self.HOOK_SLEEP))
                await until_handled(bus, plugin, self.EVENTS // 5)
                await holding(bus, plugin, victim)
                await workers.kill(victim)
                # Dead now: its pending list is exactly what it read and never acked.
                held = await bus.redis.xpending(
                    bus.keys.events, plugin, consumer=victim, count=EVERYTHING
                )
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
            assert workers.running(survivor), workers.logs()
        held_events = await event_ids(bus, [row.entry_id for row in held])
        result = await tally(bus, plugin)
        report(result, f"the killed worker held {len(held)}")

        assert result.events == self.EVENTS
        assert (result.lost, result.pending, result.lag) == (0, 0, 0)
        assert result.delivered == self.EVENTS
        assert held, "the kill landed when the worker held nothing"
        assert result.duplicated <= held_events
        assert result.duplicates <= len(held)


@dataclass(frozen=True, slots=True)
class Wait:
    """One registry wait of the outage scenario: when it ran and how it ended."""

    started: float
    ended: float
    outcome: str
    """acked, failed, timed_out, unavailable (BusUnavailable) or hung."""
    entry_id: str | None = None

    def published_after(self, moment: float) -> bool:
        """Whether its event reached the stream after ``moment`` (by its entry id)."""
        return self.entry_id is not None and int(self.entry_id.split("-")[0]) >= moment * 1000


class TestRedisOutage:
    """Scenario 2: Redis stops for five seconds in the middle of a run."""

    EVENTS = 1_000
    """Published before the stop, and as many after the restart."""
    OUTAGE = 5.0
    EMITTERS = 3
    EMIT_TIMEOUT = 2.5
    HANG_BOUND = 15.0
    """Seconds after its timeout by which a wait that has not ended counts as hung."""

    async def emit_continuously(
        self, publisher: Publisher, app: str, waits: list[Wait], done: anyio.Event
    ) -> None:
        while not done.is_set():
            started, outcome, entry_id = time.time(), "hung", None
            try:
                with anyio.fail_after(self.EMIT_TIMEOUT + self.HANG_BOUND):
                    result = await publisher.emit(registered(), app=app, timeout=self.EMIT_TIMEOUT)
                outcome, entry_id = result.outcomes[Recorder.NAME].status, result.entry_id
            except BusUnavailable:
                outcome = "unavailable"
            except TimeoutError:
                outcome = "hung"
            waits.append(Wait(started, time.time(), outcome, entry_id))
            await anyio.sleep(0.05)

    @staticmethod
    async def time_to_resume(bus: Bus, plugin: str, resumed: list[float]) -> None:
        """Seconds until the group reads again (its last delivered id moves)."""
        started = time.monotonic()
        first = await last_delivered(bus, plugin)
        with anyio.fail_after(DRAIN_TIMEOUT):
            while await last_delivered(bus, plugin) == first:
                await anyio.sleep(0.02)
        resumed.append(time.monotonic() - started)

    @pytest.mark.redis_server
    async def test_everything_is_delivered_and_no_wait_hangs(
        self, report: Report, server: RedisServer, server_bus: Bus
    ) -> None:
        """What was published before the stop and after the restart is handled and acked,
        and every handling is answered with an ack record; waits across the outage end
        with an ack or BusUnavailable (or, published after the restart behind the backlog,
        a timeout), never hang; workers and the registry reconnect on their own."""
        bus, plugin = server_bus, Recorder.NAME
        policies = {plugin: PluginPolicy(required=True)}
        waits: list[Wait] = []
        resumed: list[float] = []
        async with process_workers(bus, server.url, server.directory) as workers:
            names = await workers.start(Recorder, 2, concurrency=2, timeout=30)
            async with Publisher(bus, REGISTRY, policies=policies) as publisher:
                done = anyio.Event()
                async with anyio.create_task_group() as group:
                    for number in range(self.EMITTERS):
                        emitter = self.emit_continuously
                        group.start_soon(emitter, publisher, f"w-{number}", waits, done)
                    before = await publish(publisher, self.EVENTS, sleep=0.002)
                    await anyio.sleep(0.2)
                    stopped = time.time()
                    await server.stop()
                    await anyio.sleep(self.OUTAGE)
                    restarting = time.time()
                    await server.start()
                    group.start_soon(self.time_to_resume, bus, plugin, resumed)
                    after = await publish(publisher, self.EVENTS, sleep=0.002)
                    await anyio.sleep(self.EMIT_TIMEOUT)
                    done.set()
                await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
                final = await publisher.emit(registered(), app="final", timeout=self.EMIT_TIMEOUT)
            alive = {w.consumer for w in await bus.directory.workers(plugin) if is_alive(w.seen)}
            running = [name for name in names if workers.running(name)]
        # The workers have stopped gracefully: every handling they finished was flushed.
        result = await tally(bus, plugin)
        handled = await counts(bus, "handled", plugin)
        answered = await ack_records(bus, REGISTRY)
        outcomes = Counter(w.outcome for w in waits)
        waited = " ".join(f"{kind}={n}" for kind, n in sorted(outcomes.items()))
        report(result, f"waits: {waited}; reads resumed {resumed[0]:.1f}s after the restart")

        assert (result.lost, result.pending, result.lag) == (0, 0, 0)
        missing = [event for event in before + after if event not in handled]
        assert not missing, f"{len(missing)} published events never handled"
        # At-least-once: only what was in flight when Redis stopped may run twice.
        assert not result.duplicated & set(after), "an event published after the restart ran twice"
        unanswered = {e: (n, answered[e]) for e, n in handled.items() if answered[e] < n}
        assert not unanswered, f"handlings without an ack record (handled, acks): {unanswered}"
        assert "hung" not in outcomes
        across = [w for w in waits if w.started < restarting and w.ended > stopped]
        assert any(w.outcome == "unavailable" for w in across), "no wait met the outage"
        wrong = [
            w
            for w in across
            if w.outcome not in ("acked", "unavailable")
            and not (w.outcome == "timed_out" and w.published_after(restarting))
        ]
        assert not wrong, wrong
        assert all(w.outcome == "acked" for w in waits if w.ended < stopped)
        assert final.ok, final
        assert running == names
        assert alive == set(names)

    @pytest.mark.redis_server
    async def test_an_ack_cut_off_in_flight_is_written_once_the_connection_is_back(
        self, report: Report, server: RedisServer, server_bus: Bus
    ) -> None:
        """The connection of a worker dies while its ack transaction (ack record + XACK)
        waits for the server: the worker sends the whole transaction again, so the event
        is acked once and its hook is not run a second time."""
        bus, plugin = server_bus, Recorder.NAME
        async with process_workers(bus, server.url, server.directory) as workers:
            await workers.start(Recorder, claim_idle=1.0)
            # The hook records the event as handled, then returns after a short linger.
            envelope, _ = await Publisher(bus, REGISTRY).publish(registered(linger=0.5))
            await until_handled(bus, plugin, 1)
            async with server.admin() as admin:
                # Writes wait (the hook returns, its MULTI ... EXEC is held), then the
                # worker's connections are cut while the EXEC is still unanswered.
                await admin.client_pause(5_000, all=False)
                await anyio.sleep(1.0)
                await admin.client_kill_filter(_type="normal", skipme=True)
                await admin.client_unpause()
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
            await anyio.sleep(1.5)  # past the claim idle threshold: a lost XACK shows now
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
        result = await tally(bus, plugin)
        calls = await counts(bus, "calls", plugin)
        answered = await ack_records(bus, REGISTRY)
        report(result, f"calls={sum(calls.values())} ack_records={sum(answered.values())}")

        assert calls == {envelope.id: 1}, "the hook ran again: its first ack never landed"
        assert answered == {envelope.id: 1}
        assert (result.delivered, result.duplicates, result.lost) == (1, 0, 0)


POISON_SIZES = {"process": (10_000, 100), "embedded": (1_000, 20)}
"""Good events and poison entries per lane."""


class TestPoison:
    """Scenario 3: poison entries mixed into good ones."""

    async def test_every_poison_entry_is_dead_lettered_and_every_good_one_acked(
        self, report: Report, lane: Lane
    ) -> None:
        """Each poison entry lands once in the dead-letter stream (with a dead_lettered
        failure); each good event is handled once and acked."""
        good, bad = POISON_SIZES[lane.name]
        bus, plugin, batch = lane.bus, Recorder.NAME, good // bad
        poisoned: list[str] = []
        poison_data: list[bytes] = []
        published: list[str] = []
        async with lane.workers() as workers:
            names = await workers.start(Recorder, 2, concurrency=4)
            async with Publisher(bus, REGISTRY) as publisher:

                async def add_poison(number: int) -> None:
                    data = poison(publisher, number)
                    poison_data.append(data)
                    poisoned.append(await bus.redis.xadd(bus.keys.events, {EVENT_FIELD: data}))

                for number in range(bad):
                    async with anyio.create_task_group() as group:
                        group.start_soon(add_poison, number)
                        published += await publish(publisher, batch)
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
        result = await tally(bus, plugin)
        handled = await counts(bus, "handled", plugin)
        failures = await bus.failures.counts()
        report(result)

        assert result.events == good + bad
        assert (result.delivered, result.duplicates, result.lost) == (good, 0, 0)
        assert (result.pending, result.lag) == (0, 0)
        assert handled == dict.fromkeys(published, 1)
        assert result.dead_lettered == bad
        assert sorted(letter.entry_id for letter in result.letters) == sorted(poisoned)
        # An entry whose head is readable (type and payload disagree, a newer version)
        # is dead-lettered under its event id, and its registry got an error ack.
        heads = [decode_head(data) for data in poison_data]
        assert sorted(letter.event_id or "" for letter in result.letters) == sorted(
            head.id if head is not None else "" for head in heads
        )
        assert {letter.consumer for letter in result.letters} <= set(names)
        assert sum(f.count for f in failures if f.kind == "dead_lettered") == bad


SLOW_TIMES = {"process": (1.0, 3.0), "embedded": (0.3, 0.9)}
"""Claim idle threshold and hook duration (three times the threshold) per lane."""


class TestSlowHook:
    """Scenario 4: a hook that runs three times the claim idle threshold."""

    EVENTS = 4

    async def test_it_is_delivered_once_not_twice(self, report: Report, lane: Lane) -> None:
        """Two workers of the group; each event's hook is called once and acked, since the
        worker running (or queueing) it renews its lease."""
        idle, sleep = SLOW_TIMES[lane.name]
        bus, plugin = lane.bus, Recorder.NAME
        async with lane.workers() as workers:
            names = await workers.start(
                Recorder, 2, concurrency=2, claim_idle=idle, timeout=sleep * 2
            )
            async with Publisher(bus, REGISTRY) as publisher:
                results = await emit_all(
                    publisher, self.EVENTS, plugin, timeout=sleep * 3 + 2, sleep=sleep
                )
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
        result = await tally(bus, plugin)
        calls = await counts(bus, "calls", plugin)
        report(result, f"calls={sum(calls.values())}")

        assert [r.outcomes[plugin].status for r in results] == ["acked"] * self.EVENTS
        assert {r.outcomes[plugin].consumer for r in results} <= set(names)
        assert calls == {r.event_id: 1 for r in results}
        assert (result.events, result.delivered, result.duplicates, result.lost) == (
            self.EVENTS,
            self.EVENTS,
            0,
            0,
        )


class TestAlwaysFails:
    """Scenario 5: a hook that always raises."""

    EVENTS = 5
    MAX_DELIVERIES = 3

    async def test_it_is_called_max_deliveries_times_then_dead_lettered(
        self, report: Report, lane: Lane
    ) -> None:
        """Each event's hook runs max_deliveries times; then the event is dead-lettered,
        the registry gets the error ack, and the failure record names the consumer."""
        bus, plugin = lane.bus, Raiser.NAME
        async with lane.workers() as workers:
            names = await workers.start(Raiser, 2, max_deliveries=self.MAX_DELIVERIES)
            async with Publisher(bus, REGISTRY) as publisher:
                results = await emit_all(publisher, self.EVENTS, plugin, timeout=10)
            await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
        result = await tally(bus, plugin)
        calls = await counts(bus, "calls", plugin)
        failures = await bus.failures.recent(100, plugin=plugin)
        report(result, f"calls={sum(calls.values())}")

        outcomes = {r.event_id: r.outcomes[plugin] for r in results}
        assert {o.status for o in outcomes.values()} == {"failed"}
        assert {o.consumer for o in outcomes.values()} <= set(names)
        assert all(
            f"dead-lettered after {self.MAX_DELIVERIES} attempts" in (o.error or "")
            for o in outcomes.values()
        )
        assert calls == dict.fromkeys(outcomes, self.MAX_DELIVERIES)
        letters = {letter.event_id: letter for letter in result.letters}
        assert {e: (lt.consumer, lt.attempts) for e, lt in letters.items()} == {
            e: (o.consumer, self.MAX_DELIVERIES) for e, o in outcomes.items()
        }
        # One failure per event, the dead letter's; the retries before it record none.
        assert [f.kind for f in failures] == ["dead_lettered"] * self.EVENTS
        assert {f.event_id: f.consumer for f in failures} == {
            e: o.consumer for e, o in outcomes.items()
        }
        assert (result.events, result.delivered, result.dead_lettered, result.lost) == (
            self.EVENTS,
            0,
            self.EVENTS,
            0,
        )
