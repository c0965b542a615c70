"""Consumer: the consume loop of one consumer in a plugin's group, on both lanes."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    Ack,
    AckStatus,
    Bus,
    DeadLetter,
    Delivery,
    Envelope,
    HealthCheck,
    Publisher,
)
from rapid_objection.bus._constants import EVENT_FIELD, RECORD_FIELD
from rapid_objection.bus._consumer import Consumer
from rapid_objection.bus._contract import decode_ack_entry, decode_envelope
from rapid_objection.bus._retry import RetryPolicy

pytestmark = pytest.mark.anyio


def answer(delivery: Delivery, consumer: str, status: AckStatus = "ok") -> Ack:
    return Ack(
        event_id=delivery.envelope.id,
        plugin="orderly",
        consumer=consumer,
        status=status,
        result={"n": delivery.envelope.seq},
        attempt=delivery.attempt,
    )


@dataclass
class Recorder:
    """A handler that records each call and finishes when ``expected`` calls were made."""

    expected: int
    consumer: str = "c-1"
    delay: float = 0.0
    calls: list[Delivery] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, delivery: Delivery) -> Ack:
        self.calls.append(delivery)
        if self.delay:
            await anyio.sleep(self.delay)
        if len(self.calls) >= self.expected:
            self.done.set()
        return answer(delivery, self.consumer)

    async def wait(self, timeout: float = 1.5) -> None:
        with anyio.fail_after(timeout):
            await self.done.wait()


@asynccontextmanager
async def consuming(
    bus: Bus,
    handler: Callable[[Delivery], Awaitable[Ack]],
    *,
    plugin: str = "orderly",
    consumer: str = "c-1",
    concurrency: int = 1,
) -> AsyncIterator[Consumer]:
    """Run a Consumer in the test and stop it (draining) on the way out."""
    running = Consumer(bus, plugin, consumer, handler, concurrency=concurrency)
    async with anyio.create_task_group() as group:
        await group.start(running.run)
        try:
            yield running
        finally:
            running.stop()


async def publish(
    bus: Bus, app: str, count: int, registry: str = "reg-c", required: tuple[str, ...] = ()
) -> list[Envelope]:
    """Publish ``count`` health checks of ``app`` as registry ``registry`` would."""
    publisher = Publisher(bus, registry)
    envelopes = []
    for n in range(count):
        envelope = publisher.envelope(HealthCheck(health={"n": n}), app=app, required=required)
        await bus.publish(envelope)
        envelopes.append(envelope)
    return envelopes


async def acks_of(bus: Bus, registry: str = "reg-c") -> list[Ack]:
    return [
        ack
        for _, fields in await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=10_000)
        for ack in decode_ack_entry(fields)
    ]


async def pending(bus: Bus, plugin: str = "orderly") -> int:
    return len(await bus.redis.xpending(bus.keys.events, plugin, count=1000))


class TestOrder:
    async def test_one_apps_events_run_in_order_while_apps_overlap(self, bus: Bus) -> None:
        """With concurrency 4, one app's events run singly in publish order; apps overlap."""
        await bus.ensure_group("orderly")
        sent: dict[str, list[str]] = {"a": [], "b": [], "c": []}
        for _ in range(5):
            for app, ids in sent.items():
                [envelope] = await publish(bus, app, 1)
                ids.append(envelope.id)
        seen: dict[str, list[str]] = {app: [] for app in sent}
        spans: dict[str, list[tuple[float, float]]] = {app: [] for app in sent}
        active: dict[str, int] = dict.fromkeys(sent, 0)
        most_active = {"app": 0, "all": 0}
        started = {app: anyio.Event() for app in sent}
        met = {"a-saw-b": False}
        total = 15
        finished = anyio.Event()

        async def handler(delivery: Delivery) -> Ack:
            app = delivery.envelope.app
            begin = time.monotonic()
            active[app] += 1
            most_active["app"] = max(most_active["app"], active[app])
            most_active["all"] = max(most_active["all"], sum(active.values()))
            started[app].set()
            if app == "a" and not seen["a"]:
                # Only possible if app b runs while a's first event is still in hand.
                with anyio.move_on_after(1):
                    await started["b"].wait()
                met["a-saw-b"] = started["b"].is_set()
            await anyio.sleep(0.01)
            seen[app].append(delivery.envelope.id)
            active[app] -= 1
            spans[app].append((begin, time.monotonic()))
            if sum(len(ids) for ids in seen.values()) == total:
                finished.set()
            return answer(delivery, "c-1")

        async with consuming(bus, handler, concurrency=4):
            with anyio.fail_after(1.5):
                await finished.wait()
        assert seen == sent
        assert met["a-saw-b"]
        assert most_active["app"] == 1
        assert most_active["all"] >= 2
        for app_spans in spans.values():
            assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(app_spans))

    async def test_concurrency_bounds_apps_in_flight(self, bus: Bus) -> None:
        """No more hooks run at once than the consumer's concurrency."""
        await bus.ensure_group("orderly")
        for app in "abcdef":
            await publish(bus, app, 2)
        running = {"now": 0, "most": 0}
        finished = anyio.Event()
        count = {"done": 0}

        async def handler(delivery: Delivery) -> Ack:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            await anyio.sleep(0.02)
            running["now"] -= 1
            count["done"] += 1
            if count["done"] == 12:
                finished.set()
            return answer(delivery, "c-1")

        async with consuming(bus, handler, concurrency=3):
            with anyio.fail_after(1.5):
                await finished.wait()
        assert running["most"] == 3

    @pytest.mark.parametrize("concurrency", [0, -1], ids=["zero", "negative"])
    async def test_concurrency_below_one_is_refused(self, bus: Bus, concurrency: int) -> None:
        """A consumer needs a concurrency of at least one."""

        async def handler(delivery: Delivery) -> Ack:
            raise AssertionError("never called")

        with pytest.raises(ValueError, match="concurrency"):
            Consumer(bus, "p", "c", handler, concurrency=concurrency)


class TestAcks:
    async def test_each_awaited_event_is_acked_once_to_its_registry(self, bus: Bus) -> None:
        """Every handled event gets one ack record in its registry's ack stream and is XACKed."""
        await bus.ensure_group("orderly")
        first = await publish(bus, "shop", 3, registry="reg-1", required=("orderly",))
        second = await publish(bus, "blog", 2, registry="reg-2", required=("orderly",))
        recorder = Recorder(expected=5)
        async with consuming(bus, recorder):
            await recorder.wait()
        assert [ack.event_id for ack in await acks_of(bus, "reg-1")] == [e.id for e in first]
        assert [ack.event_id for ack in await acks_of(bus, "reg-2")] == [e.id for e in second]
        assert await pending(bus) == 0

    @pytest.mark.parametrize(
        ("required", "written"),
        [
            pytest.param(("orderly",), True, id="required"),
            pytest.param((), False, id="not-required"),
        ],
    )
    async def test_skipped_acks_are_written_only_when_awaited(
        self, bus: Bus, required: tuple[str, ...], written: bool
    ) -> None:
        """A skipped answer reaches the registry only if the registry waits for this plugin."""
        await bus.ensure_group("orderly")
        publisher = Publisher(bus, "reg-c")
        envelope = publisher.envelope(HealthCheck(), app="shop", required=required)
        await bus.publish(envelope)
        finished = anyio.Event()

        async def handler(delivery: Delivery) -> Ack:
            finished.set()
            return answer(delivery, "c-1", status="skipped")

        async with consuming(bus, handler):
            with anyio.fail_after(1.5):
                await finished.wait()
        assert [ack.status for ack in await acks_of(bus)] == (["skipped"] if written else [])
        assert await pending(bus) == 0

    async def test_handler_that_raises_is_acked_as_an_error(self, bus: Bus) -> None:
        """An exception escaping the handler becomes an error ack, never a lost event."""
        await bus.ensure_group("orderly")
        publisher = Publisher(bus, "reg-c")
        envelope = publisher.envelope(HealthCheck(), app="shop", required=("orderly",))
        await bus.publish(envelope)
        calls: list[int] = []

        async def handler(delivery: Delivery) -> Ack:
            calls.append(delivery.attempt)
            raise RuntimeError("cannot reach postgresql://shop:hunter2@db/shop")

        consumer = Consumer(bus, "orderly", "c-1", handler, retry=RetryPolicy(max_deliveries=1))
        async with anyio.create_task_group() as group:
            await group.start(consumer.run)
            with anyio.fail_after(1.5):
                while not await acks_of(bus):
                    await anyio.sleep(0.01)
            consumer.stop()
        [ack] = await acks_of(bus)
        assert ack.status == "error"
        assert "hunter2" not in (ack.error or "")
        assert "postgresql://shop:***@db/shop" in (ack.error or "")
        assert calls == [1]
        assert await pending(bus) == 0


class TestPoison:
    @pytest.mark.parametrize(
        ("fields", "data"),
        [
            pytest.param({EVENT_FIELD: b"\xc1\xffgarbage"}, b"\xc1\xffgarbage", id="garbage"),
            pytest.param({b"x": b"no event field"}, b"", id="missing-field"),
            pytest.param(
                {EVENT_FIELD: msgspec.msgpack.encode({"id": "X", "type": "health_check"})},
                msgspec.msgpack.encode({"id": "X", "type": "health_check"}),
                id="not-an-envelope",
            ),
        ],
    )
    async def test_poison_entry_is_dead_lettered_and_the_next_event_handled(
        self, bus: Bus, fields: dict[bytes, bytes], data: bytes
    ) -> None:
        """An undecodable entry is dead-lettered, recorded, XACKed, and the next event handled."""
        await bus.ensure_group("orderly")
        poison_id = await bus.redis.xadd(bus.keys.events, fields)
        [good] = await publish(bus, "shop", 1)
        recorder = Recorder(expected=1)
        async with consuming(bus, recorder) as consumer:
            await recorder.wait()
        assert [call.envelope.id for call in recorder.calls] == [good.id]
        [(_, record)] = await bus.redis.xrange(bus.keys.dlq, "-", "+", count=10)
        letter = msgspec.msgpack.decode(record[RECORD_FIELD], type=DeadLetter)
        assert (letter.entry_id, letter.event_id, letter.plugin, letter.consumer) == (
            poison_id,
            None,
            "orderly",
            "c-1",
        )
        assert letter.data == data
        assert letter.attempts == 1
        assert letter.last_error
        [failure] = await bus.failures.recent()
        assert (failure.kind, failure.plugin, failure.consumer) == (
            "dead_lettered",
            "orderly",
            "c-1",
        )
        assert failure.event_id == poison_id
        assert await pending(bus) == 0
        assert consumer.dead_lettered == 1

    async def test_several_poison_entries_between_good_ones(self, bus: Bus) -> None:
        """Poison entries between good events are all dead-lettered; the good ones run in order."""
        await bus.ensure_group("orderly")
        publisher = Publisher(bus, "reg-c")
        good: list[str] = []
        poison: list[str] = []
        for n in range(3):
            good.append((await publisher.publish(HealthCheck(health={"n": n}), app="shop"))[0].id)
            poison.append(
                await bus.redis.xadd(
                    bus.keys.events, {EVENT_FIELD: b"\x00\x01junk"} if n % 2 else {b"other": b"1"}
                )
            )
        recorder = Recorder(expected=3)
        async with consuming(bus, recorder):
            await recorder.wait()
        assert [call.envelope.id for call in recorder.calls] == good
        letters = [
            msgspec.msgpack.decode(record[RECORD_FIELD], type=DeadLetter)
            for _, record in await bus.redis.xrange(bus.keys.dlq, "-", "+", count=10)
        ]
        assert sorted(letter.entry_id for letter in letters) == sorted(poison)
        assert len(await bus.failures.recent(kind="dead_lettered")) == 3
        assert await pending(bus) == 0


class TestStop:
    async def test_stop_drains_the_hook_in_flight(self, bus: Bus) -> None:
        """A hook running at stop() completes, and its ack is written before run() returns."""
        await bus.ensure_group("orderly")
        [envelope] = await publish(bus, "shop", 1)
        in_hook = anyio.Event()
        completed: list[str] = []

        async def handler(delivery: Delivery) -> Ack:
            in_hook.set()
            await anyio.sleep(0.3)
            completed.append(delivery.envelope.id)
            return answer(delivery, "c-1")

        consumer = Consumer(bus, "orderly", "c-1", handler)
        at_return: dict[str, object] = {}

        async def run() -> None:
            await consumer.run()
            at_return["acks"] = [ack.event_id for ack in await acks_of(bus)]
            at_return["pending"] = await pending(bus)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            with anyio.fail_after(1.5):
                await in_hook.wait()
            consumer.stop()
        assert completed == [envelope.id]
        assert at_return == {"acks": [envelope.id], "pending": 0}

    async def test_stop_right_after_a_hook_returns_still_writes_its_ack(self, bus: Bus) -> None:
        """stop() the moment the last hook returns: run() ends cleanly and every ack is written."""
        await bus.ensure_group("orderly")
        envelopes = await publish(bus, "shop", 2, required=("orderly",))
        recorder = Recorder(expected=2)
        consumer = Consumer(bus, "orderly", "c-1", recorder)
        async with anyio.create_task_group() as group:
            await group.start(consumer.run)
            await recorder.wait()
            consumer.stop()
        assert [ack.event_id for ack in await acks_of(bus)] == [e.id for e in envelopes]
        assert await pending(bus) == 0

    async def test_stop_of_an_idle_consumer_is_prompt(self, bus: Bus) -> None:
        """stop() of a consumer blocked on an empty stream makes run() return at once."""
        recorder = Recorder(expected=1)
        consumer = Consumer(bus, "orderly", "c-1", recorder)
        async with anyio.create_task_group() as group:
            await group.start(consumer.run)
            await anyio.sleep(0.1)
            stopped = time.monotonic()
            consumer.stop()
        assert time.monotonic() - stopped < 0.3

    async def test_nothing_is_read_after_stop(self, bus: Bus) -> None:
        """Events published after stop() stay in the stream for the next consumer."""
        recorder = Recorder(expected=1)
        async with consuming(bus, recorder) as consumer:
            consumer.stop()
            await publish(bus, "shop", 2)
        assert recorder.calls == []
        [group] = await bus.redis.xinfo_groups(bus.keys.events)
        assert group.pending == 0


class TestRestart:
    async def test_own_pending_entries_from_a_previous_life_come_first(self, bus: Bus) -> None:
        """Restarted under its name, a consumer first handles what it held, once, redelivered."""
        key = bus.keys.events
        await bus.ensure_group("orderly")
        held = await publish(bus, "shop", 2)
        taken = await bus.redis.xreadgroup(key, "orderly", "stable-1", count=10, block_ms=None)
        assert len(taken) == 2
        fresh = await publish(bus, "shop", 1)
        recorder = Recorder(expected=3, consumer="stable-1", delay=0.05)
        async with consuming(bus, recorder, consumer="stable-1"):
            await recorder.wait()
            await anyio.sleep(0.2)  # time for any duplicate to show up
        assert [call.envelope.id for call in recorder.calls] == [e.id for e in held + fresh]
        assert all(call.attempt >= 2 for call in recorder.calls[:2])
        assert recorder.calls[2].attempt == 1
        assert await pending(bus) == 0

    async def test_other_consumers_pending_entries_are_not_taken_at_start(self, bus: Bus) -> None:
        """A new consumer does not read entries another live consumer holds."""
        key = bus.keys.events
        await bus.ensure_group("orderly")
        await publish(bus, "shop", 1)
        await bus.redis.xreadgroup(key, "orderly", "other-1", count=10, block_ms=None)
        recorder = Recorder(expected=1)
        async with consuming(bus, recorder, consumer="c-1"):
            await anyio.sleep(0.2)
        assert recorder.calls == []
        [row] = await bus.redis.xpending(key, "orderly")
        assert row.consumer == "other-1"


class TestEnvelopeDecoding:
    async def test_handler_gets_the_published_envelope(self, bus: Bus) -> None:
        """The delivery carries the envelope exactly as published, with its entry id."""
        await bus.ensure_group("orderly")
        [envelope] = await publish(bus, "shop", 1)
        recorder = Recorder(expected=1)
        async with consuming(bus, recorder):
            await recorder.wait()
        [delivery] = recorder.calls
        assert delivery.envelope == envelope
        [(entry_id, fields)] = await bus.redis.xrange(bus.keys.events, "-", "+", count=1)
        assert delivery.entry_id == entry_id
        assert decode_envelope(fields[EVENT_FIELD]) == envelope
