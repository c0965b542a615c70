"""The Redis adapter: URL checks, error mapping, groups and blocking reads, on both lanes."""

from __future__ import annotations

import time

import anyio
import pytest

from rapid_objection.bus import (
    Bus,
    BusRefused,
    BusUnavailable,
    BusUrlError,
    GroupMissing,
    mask_url,
)
from rapid_objection.bus._redis import check_url
from rapid_objection.bus.testing import embedded_bus
from tests.conftest import MISSING_DATABASE_PASSWORD

pytestmark = pytest.mark.anyio


class TestCheckUrl:
    @pytest.mark.parametrize(
        ("url", "scheme"),
        [
            pytest.param("memory://", "memory", id="memory"),
            pytest.param("memory://named", "memory", id="memory-named"),
            pytest.param("redis://127.0.0.1:6379/0", "redis", id="redis"),
            pytest.param("redis://user:secret@cache.internal:6380/2", "redis", id="redis-auth"),
            pytest.param("rediss://cache.example.com:6380", "rediss", id="rediss"),
            pytest.param("unix:///run/redis/redis.sock", "unix", id="unix"),
        ],
    )
    def test_accepts_supported_schemes(self, url: str, scheme: str) -> None:
        """Every supported bus URL is accepted and its scheme returned."""
        assert check_url(url) == scheme

    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            pytest.param(
                "http://admin:hunter2@cache.internal/0",
                "http://admin:***@cache.internal/0",
                id="http",
            ),
            pytest.param("ftp://cache.internal", "ftp://cache.internal", id="ftp"),
            pytest.param("redis://:hunter2@/0", "redis://:***@/0", id="redis-no-host"),
            pytest.param("cache.internal:6379", "cache.internal:6379", id="no-scheme"),
        ],
    )
    def test_rejects_others_naming_the_masked_url(self, url: str, masked: str) -> None:
        """An unsupported URL raises BusUrlError naming the URL with its password masked."""
        with pytest.raises(BusUrlError) as caught:
            check_url(url)
        assert caught.value.url == masked
        assert masked in str(caught.value)
        assert "hunter2" not in str(caught.value)

    def test_bus_connect_checks_the_url(self) -> None:
        """Bus.connect refuses an http:// URL before any I/O, as a ValueError too."""
        with pytest.raises(BusUrlError) as caught:
            Bus.connect("http://admin:hunter2@cache.internal/0")
        assert isinstance(caught.value, ValueError)
        assert "hunter2" not in str(caught.value)


class TestUnavailable:
    async def test_unreachable_server_raises_bus_unavailable_with_masked_password(self) -> None:
        """Opening a bus on a closed port raises BusUnavailable quickly, the password masked."""
        started = time.monotonic()
        with pytest.raises(BusUnavailable) as caught:
            async with Bus.connect("redis://user:hunter2@127.0.0.1:1/0", "ns"):
                pass
        assert time.monotonic() - started < 1.5
        assert caught.value.url == "redis://user:***@127.0.0.1:1/0"
        assert "redis://user:***@127.0.0.1:1/0" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert isinstance(caught.value, ConnectionError)


class TestRefused:
    @pytest.mark.parametrize("query", ["", "?cluster=false"], ids=["asks-info", "pings"])
    async def test_a_database_the_server_lacks_is_refused_not_waited_for(
        self, missing_database_url: str, query: str
    ) -> None:
        """Opening a bus on a database the server does not have raises BusRefused (a
        lasting refusal, not an outage to wait out) naming SELECT and the server's
        reason, the URL's password masked; whether open() asks INFO or PING first."""
        url = missing_database_url + query
        with pytest.raises(BusRefused) as caught:
            async with Bus.connect(url, "ns"):
                pass
        assert not isinstance(caught.value, BusUnavailable)
        assert caught.value.command == "SELECT"
        assert "DB index is out of range" in caught.value.reason
        assert caught.value.url == mask_url(url)
        assert f"bus at {mask_url(url)}: SELECT refused: " in str(caught.value)
        assert MISSING_DATABASE_PASSWORD not in str(caught.value)


class TestGroups:
    async def test_ensure_group_is_idempotent(self, bus: Bus) -> None:
        """The first ensure_group creates the group (and the stream); later ones are no-ops."""
        assert await bus.ensure_group("audit") is True
        assert await bus.ensure_group("audit") is False
        assert await bus.redis.ensure_group(bus.keys.events, "audit") is False
        groups = await bus.redis.xinfo_groups(bus.keys.events)
        assert [group.name for group in groups] == ["audit"]
        assert await bus.redis.xlen(bus.keys.events) == 0

    async def test_group_starts_at_the_streams_end(self, bus: Bus) -> None:
        """A group made by Bus.ensure_group does not deliver entries older than itself."""
        key = bus.keys.events
        await bus.redis.xadd(key, {b"e": b"old"})
        await bus.ensure_group("audit")
        new_id = await bus.redis.xadd(key, {b"e": b"new"})
        entries = await bus.redis.xreadgroup(key, "audit", "c-1", count=10, block_ms=None)
        assert [entry_id for entry_id, _ in entries] == [new_id]

    @pytest.mark.parametrize("stream_exists", [True, False], ids=["stream-exists", "no-stream"])
    async def test_xreadgroup_of_missing_group_raises_group_missing(
        self, bus: Bus, stream_exists: bool
    ) -> None:
        """XREADGROUP on a group that does not exist raises GroupMissing naming stream and group."""
        key = bus.keys.events
        if stream_exists:
            await bus.redis.xadd(key, {b"e": b"x"})
        with pytest.raises(GroupMissing) as caught:
            await bus.redis.xreadgroup(key, "nobody", "c-1", count=1, block_ms=None)
        assert (caught.value.stream, caught.value.group) == (key, "nobody")

    @pytest.mark.parametrize("stream_exists", [True, False], ids=["stream-exists", "no-stream"])
    async def test_blocking_xreadgroup_of_missing_group_raises_at_once(
        self, bus: Bus, stream_exists: bool
    ) -> None:
        """A blocking XREADGROUP on a missing group raises GroupMissing instead of waiting."""
        key = bus.keys.events
        if stream_exists:
            await bus.redis.xadd(key, {b"e": b"x"})
        started = time.monotonic()
        with pytest.raises(GroupMissing):
            await bus.redis.xreadgroup(key, "nobody", "c-1", count=1, block_ms=800)
        assert time.monotonic() - started < 0.5

    async def test_xpending_of_missing_group_raises_group_missing(self, bus: Bus) -> None:
        """XPENDING on a group that does not exist raises GroupMissing."""
        await bus.redis.xadd(bus.keys.events, {b"e": b"x"})
        with pytest.raises(GroupMissing):
            await bus.redis.xpending(bus.keys.events, "nobody")

    async def test_pending_entries_name_their_consumer_and_deliveries(self, bus: Bus) -> None:
        """XPENDING reports who holds an entry and how often it was delivered."""
        key = bus.keys.events
        await bus.ensure_group("audit")
        entry_id = await bus.redis.xadd(key, {b"e": b"x"})
        await bus.redis.xreadgroup(key, "audit", "c-1", count=1, block_ms=None)
        [row] = await bus.redis.xpending(key, "audit")
        assert (row.entry_id, row.consumer, row.deliveries) == (entry_id, "c-1", 1)


class TestBlockingReads:
    @pytest.mark.parametrize("grouped", [True, False], ids=["xreadgroup", "xread"])
    async def test_blocked_read_returns_when_an_entry_arrives(
        self, bus: Bus, grouped: bool
    ) -> None:
        """A read blocked on an empty stream returns as soon as something is appended."""
        key = bus.keys.events
        await bus.ensure_group("audit")
        got: list[str] = []
        elapsed: list[float] = []

        async def read() -> None:
            started = time.monotonic()
            if grouped:
                entries = await bus.redis.xreadgroup(key, "audit", "c-1", count=1, block_ms=1500)
            else:
                entries = await bus.redis.xread(key, "0-0", count=1, block_ms=1500)
            elapsed.append(time.monotonic() - started)
            got.extend(entry_id for entry_id, _ in entries)

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            await anyio.sleep(0.1)
            entry_id = await bus.redis.xadd(key, {b"e": b"x"})
        assert got == [entry_id]
        assert elapsed[0] < 0.6

    @pytest.mark.parametrize("grouped", [True, False], ids=["xreadgroup", "xread"])
    async def test_blocked_read_times_out_empty(self, bus: Bus, grouped: bool) -> None:
        """A read blocked on an empty stream returns nothing after its block time."""
        key = bus.keys.events
        await bus.ensure_group("audit")
        started = time.monotonic()
        if grouped:
            entries = await bus.redis.xreadgroup(key, "audit", "c-1", count=1, block_ms=200)
        else:
            entries = await bus.redis.xread(key, "0-0", count=1, block_ms=200)
        assert entries == []
        assert 0.15 < time.monotonic() - started < 1.0

    async def test_wake_cuts_an_embedded_blocked_read_short(self) -> None:
        """Redis.wake returns a blocked XREADGROUP of the embedded bus before its block time."""
        async with embedded_bus() as bus:
            key = bus.keys.events
            await bus.ensure_group("audit")
            elapsed: list[float] = []

            async def read() -> None:
                started = time.monotonic()
                await bus.redis.xreadgroup(key, "audit", "c-1", count=1, block_ms=1000)
                elapsed.append(time.monotonic() - started)

            async with anyio.create_task_group() as group:
                group.start_soon(read)
                await anyio.sleep(0.1)
                bus.redis.wake(key)
            assert elapsed[0] < 0.5


class TestBatchRetry:
    async def test_a_batch_sends_its_commands_again_on_every_execute(self, bus: Bus) -> None:
        """Executing a batch twice sends it twice: a retry after a lost connection is never
        an empty transaction that looks like success."""
        batch = bus.redis.batch()
        batch.xadd("retry-probe", {b"f": b"1"})
        await batch.execute()
        await batch.execute()
        assert await bus.redis.xlen("retry-probe") == 2
        await bus.redis.delete("retry-probe")


class TestFeatureDetection:
    async def test_readgroup_claim_is_detected_from_the_server(self, bus: Bus) -> None:
        """XREADGROUP ... CLAIM is reported where the server documents it (Redis 8.4+), and
        never on the embedded bus."""
        supported = await bus.redis.supports_readgroup_claim()
        if bus.embedded:
            assert supported is False
        else:
            assert supported == (await bus.redis.server_version() >= (8, 4))
