"""The raw round trips of ``bus/_wire.py`` on the real Redis: what redis-py's own
commands guarantee holds for them too (a connection closed while idle is replaced, a
cancelled read leaves nothing on a reused connection, error replies stay in place and
are classified)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from rapid_objection.bus import Bus

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[Bus]:
    async with Bus.connect(redis_url, f"t-{secrets.token_hex(6)}") as opened:
        assert opened.redis.wires is not None, "a single server takes the raw path"
        yield opened
        await opened.redis.delete(*await opened.redis.scan_keys(f"ro:{{{opened.namespace}}}:*"))


class TestWire:
    async def test_replies_come_in_order_with_errors_in_place(self, bus: Bus) -> None:
        key = bus.keys.events
        wires = bus.redis.wires
        assert wires is not None
        replies = await wires.send([("XADD", key, "*", "k", "v"), ("INCR", key), ("XLEN", key)])
        assert isinstance(replies[0], bytes)
        assert b"-" in replies[0]
        assert isinstance(replies[1], redis_errors.ResponseError)  # WRONGTYPE, in place
        assert replies[2] == 1

    async def test_a_connection_killed_while_idle_is_replaced(
        self, bus: Bus, redis_url: str
    ) -> None:
        key = bus.keys.events
        await bus.redis.xadd(key, {b"k": b"1"})
        wires = bus.redis.wires
        assert wires is not None
        (client_id,) = await wires.send([("CLIENT", "ID")])  # the one idle connection
        async with aioredis.Redis.from_url(redis_url) as admin:
            assert await admin.client_kill_filter(_id=client_id) == 1
        # Not BusUnavailable: the idle connection is found closed and opened again.
        assert await bus.redis.xrange(key, "-", "+", 10) != []

    async def test_a_cancelled_blocked_read_leaves_nothing_for_the_next(self, bus: Bus) -> None:
        key = bus.keys.events
        await bus.redis.xadd(key, {b"k": b"old"})
        newest = (await bus.redis.xrange(key, "-", "+", 10))[-1][0]
        with anyio.move_on_after(0.2):
            await bus.redis.xread(key, newest, count=10, block_ms=5_000)
        # Were the cancelled read's connection reused, its reply (this XADD's entry)
        # would be taken as the reply of the next command.
        await bus.redis.xadd(key, {b"k": b"new"})
        entries = await bus.redis.xrange(key, "-", "+", 10)
        assert [fields[b"k"] for _, fields in entries] == [b"old", b"new"]

    async def test_a_command_refused_inside_a_transaction_raises(self, bus: Bus) -> None:
        key = bus.keys.events
        await bus.redis.hset(bus.keys.ack_positions, "r", b"1")
        # HSET on a stream key: refused inside EXEC (WRONGTYPE); the XADD before it ran.
        batch = bus.redis.batch().xadd(key, {b"k": b"v"}).hset(key, "f", b"v")
        with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
            await batch.execute()
        assert await bus.redis.xlen(key) == 1
        assert await bus.redis.hget(bus.keys.ack_positions, "r") == b"1"
