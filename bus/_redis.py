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
from typing import Any, Final, TypeVar

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from . import _redis_clients as clients
from . import _redis_records as records
from ._errors import BusRefused, BusUnavailable, BusUrlError, GroupMissing
from ._redact import mask_url
from ._redis_batch import Batch, Watched
from ._redis_failures import FAILURES, translate
from ._redis_memory import MemoryServer, memory_server
from ._redis_records import ConsumerInfo, Entry, Fields, GroupInfo, PendingEntry
from ._sends import sends
from ._topology import Topology
from ._topology import parse as parse_topology
from ._wire import Command, Wires, range_entries, stream_entries, text_of

_T = TypeVar("_T")
CONNECTION_SETUP: Final = ("SELECT", "CLUSTER|SLOTS", "COMMAND", "ASKING")
"""What redis-py sends on its own: SELECT of a database other than 0 on each new
connection; on a cluster, the slot map (CLUSTER SLOTS), the command table (COMMAND,
COMMAND GETKEYS) and ASKING while a slot moves. Its CLIENT SETINFO (the library's name
and version, Redis 7.2+) is left out: redis-py ignores a refusal, and a 7.0 server does
not know the command, so no ACL naming it could be applied there."""


def check_url(url: str) -> str:
    """Return the scheme of a supported bus URL or raise ``BusUrlError``."""
    return parse_topology(url).scheme


def _raise_group_missing(exc: Exception, key: str, group: str) -> None:
    """GroupMissing when ``exc`` says the group (or its stream) is not there."""
    # NOGROUP: no such group; "no such key": XINFO on a stream that is not there;
    # "requires the key to exist": fakeredis's words for NOGROUP on a missing stream.
    text = str(exc)
    if "NOGROUP" in text or any(
        words in text.lower() for words in ("no such key", "requires the key to exist")
    ):
        raise GroupMissing(key, group) from None


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
        self._wires: Wires | None = None
        """On a single server: raw multi-command round trips (see _wire)."""

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

    @sends("INFO", "PING", *CONNECTION_SETUP)
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
        if not self.cluster and self._memory is None and self._wires is None:
            self._wires = Wires(self._client.connection_pool)
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
        wires, self._wires = self._wires, None
        if wires is not None:
            await wires.close()
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

    @property
    def wires(self) -> Wires | None:
        """The raw round trips, where they may stand in for redis-py's pipelines: a
        single server, no write waiting for replicas (``min_replicas`` sends WAIT)."""
        return self._wires if self._durable is None else None

    async def _on_wire(self, wires: Wires, commands: Sequence[Command]) -> list[Any]:
        """``commands`` in one round trip; a lost connection raises ``BusUnavailable``."""
        try:
            return await wires.send(commands)
        except FAILURES as exc:
            translated = self._translated(exc, str(commands[0][0]))
            if translated is exc:
                raise
            raise translated from None

    async def _one_on_wire(self, wires: Wires, words: Command) -> Any:
        """One command on a raw round trip (cheaper than redis-py's own by its pool)."""
        (reply,) = await self._on_wire(wires, [words])
        self._raise_first([reply], str(words[0]))
        return reply

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

    @sends("WAIT")
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

    @sends("PING")
    async def ping(self) -> None:
        await self._call("ping")

    @sends("INFO")
    async def server_version(self) -> tuple[int, ...]:
        info = await self._call("info", "server")
        version = info.get("redis_version", "0") if isinstance(info, dict) else "0"
        return tuple(int(part) for part in str(version).split(".") if part.isdigit())

    @sends("COMMAND|DOCS")
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

    @sends("XADD")
    async def xadd_many(self, key: str, entries: Sequence[Fields]) -> list[str]:
        """XADD several entries in one pipelined round trip (not a transaction)."""
        if (wires := self.wires) is not None:
            commands = [("XADD", key, "*", *records.flat(fields)) for fields in entries]
            replies = await self._on_wire(wires, commands)
            self._raise_first(replies, "XADD")
            self._notify((key,))
            return [text_of(entry_id) for entry_id in replies]

        async def write(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            for fields in entries:
                pipeline.xadd(key, dict(fields))
            async with self._errors():
                replies: list[Any] = await pipeline.execute()
            return replies

        replies = await self._durably(key, write)
        self._notify((key,))
        return [text_of(entry_id) for entry_id in replies]

    @sends("XADD")
    async def xadd(self, key: str, fields: Fields, maxlen: int | None = None) -> str:
        """XADD one entry; ``maxlen`` trims approximately (``MAXLEN ~``)."""
        if (wires := self.wires) is not None:  # the hot path
            words = ("XADD", key, *records.trim(maxlen), "*", *records.flat(fields))
            entry_id = await self._one_on_wire(wires, words)
        elif self._durable is None:
            entry_id = await self._call("xadd", key, dict(fields), maxlen=maxlen, approximate=True)
        else:
            entry_id = await self._durably(
                key,
                lambda client: self._call_on(
                    client, "xadd", key, dict(fields), maxlen=maxlen, approximate=True
                ),
            )
        self._notify((key,))
        return text_of(entry_id)

    def batch(self, *, atomic: bool = True) -> Batch:
        """A pipeline; ``atomic`` wraps it in MULTI/EXEC (all keys share one slot)."""
        return Batch(self._run_batch, atomic)

    async def _run_batch(self, batch: Batch) -> list[Any]:
        """Send ``batch`` in one round trip: raw on a single server, else a fresh redis-py
        pipeline to the node of its slot (waiting for replicas under ``min_replicas``)."""
        if (wires := self.wires) is not None:
            if batch.atomic:
                replies = await self._on_wire(wires, [("MULTI",), *batch.words, ("EXEC",)])
                # A refusal while queueing (OOM, NOPERM...) aborts the whole (EXECABORT).
                self._raise_first(replies, "EXEC")
                replies = list(replies[-1])  # EXEC's array: the commands' own replies
            else:
                replies = await self._on_wire(wires, batch.words)
            self._raise_first(replies, "EXEC")
            self._notify(batch.streams)
            return replies

        async def write(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=batch.atomic)
            for name, args, kwargs in batch.commands:
                getattr(pipeline, name)(*args, **kwargs)
            async with self._errors():
                replies: list[Any] = await pipeline.execute()
            return replies

        # Every key of a batch is of one namespace, so of one cluster slot: the first
        # names the node whose replicas the batch waits for.
        replies = await self._durably(batch.commands[0][1][0], write)
        self._notify(batch.streams)
        return replies

    @sends("WATCH", "UNWATCH", "MULTI", "EXEC")
    async def transaction(
        self, watched: Sequence[str], plan: Callable[[Watched], Awaitable[Batch | None]]
    ) -> list[Any] | None:
        """Compare and set: WATCH ``watched``, let ``plan`` read them and return the writes
        to make (or None to make none), then MULTI/EXEC those writes, which Redis refuses
        when a watched key changed meanwhile; the plan is then run again on the new values.

        Every key is of one namespace (one cluster slot, one server). Works where Lua may
        not (the embedded bus runs no scripts). Returns the writes' replies or None.
        """

        async def attempt(client: Any) -> list[Any] | None:
            for _ in range(_CONTENDED_TRIES):
                async with client.pipeline(transaction=True) as pipe:
                    try:
                        async with self._errors():
                            await pipe.watch(*watched)
                            batch = await plan(Watched(pipe))
                            if batch is None:
                                await pipe.unwatch()
                                return None
                            pipe.multi()
                            for name, args, kwargs in batch.commands:
                                getattr(pipe, name)(*args, **kwargs)
                            replies: list[Any] = await pipe.execute()
                            return replies
                    except redis_errors.WatchError:
                        continue  # a watched key changed: plan again on its new value
            raise BusUnavailable(
                self.url, f"{watched[0]} kept changing: {_CONTENDED_TRIES} tries failed"
            )

        return await self._durably(watched[0], attempt)

    def wake(self, key: str) -> None:
        """Wake the embedded bus's blocked readers of ``key`` (a real BLOCK just times out)."""
        self._notify((key,))

    def _notify(self, keys: Sequence[str]) -> None:
        if self._memory is not None:
            self._memory.notifier.notify(keys)

    @sends("PEXPIRE")
    async def pexpire(self, key: str, millis: int) -> bool:
        return bool(await self._call("pexpire", key, millis))

    @sends("EXISTS")
    async def exists(self, *keys: str) -> int:
        """EXISTS: how many of ``keys`` exist (all of one namespace: one slot)."""
        return int(await self._call("exists", *keys)) if keys else 0

    @sends("DEL")
    async def delete(self, *keys: str) -> int:
        return int(await self._call("delete", *keys)) if keys else 0

    @sends("SCAN")
    async def scan_keys(self, pattern: str) -> list[str]:
        async with self._errors():
            return [text_of(key) async for key in self._client.scan_iter(match=pattern, count=500)]

    @sends("MEMORY|USAGE")
    async def memory_usage(self, keys: Sequence[str]) -> list[int | None]:
        """MEMORY USAGE of each key (bytes, with Redis's default sampling of large
        values), pipelined; None for a key that is gone. Raises ``BusRefused`` where the
        server has no MEMORY command (the embedded bus) or the user may not run it."""
        if not keys:
            return []
        pipeline = self._client.pipeline(transaction=False)
        for key in keys:
            pipeline.memory_usage(key)
        try:
            replies: list[Any] = await pipeline.execute()
        except FAILURES as exc:
            translated = self._translated(exc, "MEMORY USAGE")
            if isinstance(translated, BusUnavailable | BusRefused):
                raise translated from None
            raise BusRefused(self.url, "MEMORY USAGE", str(exc)) from None
        return [None if reply is None else int(reply) for reply in replies]

    # -- hashes ---------------------------------------------------------------------------

    @sends("HSET")
    async def hset(self, key: str, name: str, value: bytes) -> bool:
        """HSET one field; True when the field is new (it was not there before)."""
        return bool(await self._call("hset", key, name, value))

    @sends("HGET")
    async def hget(self, key: str, name: str) -> bytes | None:
        value: bytes | None = await self._call("hget", key, name)
        return value

    @sends("HGETALL")
    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._call("hgetall", key)
        return {text_of(name): value for name, value in raw.items()}

    @sends("HDEL")
    async def hdel(self, key: str, *names: str) -> int:
        return int(await self._call("hdel", key, *names)) if names else 0

    @sends("HSETNX")
    async def hsetnx(self, key: str, name: str, value: bytes) -> bool:
        return bool(await self._call("hsetnx", key, name, value))

    # -- streams: groups ------------------------------------------------------------------

    @sends("XGROUP|CREATE")
    async def ensure_group(self, key: str, group: str, start: str = "0") -> bool:
        """XGROUP CREATE ... MKSTREAM; False when the group already exists (BUSYGROUP)."""
        try:
            await self._call("xgroup_create", key, group, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    @sends("XREADGROUP")
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
            if (wires := self._wires) is not None:
                words = (
                    *("XREADGROUP", "GROUP", group, consumer, "COUNT", count),
                    *records.block(block),
                )
                replies = await self._on_wire(wires, [(*words, "STREAMS", key, start)])
                self._raise_group_reply(replies, key, group, "XREADGROUP")
                return stream_entries(replies[0])
            raw = await self._group_call(
                key, group, "xreadgroup", group, consumer, {key: start}, count=count, block=block
            )
            return records.entries(raw[0][1]) if raw else []

        # Only new entries can be waited for; a pending re-read answers at once.
        return await self._read_blocking(key, block_ms if start == ">" else None, read)

    @sends("XREADGROUP", "XPENDING")
    async def xreadgroup_and_pending(
        self, key: str, group: str, consumer: str, *, count: int, block_ms: int | None, rows: int
    ) -> tuple[list[Entry], list[PendingEntry]]:
        """XREADGROUP of new entries and then the group's first ``rows`` pending entries
        (every consumer's, oldest first) as they are just after that read: on a server in
        one round trip (a pipeline: XPENDING runs once the blocked read returned), on
        the embedded bus and a cluster as two calls, one after the other."""
        if self._memory is not None or self.cluster:
            entries = await self.xreadgroup(key, group, consumer, count=count, block_ms=block_ms)
            return entries, await self.xpending(key, group, count=rows)
        if (wires := self._wires) is not None:
            read = (
                *("XREADGROUP", "GROUP", group, consumer, "COUNT", count),
                *records.block(block_ms),
            )
            commands = [(*read, "STREAMS", key, ">"), ("XPENDING", key, group, "-", "+", rows)]
            replies = await self._on_wire(wires, commands)
            self._raise_group_reply(replies, key, group, "XREADGROUP")
            held = [records.raw_pending_entry(row) for row in replies[1]]
            return stream_entries(replies[0]), held
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xreadgroup(group, consumer, {key: ">"}, count=count, block=block_ms or None)
        pipeline.xpending_range(key, group, min="-", max="+", count=rows)
        try:
            async with self._errors():
                # Errors as replies, not raised: redis-py rewrites a raised one's message
                # (its first word is the code that says whether it is transient).
                raw, pending = await pipeline.execute(raise_on_error=False)
                for reply in (raw, pending):
                    if isinstance(reply, Exception):
                        raise reply
        except redis_errors.ResponseError as exc:
            _raise_group_missing(exc, key, group)
            raise
        held = [records.pending_entry(row) for row in pending]
        return (records.entries(raw[0][1]) if raw else []), held

    @sends("XREAD")
    async def xread(
        self, key: str, last_id: str, *, count: int, block_ms: int | None
    ) -> list[Entry]:
        """XREAD after ``last_id``; blocks up to ``block_ms`` when nothing is there."""

        async def read(block: int | None) -> list[Entry]:
            if (wires := self._wires) is not None:
                words = ("XREAD", "COUNT", count, *records.block(block), "STREAMS", key, last_id)
                return stream_entries(await self._one_on_wire(wires, words))
            raw = await self._call("xread", {key: last_id}, count=count, block=block)
            return records.entries(raw[0][1]) if raw else []

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
            _raise_group_missing(exc, key, group)
            raise

    @sends("XACK")
    async def xack(self, key: str, group: str, entry_ids: Sequence[str]) -> int:
        return int(await self._call("xack", key, group, *entry_ids)) if entry_ids else 0

    @sends("XPENDING")
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
        if (wires := self._wires) is not None:
            idle = () if min_idle_ms is None else ("IDLE", min_idle_ms)
            holder = () if consumer is None else (consumer,)
            words = ("XPENDING", key, group, *idle, start, end, count, *holder)
            replies = await self._on_wire(wires, [words])
            self._raise_group_reply(replies, key, group, "XPENDING")
            return [records.raw_pending_entry(row) for row in replies[0]]
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
        return [records.pending_entry(row) for row in raw]

    @sends("ZADD", "XPENDING")
    async def xpending_and_claim(
        self,
        key: str,
        group: str,
        *,
        end: str,
        count: int,
        claims: str,
        members: Mapping[str, float],
    ) -> tuple[list[PendingEntry], int]:
        """In one round trip: ``members`` added to sorted set ``claims`` where absent (ZADD
        NX: the first claim of each stands, whoever made it; how many were added), and
        the group's pending entries up to ``end`` (XPENDING, extended form)."""
        if (wires := self.wires) is not None:
            commands = [
                ("ZADD", claims, "NX", *records.scored(members)),
                ("XPENDING", key, group, "-", end, count),
            ]
            replies = await self._on_wire(wires, commands)
            self._raise_group_reply(replies, key, group, "XPENDING")
            return [records.raw_pending_entry(row) for row in replies[1]], int(replies[0])

        async def write(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            pipeline.zadd(claims, dict(members), nx=True)
            pipeline.xpending_range(key, group, min="-", max=end, count=count)
            async with self._errors():
                replies: list[Any] = await pipeline.execute(raise_on_error=False)
            return replies

        added, rows = await self._durably(key, write)
        for reply in (added, rows):
            if isinstance(reply, redis_errors.ResponseError):
                text = str(reply)
                if "NOGROUP" in text or "requires the key to exist" in text.lower():
                    raise GroupMissing(key, group)
                raise self._translated(reply, "XPENDING")
        return [records.pending_entry(row) for row in rows], int(added)

    def _raise_first(self, replies: Sequence[Any], command: str) -> None:
        """Raise the first error reply of a raw round trip, classified as ``_call``'s."""
        for reply in replies:
            if isinstance(reply, redis_errors.RedisError):
                translated = self._translated(reply, command)
                if translated is reply:
                    raise reply
                raise translated from None

    def _raise_group_reply(
        self, replies: Sequence[Any], key: str, group: str, command: str
    ) -> None:
        """``_raise_first``, with a missing group or stream as ``GroupMissing``."""
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                _raise_group_missing(reply, key, group)
        self._raise_first(replies, command)

    @sends("ZMSCORE")
    async def zmscore(self, key: str, members: Sequence[str]) -> list[float | None]:
        scores = await self._call("zmscore", key, list(members))
        return [None if score is None else float(score) for score in scores]

    @sends("ZREMRANGEBYSCORE")
    async def zremrangebyscore(self, key: str, low: float, high: float) -> int:
        return int(await self._call("zremrangebyscore", key, low, high))

    @sends("ZRANGE")
    async def zrange_by_score(
        self, key: str, low: str, high: str, *, count: int, reverse: bool = False
    ) -> list[bytes]:
        """Members scored from ``low`` to ``high`` (``-inf``, ``(5`` for exclusive...),
        at most ``count``, in score order or ``reverse`` (ZRANGE BYSCORE [REV] LIMIT)."""
        first, last = (high, low) if reverse else (low, high)
        members: list[bytes] = await self._call(
            "zrange", key, first, last, byscore=True, desc=reverse, offset=0, num=count
        )
        return members

    @sends("XCLAIM")
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
        return [text_of(entry_id) for entry_id in raw]

    @sends("XAUTOCLAIM")
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
        deleted = [text_of(entry_id) for entry_id in raw[2]] if len(raw) > 2 else []
        return text_of(raw[0]), records.entries(raw[1]), deleted

    @sends("XINFO|GROUPS")
    async def xinfo_groups(self, key: str) -> list[GroupInfo]:
        try:
            raw = await self._call("xinfo_groups", key)
        except redis_errors.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise
        return [
            GroupInfo(
                name=text_of(row["name"]),
                consumers=int(row["consumers"]),
                pending=int(row["pending"]),
                last_delivered=text_of(row["last-delivered-id"]),
                lag=None if row.get("lag") is None else int(row["lag"]),
            )
            for row in raw
        ]

    @sends("XINFO|CONSUMERS")
    async def xinfo_consumers(self, key: str, group: str) -> list[ConsumerInfo]:
        raw = await self._group_call(key, group, "xinfo_consumers", key, group)
        return [
            ConsumerInfo(
                name=text_of(row["name"]),
                pending=int(row["pending"]),
                idle_ms=int(row["idle"]),
                inactive_ms=None if row.get("inactive") is None else int(row["inactive"]),
            )
            for row in raw
        ]

    @sends("XGROUP|DESTROY")
    async def destroy_group(self, key: str, group: str) -> bool:
        """XGROUP DESTROY; False when there was no such group."""
        try:
            return bool(await self._call("xgroup_destroy", key, group))
        except redis_errors.ResponseError as exc:
            if "no such key" in str(exc).lower() or "requires the key" in str(exc).lower():
                return False
            raise

    @sends("XGROUP|DELCONSUMER")
    async def delete_consumer(self, key: str, group: str, consumer: str) -> int:
        """XGROUP DELCONSUMER; its pending entries become unclaimable, so drain first."""
        return int(await self._group_call(key, group, "xgroup_delconsumer", key, group, consumer))

    @sends("XRANGE")
    async def xrange(self, key: str, start: str, end: str, count: int) -> list[Entry]:
        if (wires := self._wires) is not None:
            words = ("XRANGE", key, start, end, "COUNT", count)
            return range_entries(await self._one_on_wire(wires, words))
        return records.entries(await self._call("xrange", key, min=start, max=end, count=count))

    @sends("XREVRANGE")
    async def xrevrange(self, key: str, end: str, start: str, count: int) -> list[Entry]:
        return records.entries(await self._call("xrevrange", key, max=end, min=start, count=count))

    @sends("SET")
    async def set(
        self, key: str, value: bytes, *, ttl_ms: int, only_if_absent: bool = False
    ) -> bool:
        """SET ... PX [NX]; False when ``only_if_absent`` and the key exists."""
        return bool(await self._call("set", key, value, px=ttl_ms, nx=only_if_absent))

    @sends("GET")
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", key)
        return value

    @sends("XPENDING")
    async def oldest_pending(self, key: str, group: str) -> str | None:
        """The smallest entry id in a group's pending list (XPENDING summary form)."""
        summary = await self._group_call(key, group, "xpending", key, group)
        lowest = summary.get("min") if isinstance(summary, dict) else None
        return None if not lowest else text_of(lowest)

    @sends("XTRIM")
    async def xtrim(
        self,
        key: str,
        *,
        minid: str | None = None,
        maxlen: int | None = None,
        limit: int | None = None,
    ) -> int:
        """XTRIM by MINID or MAXLEN; returns how many entries went.

        Without ``limit`` exact, to the entry. With ``limit`` approximate (``~``): whole
        stream nodes only, at most ``limit`` entries (0: no cap; the server's default
        cap of 10,000 entries per call never applies), so a call costs a few
        microseconds per node however far behind the stream is.
        """
        options: dict[str, Any] = (
            {"approximate": False} if limit is None else {"approximate": True, "limit": limit}
        )
        return int(await self._call("xtrim", key, maxlen=maxlen, minid=minid, **options))

    @sends("XDEL")
    async def xdel(self, key: str, *entry_ids: str) -> int:
        return int(await self._call("xdel", key, *entry_ids)) if entry_ids else 0

    @sends("XLEN")
    async def xlen(self, key: str) -> int:
        return int(await self._call("xlen", key))

    @sends("HINCRBY")
    async def hincrby(self, key: str, name: str, amount: int = 1) -> int:
        return int(await self._call("hincrby", key, name, amount))


_CONTENDED_TRIES: Final = 20
"""How often ``transaction`` plans again when its watched keys keep changing."""
