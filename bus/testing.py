"""Test helpers for users of the bus: isolated embedded buses and drain waits."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ._bus import Bus
from ._errors import GroupMissing
from ._redis_memory import forget_memory_server


@asynccontextmanager
async def embedded_bus(namespace: str = "test") -> AsyncIterator[Bus]:
    """A fresh in-process bus (its own fakeredis server), discarded afterwards."""
    name = f"test-{secrets.token_hex(6)}"
    bus = Bus.connect(f"memory://{name}", namespace)
    try:
        async with bus:
            yield bus
    finally:
        forget_memory_server(name)


async def purge(bus: Bus) -> int:
    """Delete every key of the bus's namespace; returns how many were deleted."""
    keys = await bus.redis.scan_keys(bus.keys.prefix.replace("{", "\\{").replace("}", "\\}") + "*")
    return await bus.redis.delete(*keys)


async def drained(bus: Bus, plugin: str, *, timeout: float = 10.0, poll: float = 0.02) -> None:
    """Wait until ``plugin``'s group has read everything and acked it (a test helper:
    it polls XINFO GROUPS, which production code never needs to)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                groups = {
                    group.name: group for group in await bus.redis.xinfo_groups(bus.keys.events)
                }
            except GroupMissing:
                groups = {}
            group = groups.get(plugin)
            if group is not None and group.pending == 0 and group.lag == 0:
                return
            await anyio.sleep(poll)
