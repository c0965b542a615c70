"""The typed face of Redis: with ``_redis_clients`` (building clients for a topology),
``_redis_failures`` (reading redis-py's failures) and ``_redis_memory`` (the embedded
bus), the only modules that talk to ``redis.asyncio`` and fakeredis.

It turns redis-py's untyped replies into typed values, maps failures to ``BusError``s
and NOGROUP to ``GroupMissing``, routes a cluster's batches to their slot's master, and
makes a write wait for its replicas when the URL asks for ``min_replicas``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from . import _redis_clients as clients
from ._errors import BusUnavailable, BusUrlError, GroupMissing
from ._redact import mask_url
from ._redis_failures import FAILURES, translate
from ._redis_memory import MemoryServer, memory_server
from ._topology import Topology
from ._topology import parse as parse_topology

_T = TypeVar("_T")
Fields = Mapping[bytes, bytes]
Entry = tuple[str, dict[bytes, bytes]]
"""A stream entry: its id and its fields (empty when the entry was deleted)."""


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One row of XPENDING: who holds an entry, for how long, delivered how often."""

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One row of XINFO GROUPS."""

    name: str
    consumers: int
    pending: int
    last_delivered: str
    lag: int | None


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One row of XINFO CONSUMERS; ``inactive_ms`` exists from Redis 7.2 on."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None


def check_url(url: str) -> str:
    """Return the scheme of a supported bus URL or raise ``BusUrlError``."""
    return parse_topology(url).scheme


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Sequence[Any] | None) -> list[Entry]:
    return [(_text(entry_id), dict(fields or {})) for entry_id, fields in raw or ()]


class Redis:
    """A typed face of one Redis deployment (a server, a cluster, a Sentinel-watched
    primary) or of the embedded fakeredis server."""

    def __init__(
        self,
        url: str,
        client: Any,
        memory: MemoryServer | None,
        topology: Topology | None = None,
    ) -> None:
        self.url = mask_url(url)
        self._client = client
        self._memory = memory
        self.topology = topology or parse_topology(url)
        self._durable: clients.Durable | None = None
        self._masters: clients.NodeClients | None = None
        """On a cluster: plain clients to the masters, for batches (see _redis_clients)."""

    @classmethod
    def connect(cls, url: str) -> Redis:
        """Build a client for ``url``; no I/O happens until ``open`` or a first command."""
        topology = parse_topology(url)
        if topology.embedded:
            import fakeredis

            memory = memory_server(topology.client_url)
            fake: Any = fakeredis.FakeAsyncRedis(
                server=memory.server,
                connection_pool_class=aioredis.BlockingConnectionPool,
                max_connections=clients.MAX_CONNECTIONS,
                timeout=None,
            )
            return cls(url, fake, memory, topology)
        try:
            client = clients.build(topology, cluster=bool(topology.cluster))
        except (ValueError, redis_errors.RedisError) as exc:
            raise BusUrlError(url, str(exc)) from None
        return cls(url, client, None, topology)

    async def open(self) -> None:
        """Learn the server's shape (cluster or not, unless the URL said) and check that
        it answers; raises ``BusUnavailable`` naming the URL."""
        if self.topology.cluster is None:
            # INFO's answer is the check that the server answers: no PING besides.
            if await self._cluster_enabled():
                single, self._client = self._client, clients.build(self.topology, cluster=True)
                await single.aclose()
                await self.ping()  # the cluster client learns the slot map
        else:
            await self.ping()
        topology = self.topology
        if self.cluster and self._masters is None:
            self._masters = clients.NodeClients(topology, clients.MAX_CONNECTIONS)
        if topology.min_replicas and self._durable is None:
            self._durable = (
                clients.Durable(None, clients.NodeClients(topology, 1))
                if self.cluster
                else clients.Durable(clients.build(topology, cluster=False, connections=1), None)
            )

    async def _cluster_enabled(self) -> bool:
        try:
            info = await self._client.info("cluster")
        except redis_errors.ResponseError:
            return False  # a server or proxy without INFO cluster is no cluster node
        except FAILURES as exc:
            raise self._translated(exc, "INFO") from None
        return str(info.get("cluster_enabled", 0)) == "1"

    @property
    def cluster(self) -> bool:
        """Whether commands go through redis-py's cluster client."""
        return isinstance(self._client, aioredis.RedisCluster)

    @property
    def embedded(self) -> bool:
        return self._memory is not None

    async def close(self) -> None:
        durable, self._durable = self._durable, None
        if durable is not None:
            await durable.close()
        masters, self._masters = self._masters, None
        if masters is not None:
            await masters.close()
        if self.cluster:
            # redis-py's cluster client closes the nodes of its node map, but its parser
            # of COMMAND GETKEYS keeps a node object of its own, which after a failover
            # is no longer in that map (seen with redis-py 8.1): close it too.
            parser_node = getattr(self._client.commands_parser, "node", None)
            if parser_node is not None:
                with contextlib.suppress(*FAILURES):
                    await parser_node.disconnect()
        await clients.close(self._client)

    def _translated(self, exc: BaseException, command: str = "") -> BaseException:
        return translate(exc, self.url, command)

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except FAILURES as exc:
            translated = self._translated(exc)
            if translated is exc:
                raise
            raise translated from None

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # The hot path: a plain try/except, not the context manager (3-4 us per command).
        try:
            return await getattr(self._client, name)(*args, **kwargs)
        except FAILURES as exc:
            translated = self._translated(exc, name.upper())
            if translated is exc:
                raise
            raise translated from None

    async def _call_on(self, client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(client, name)(*args, **kwargs)
        except FAILURES as exc:
            translated = self._translated(exc, name.upper())
            if translated is exc:
                raise
            raise translated from None

    async def _durably(self, key: str, write: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``write`` with a client that reaches ``key``'s server: with ``min_replicas``
        the durable connection, followed by WAIT, so that it counts only once replicated;
        on a cluster a plain client of the slot's master; else the bus's client."""
        wait, nodes = self._durable, self._durable or self._masters
        if nodes is None:
            return await write(self._client)
        async with wait.lock if wait is not None else contextlib.nullcontext():
            client = nodes.client_for(self._client, key)
            try:
                result = await write(client)
                if wait is not None:
                    await self._replicated(client)
            except (BusUnavailable, BusUrlError) as exc:
                if not self.cluster:
                    raise
                # The slot moved (MOVED, ASK) or its master went away: learn the cluster's
                # map again; the caller retries this write like any outage.
                await nodes.close()
                with contextlib.suppress(*FAILURES):
                    await self._client.nodes_manager.initialize()
                raise BusUnavailable(self.url, f"the master of {key} changed: {exc}") from None
        return result

    async def _replicated(self, client: Any) -> None:
        """WAIT for ``min_replicas`` replicas of the writes made so far on ``client``."""
        wanted, timeout = self.topology.min_replicas, self.topology.replica_timeout
        got = int(await self._call_on(client, "wait", wanted, int(timeout * 1000)))
        if got < wanted:
            raise BusUnavailable(
                self.url,
                f"only {got} of {wanted} replicas acknowledged the write within {timeout:g}s",
            )

    # -- server ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("ping")

    async def server_version(self) -> tuple[int, ...]:
        info = await self._call("info", "server")
        version = info.get("redis_version", "0") if isinstance(info, dict) else "0"
        return tuple(int(part) for part in str(version).split(".") if part.isdigit())

    async def supports_readgroup_claim(self) -> bool:
        """Whether XREADGROUP takes the CLAIM option (Redis 8.4+): asked of the server's
        command docs, not assumed from a version (forks and backports differ)."""
        if self._memory is not None:
            return False
        try:
            # One string: redis-py then looks for no reply parser of its own ("COMMAND").
            # A cluster client needs a node for a command without a key: any will do.
            node = {"target_nodes": self._client.get_random_node()} if self.cluster else {}
            docs = await self._client.execute_command("COMMAND DOCS", "XREADGROUP", **node)
        except redis_errors.ResponseError:
            return False  # no COMMAND DOCS (before 7.0): certainly no CLAIM either
        except FAILURES as exc:
            raise self._translated(exc) from None
        return b"claim" in repr(docs).lower().encode()

    # -- writes ---------------------------------------------------------------------------

    async def xadd_many(self, key: str, entries: Sequence[Fields]) -> list[str]:
        """XADD several entries in one pipelined round trip (not a transaction)."""

        async def write(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            for fields in entries:
                pipeline.xadd(key, dict(fields))
            async with self._errors():
                replies: list[Any] = await pipeline.execute()
            return replies

        replies = await self._durably(key, write)
        self._notify((key,))
        return [_text(entry_id) for entry_id in replies]

    async def xadd(self, key: str, fields: Fields, maxlen: int | None = None) -> str:
        """XADD one entry; ``maxlen`` trims approximately (``MAXLEN ~``)."""
        if self._durable is None:  # the hot path, without a closure
            entry_id = await self._call("xadd", key, dict(fields), maxlen=maxlen, approximate=True)
        else:
            entry_id = await self._durably(
                key,
                lambda client: self._call_on(
                    client, "xadd", key, dict(fields), maxlen=maxlen, approximate=True
                ),
            )
        self._notify((key,))
        return _text(entry_id)

    def batch(self, *, atomic: bool = True) -> Batch:
        """A pipeline; ``atomic`` wraps it in MULTI/EXEC (all keys share one slot)."""
        return Batch(self, atomic)

    def wake(self, key: str) -> None:
        """Wake the embedded bus's blocked readers of ``key`` (a real BLOCK just times out)."""
        self._notify((key,))

    def _notify(self, keys: Sequence[str]) -> None:
        if self._memory is not None:
            self._memory.notifier.notify(keys)

    async def pexpire(self, key: str, millis: int) -> bool:
        return bool(await self._call("pexpire", key, millis))

    async def exists(self, *keys: str) -> int:
        """EXISTS: how many of ``keys`` exist (all of one namespace: one slot)."""
        return int(await self._call("exists", *keys)) if keys else 0

    async def delete(self, *keys: str) -> int:
        return int(await self._call("delete", *keys)) if keys else 0

    async def scan_keys(self, pattern: str) -> list[str]:
        async with self._errors():
            return [_text(key) async for key in self._client.scan_iter(match=pattern, count=500)]

    # -- hashes ---------------------------------------------------------------------------

    async def hset(self, key: str, name: str, value: bytes) -> None:
        await self._call("hset", key, name, value)

    async def hget(self, key: str, name: str) -> bytes | None:
        value: bytes | None = await self._call("hget", key, name)
        return value

    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._call("hgetall", key)
        return {_text(name): value for name, value in raw.items()}

    async def hdel(self, key: str, *names: str) -> int:
        return int(await self._call("hdel", key, *names)) if names else 0

    async def hsetnx(self, key: str, name: str, value: bytes) -> bool:
        return bool(await self._call("hsetnx", key, name, value))

    # -- streams: groups ------------------------------------------------------------------

    async def ensure_group(self, key: str, group: str, start: str = "0") -> bool:
        """XGROUP CREATE ... MKSTREAM; False when the group already exists (BUSYGROUP)."""
        try:
            await self._call("xgroup_create", key, group, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def xreadgroup(
        self,
        key: str,
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int | None,
        start: str = ">",
    ) -> list[Entry]:
        """XREADGROUP; ``start=">"`` for new entries, ``"0"`` for this consumer's pending."""

        async def read(block: int | None) -> list[Entry]:
            raw = await self._group_call(
                key, group, "xreadgroup", group, consumer, {key: start}, count=count, block=block
            )
            return _entries(raw[0][1]) if raw else []

        # Only new entries can be waited for; a pending re-read answers at once.
        return await self._read_blocking(key, block_ms if start == ">" else None, read)

    async def xread(
        self, key: str, last_id: str, *, count: int, block_ms: int | None
    ) -> list[Entry]:
        """XREAD after ``last_id``; blocks up to ``block_ms`` when nothing is there."""

        async def read(block: int | None) -> list[Entry]:
            raw = await self._call("xread", {key: last_id}, count=count, block=block)
            return _entries(raw[0][1]) if raw else []

        return await self._read_blocking(key, block_ms, read)

    async def _read_blocking(
        self,
        key: str,
        block_ms: int | None,
        read: Callable[[int | None], Awaitable[list[Entry]]],
    ) -> list[Entry]:
        """Run ``read`` with BLOCK on a real server; on the embedded bus read at once and,
        when empty, sleep until an XADD to ``key`` (or ``wake``) and read once more."""
        if self._memory is None or not block_ms:
            return await read(block_ms or None)
        notifier = self._memory.notifier
        waiter = notifier.register(key)  # before the read: an XADD in between still wakes
        try:
            entries = await read(None)
            if entries or not await self._sleep_on(waiter, block_ms):
                return entries
            return await read(None)
        finally:
            notifier.discard(key, waiter)

    @staticmethod
    async def _sleep_on(event: anyio.Event, block_ms: int) -> bool:
        """Wait for a notification; False when the block time ran out first."""
        with anyio.move_on_after(block_ms / 1000):
            await event.wait()
            return True
        return False

    async def _group_call(
        self, key: str, group: str, name: str, *args: Any, durable: bool = False, **kwargs: Any
    ) -> Any:
        try:
            if durable:
                return await self._durably(
                    key, lambda client: self._call_on(client, name, *args, **kwargs)
                )
            return await self._call(name, *args, **kwargs)
        except redis_errors.ResponseError as exc:
            # NOGROUP: no such group; "no such key": XINFO on a stream that is not there;
            # "requires the key to exist": fakeredis's words for NOGROUP on a missing stream.
            text = str(exc)
            if "NOGROUP" in text or any(
                words in text.lower() for words in ("no such key", "requires the key to exist")
            ):
                raise GroupMissing(key, group) from None
            raise

    async def xack(self, key: str, group: str, entry_ids: Sequence[str]) -> int:
        return int(await self._call("xack", key, group, *entry_ids)) if entry_ids else 0

    async def xpending(
        self,
        key: str,
        group: str,
        *,
        start: str = "-",
        end: str = "+",
        count: int = 100,
        consumer: str | None = None,
        min_idle_ms: int | None = None,
    ) -> list[PendingEntry]:
        """XPENDING's extended form: who holds which entries."""
        raw = await self._group_call(
            key,
            group,
            "xpending_range",
            key,
            group,
            min=start,
            max=end,
            count=count,
            consumername=consumer,
            idle=min_idle_ms,
        )
        return [
            PendingEntry(
                entry_id=_text(row["message_id"]),
                consumer=_text(row["consumer"]),
                idle_ms=int(row["time_since_delivered"]),
                deliveries=int(row["times_delivered"]),
            )
            for row in raw
        ]

    async def xclaim_ids(
        self,
        key: str,
        group: str,
        consumer: str,
        entry_ids: Sequence[str],
        min_idle_ms: int,
        *,
        retry_count: int | None = None,
    ) -> list[str]:
        """XCLAIM ... JUSTID: take entries idle past ``min_idle_ms``; 0 renews one's own
        lease; ``retry_count`` (RETRYCOUNT) sets their delivery count."""
        if not entry_ids:
            return []
        extra = {} if retry_count is None else {"retrycount": retry_count}
        raw = await self._group_call(
            key,
            group,
            "xclaim",
            key,
            group,
            consumer,
            min_idle_ms,
            list(entry_ids),
            justid=True,
            durable=True,
            **extra,
        )
        return [_text(entry_id) for entry_id in raw]

    async def xautoclaim(
        self, key: str, group: str, consumer: str, *, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        """XAUTOCLAIM: (next cursor, claimed entries, ids deleted from the stream)."""
        raw = await self._group_call(
            key,
            group,
            "xautoclaim",
            key,
            group,
            consumer,
            min_idle_ms,
            start,
            count=count,
            durable=True,
        )
        deleted = [_text(entry_id) for entry_id in raw[2]] if len(raw) > 2 else []
        return _text(raw[0]), _entries(raw[1]), deleted

    async def xinfo_groups(self, key: str) -> list[GroupInfo]:
        try:
            raw = await self._call("xinfo_groups", key)
        except redis_errors.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise
        return [
            GroupInfo(
                name=_text(row["name"]),
                consumers=int(row["consumers"]),
                pending=int(row["pending"]),
                last_delivered=_text(row["last-delivered-id"]),
                lag=None if row.get("lag") is None else int(row["lag"]),
            )
            for row in raw
        ]

    async def xinfo_consumers(self, key: str, group: str) -> list[ConsumerInfo]:
        raw = await self._group_call(key, group, "xinfo_consumers", key, group)
        return [
            ConsumerInfo(
                name=_text(row["name"]),
                pending=int(row["pending"]),
                idle_ms=int(row["idle"]),
                inactive_ms=None if row.get("inactive") is None else int(row["inactive"]),
            )
            for row in raw
        ]

    async def destroy_group(self, key: str, group: str) -> bool:
        """XGROUP DESTROY; False when there was no such group."""
        try:
            return bool(await self._call("xgroup_destroy", key, group))
        except redis_errors.ResponseError as exc:
            if "no such key" in str(exc).lower() or "requires the key" in str(exc).lower():
                return False
            raise

    async def delete_consumer(self, key: str, group: str, consumer: str) -> int:
        """XGROUP DELCONSUMER; its pending entries become unclaimable, so drain first."""
        return int(await self._group_call(key, group, "xgroup_delconsumer", key, group, consumer))

    async def xrange(self, key: str, start: str, end: str, count: int) -> list[Entry]:
        return _entries(await self._call("xrange", key, min=start, max=end, count=count))

    async def xrevrange(self, key: str, end: str, start: str, count: int) -> list[Entry]:
        return _entries(await self._call("xrevrange", key, max=end, min=start, count=count))

    async def set(
        self, key: str, value: bytes, *, ttl_ms: int, only_if_absent: bool = False
    ) -> bool:
        """SET ... PX [NX]; False when ``only_if_absent`` and the key exists."""
        return bool(await self._call("set", key, value, px=ttl_ms, nx=only_if_absent))

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", key)
        return value

    async def oldest_pending(self, key: str, group: str) -> str | None:
        """The smallest entry id in a group's pending list (XPENDING summary form)."""
        summary = await self._group_call(key, group, "xpending", key, group)
        lowest = summary.get("min") if isinstance(summary, dict) else None
        return None if not lowest else _text(lowest)

    async def xtrim_minid(self, key: str, minid: str) -> int:
        """XTRIM MINID (exact): drop entries older than ``minid``; returns how many."""
        return int(await self._call("xtrim", key, minid=minid, approximate=False))

    async def xdel(self, key: str, *entry_ids: str) -> int:
        return int(await self._call("xdel", key, *entry_ids)) if entry_ids else 0

    async def xlen(self, key: str) -> int:
        return int(await self._call("xlen", key))

    async def hincrby(self, key: str, name: str, amount: int = 1) -> int:
        return int(await self._call("hincrby", key, name, amount))


class Batch:
    """A typed pipeline of writes, sent in one round trip (MULTI/EXEC when atomic).

    The commands are kept here, not in a redis-py pipeline: redis-py empties a pipeline
    even when ``execute`` fails, so a retry after a lost connection would send nothing
    and look like success. Each ``execute`` builds a fresh pipeline from the list.
    """

    def __init__(self, redis: Redis, atomic: bool) -> None:
        self._redis = redis
        self._atomic = atomic
        self._commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._streams: set[str] = set()

    def __len__(self) -> int:
        return len(self._commands)

    def _add(self, name: str, *args: Any, **kwargs: Any) -> Batch:
        self._commands.append((name, args, kwargs))
        return self

    def xadd(self, key: str, fields: Fields, maxlen: int | None = None) -> Batch:
        self._streams.add(key)
        return self._add("xadd", key, dict(fields), maxlen=maxlen, approximate=True)

    def xack(self, key: str, group: str, entry_ids: Sequence[str]) -> Batch:
        return self._add("xack", key, group, *entry_ids) if entry_ids else self

    def pexpire(self, key: str, millis: int) -> Batch:
        return self._add("pexpire", key, millis)

    def hset(self, key: str, name: str, value: bytes) -> Batch:
        return self._add("hset", key, name, value)

    def hincrby(self, key: str, name: str, amount: int = 1) -> Batch:
        return self._add("hincrby", key, name, amount)

    async def execute(self) -> list[Any]:
        """Send every command; safe to call again after ``BusUnavailable``."""
        if not self._commands:
            return []

        async def write(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=self._atomic)
            for name, args, kwargs in self._commands:
                getattr(pipeline, name)(*args, **kwargs)
            async with self._redis._errors():
                replies: list[Any] = await pipeline.execute()
            return replies

        # Every key of a batch is of one namespace, so of one cluster slot: the first
        # names the node whose replicas the batch waits for.
        replies = await self._redis._durably(self._commands[0][1][0], write)
        self._redis._notify(sorted(self._streams))
        return replies
