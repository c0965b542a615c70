"""The dead-letter stream's own bounds, on every lane: a count and an age, garbage kept
as a prefix with its size and digest, and one dead letter per garbage entry."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence

import anyio
import pytest

from rapid_objection.bus import Ack, Bus, DeadLetter, DeadLetters, Delivery, RedriveError
from rapid_objection.bus._constants import DLQ_PAYLOAD_PREFIX, EVENT_FIELD
from rapid_objection.bus._consumer import Consumer
from rapid_objection.bus._dlq_bounds import DeadLetterBounds, trim_dead_letters
from rapid_objection.plugin_workers._settings import WorkerSettings, WorkerTable
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio


async def _never_called(delivery: Delivery) -> Ack:
    raise AssertionError(f"garbage reached a handler: {delivery}")


async def _garbage(bus: Bus, payloads: Sequence[bytes]) -> list[str]:
    """Append entries that are no envelope at all; returns their entry ids."""
    return [await bus.redis.xadd(bus.keys.events, {EVENT_FIELD: data}) for data in payloads]


async def _consume(bus: Bus, plugins: Sequence[str], garbage: int) -> None:
    """Run one consumer per plugin until each has dead-lettered ``garbage`` entries."""
    consumers = [Consumer(bus, plugin, f"{plugin}-1", _never_called) for plugin in plugins]
    async with anyio.create_task_group() as group:
        for consumer in consumers:
            await group.start(consumer.run)
        with anyio.fail_after(5):
            while any(consumer.dead_lettered < garbage for consumer in consumers):
                await anyio.sleep(0.02)
        for consumer in consumers:
            consumer.stop()


async def _letters(bus: Bus) -> list[DeadLetter]:
    return [entry.letter for entry in await DeadLetters(bus).list(count=1000)]


def _junk(n: int, size: int = 16) -> bytes:
    """Never MessagePack of an envelope: 0xc1 is a byte MessagePack never uses."""
    return b"\xc1" + n.to_bytes(4, "big") + b"j" * (size - 5)


class TestCount:
    async def test_only_the_newest_dlq_max_len_letters_are_kept(self, bus: Bus) -> None:
        """Eight garbage entries with ``dlq_max_len = 3`` leave exactly the newest three
        dead letters (before, every one was kept)."""
        bus.dead_letters = DeadLetterBounds(max_len=3)
        await bus.ensure_group("orderly")
        ids = await _garbage(bus, [_junk(n) for n in range(8)])
        await _consume(bus, ["orderly"], 8)
        assert [letter.entry_id for letter in await _letters(bus)] == ids[-3:]


class TestAge:
    async def test_a_letter_older_than_dlq_max_age_goes(self, bus: Bus) -> None:
        """Letters older than ``dlq_max_age`` go with the next letter written, and a
        registry's trim removes them when nothing new comes."""
        bus.dead_letters = DeadLetterBounds(max_age=0.3)
        await bus.ensure_group("orderly")
        await _garbage(bus, [_junk(0), _junk(1)])
        await _consume(bus, ["orderly"], 2)
        assert len(await _letters(bus)) == 2
        await anyio.sleep(0.4)
        [young] = await _garbage(bus, [_junk(2)])
        await _consume(bus, ["orderly"], 1)
        assert [letter.entry_id for letter in await _letters(bus)] == [young]
        removed = await trim_dead_letters(
            bus.redis, bus.keys, bus.dead_letters, now=time.time() + 1
        )
        assert removed == 1
        assert await _letters(bus) == []


class TestGarbage:
    async def test_a_large_payload_keeps_a_prefix_its_size_and_digest(self, bus: Bus) -> None:
        """2 MB of garbage is dead-lettered as its first 64 KiB, its full size and its
        SHA-256; it still cannot be re-driven (before, all 2 MB were stored)."""
        payload = b"\xc1" + os.urandom(2 * 1024 * 1024 - 1)
        await bus.ensure_group("orderly")
        await _garbage(bus, [payload])
        await _consume(bus, ["orderly"], 1)
        [entry] = await DeadLetters(bus).list()
        letter = entry.letter
        assert letter.data == payload[:DLQ_PAYLOAD_PREFIX]
        assert letter.data_size == len(payload)
        assert letter.data_sha256 == hashlib.sha256(payload).hexdigest()
        with pytest.raises(RedriveError, match="never a valid envelope"):
            await DeadLetters(bus).redrive(entry.id)

    async def test_a_garbage_entry_is_one_letter_for_every_plugin(self, bus: Bus) -> None:
        """Three plugins read the same two garbage entries: two dead letters (one per
        entry, before: one per plugin and entry), and each plugin still records its
        dead_lettered failure."""
        plugins = ["a", "b", "c"]
        for plugin in plugins:
            await bus.ensure_group(plugin)
        ids = await _garbage(bus, [_junk(0), _junk(1)])
        await _consume(bus, plugins, 2)
        letters = await _letters(bus)
        assert sorted(letter.entry_id for letter in letters) == ids
        failures = await bus.failures.recent(100, kind="dead_lettered")
        assert sorted((f.plugin, f.event_id) for f in failures) == sorted(
            (plugin, entry_id) for plugin in plugins for entry_id in ids
        )

    async def test_dlq_list_json_shows_size_and_digest(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """``dlq list --json`` names the garbage's full size and digest."""
        payload = _junk(0, size=100_000)
        await redis_bus.ensure_group("orderly")
        await _garbage(redis_bus, [payload])
        await _consume(redis_bus, ["orderly"], 1)
        args = ("dlq", "list", "--bus-url", redis_url, "--namespace", redis_bus.namespace)
        code, out, _ = await run_cli(*args, "--json")
        assert code == 0
        row = json.loads(out)
        assert row["data_size"] == len(payload)
        assert row["data_sha256"] == hashlib.sha256(payload).hexdigest()


class TestSettings:
    def test_a_supervised_worker_gets_the_registrys_bounds(self) -> None:
        """The table a registry hands its worker processes carries its ``dlq_*`` bounds."""
        bounds = DeadLetterBounds(max_len=7, max_age=60.0, payload_prefix=10)
        table = WorkerTable.of("p", {}, WorkerSettings(), bounds)
        assert WorkerTable.decode(table.encode()).dead_letters == bounds
