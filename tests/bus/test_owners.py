"""App leases with fencing tokens, on the embedded bus, a real Redis and a cluster."""

from __future__ import annotations

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._owners import AppLease

pytestmark = pytest.mark.anyio

TTL_MS = 10_000


class TestClaim:
    async def test_each_new_owner_gets_a_higher_token(self, bus: Bus) -> None:
        """Tokens only grow: a new owner after a release or an expiry gets the next one."""
        owners = bus.directory.owners
        first = await owners.claim("shop", "reg-a", TTL_MS)
        assert first == AppLease("shop", "reg-a", 1)
        await owners.release("shop", "reg-a")
        second = await owners.claim("shop", "reg-b", 50)
        assert second == AppLease("shop", "reg-b", 2)
        await anyio.sleep(0.1)
        assert await owners.holder("shop") is None
        assert await owners.claim("shop", "reg-a", TTL_MS) == AppLease("shop", "reg-a", 3)

    async def test_the_holder_claiming_again_keeps_its_token(self, bus: Bus) -> None:
        """A registry that claims an app it holds keeps its lease and token."""
        owners = bus.directory.owners
        held = await owners.claim("shop", "reg-a", TTL_MS)
        assert await owners.claim("shop", "reg-a", TTL_MS) == held

    async def test_a_live_lease_is_not_taken(self, bus: Bus) -> None:
        """Another registry's claim returns the holder's lease and changes nothing."""
        owners = bus.directory.owners
        held = await owners.claim("shop", "reg-a", TTL_MS)
        assert await owners.claim("shop", "reg-b", TTL_MS) == held
        assert await owners.holder("shop") == held

    async def test_concurrent_claims_have_one_winner(self, bus: Bus) -> None:
        """Ten registries claiming one app at once: one owner, one token."""
        owners = bus.directory.owners
        seen: list[AppLease] = []

        async def claim(registry: str) -> None:
            seen.append(await owners.claim("shop", registry, TTL_MS))

        async with anyio.create_task_group() as group:
            for number in range(10):
                group.start_soon(claim, f"reg-{number}")
        assert len(set(seen)) == 1
        assert seen[0].token == 1


class TestRenew:
    async def test_renewal_keeps_the_app_past_its_ttl(self, bus: Bus) -> None:
        """A lease renewed within its ttl outlives it; nobody else can take the app."""
        owners = bus.directory.owners
        lease = await owners.claim("shop", "reg-a", 300)
        for _ in range(4):
            await anyio.sleep(0.1)
            assert await owners.renew(lease, 300) == lease
        assert (await owners.claim("shop", "reg-b", 300)).owner == "reg-a"

    async def test_a_lease_taken_over_is_lost(self, bus: Bus) -> None:
        """Past its ttl, another registry takes the app: the old holder's renewal fails
        (and does not take it back) even though it still has its lease in hand."""
        owners = bus.directory.owners
        old = await owners.claim("shop", "reg-a", 50)
        await anyio.sleep(0.1)
        new = await owners.claim("shop", "reg-b", TTL_MS)
        assert new.token > old.token
        assert await owners.renew(old, TTL_MS) is None
        assert await owners.holder("shop") == new

    async def test_a_lease_taken_and_released_meanwhile_is_lost(self, bus: Bus) -> None:
        """An owner that came and went while the old holder slept moved the token on:
        the old holder does not get the app back with its stale token."""
        owners = bus.directory.owners
        old = await owners.claim("shop", "reg-a", 50)
        await anyio.sleep(0.1)
        await owners.claim("shop", "reg-b", TTL_MS)
        await owners.release("shop", "reg-b")
        assert await owners.renew(old, TTL_MS) is None
        assert await owners.holder("shop") is None

    async def test_an_expired_lease_nobody_took_is_taken_again(self, bus: Bus) -> None:
        """A lease that ran out with nobody claiming the app meanwhile is renewed with
        its token (no other owner can have acted under it)."""
        owners = bus.directory.owners
        lease = await owners.claim("shop", "reg-a", 50)
        await anyio.sleep(0.1)
        assert await owners.renew(lease, TTL_MS) == lease
        assert await owners.holder("shop") == lease

    async def test_a_lease_forgotten_by_redis_is_taken_again(self, bus: Bus) -> None:
        """Redis restarted empty (no lease, no token counter): the holder keeps its app
        and the counter resumes from its token."""
        owners = bus.directory.owners
        lease = await owners.claim("shop", "reg-a", TTL_MS)
        await bus.redis.delete(*bus.keys.all_fixed(), bus.keys.app_lease("shop"))
        assert await owners.renew(lease, TTL_MS) == lease
        await owners.release("shop", "reg-a")
        assert (await owners.claim("shop", "reg-b", TTL_MS)).token == lease.token + 1

    async def test_a_floor_moves_the_token_past_it(self, bus: Bus) -> None:
        """Renewing with a floor (the database saw a higher token) moves the holder's
        token past it, and the next owner's further still."""
        owners = bus.directory.owners
        lease = await owners.claim("shop", "reg-a", TTL_MS)
        moved = await owners.renew(lease, TTL_MS, floor=7)
        assert moved == AppLease("shop", "reg-a", 8)
        assert await owners.renew(lease, TTL_MS) is None  # the old token is stale now
        await owners.release("shop", "reg-a")
        assert (await owners.claim("shop", "reg-b", TTL_MS)).token == 9
