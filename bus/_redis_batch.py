"""The adapter's batches of writes (one round trip, MULTI/EXEC when atomic) and the reads
of a WATCHed transaction plan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ._redis_records import Fields, flat, scored, trim
from ._sends import sends
from ._wire import Command

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A command as redis-py's pipeline method takes it: name, arguments, keywords."""


class Watched:
    """The reads of a ``Redis.transaction`` plan, made on the connection that WATCHes."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    @sends("GET")
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._pipe.get(key)
        return value

    @sends("HGET")
    async def hget(self, key: str, name: str) -> bytes | None:
        value: bytes | None = await self._pipe.hget(key, name)
        return value


class Batch:
    """A typed pipeline of writes, sent in one round trip (MULTI/EXEC when atomic).

    The commands are kept here, not in a redis-py pipeline: redis-py empties a pipeline
    even when ``execute`` fails, so a retry after a lost connection would send nothing
    and look like success. Each ``execute`` builds a fresh pipeline from the list.
    """

    def __init__(self, run: Callable[[Batch], Awaitable[list[Any]]], atomic: bool) -> None:
        self._run = run
        """The adapter's way of sending a batch (``Redis.batch`` gives its own)."""
        self.atomic = atomic
        self._commands: list[Call] = []
        self._words: list[Command] = []
        self._streams: set[str] = set()

    def __len__(self) -> int:
        return len(self._commands)

    def _add(self, words: Command, name: str, *args: Any, **kwargs: Any) -> Batch:
        self._words.append(words)
        self._commands.append((name, args, kwargs))
        return self

    @sends("XADD")
    def xadd(
        self, key: str, fields: Fields, maxlen: int | None = None, *, exact: bool = False
    ) -> Batch:
        """XADD; ``maxlen`` trims approximately (``MAXLEN ~``) unless ``exact``."""
        self._streams.add(key)
        words = ("XADD", key, *trim(maxlen, exact=exact), "*", *flat(fields))
        return self._add(words, "xadd", key, dict(fields), maxlen=maxlen, approximate=not exact)

    @sends("XTRIM")
    def xtrim_minid(self, key: str, minid: str) -> Batch:
        """XTRIM MINID (exact): drop the entries older than ``minid``."""
        words = ("XTRIM", key, "MINID", minid)
        return self._add(words, "xtrim", key, minid=minid, approximate=False)

    @sends("ZADD")
    def zadd(self, key: str, members: Mapping[bytes, float]) -> Batch:
        """ZADD of several members at once (one command)."""
        if not members:
            return self
        return self._add(("ZADD", key, *scored(members)), "zadd", key, dict(members))

    @sends("XACK")
    def xack(self, key: str, group: str, entry_ids: Sequence[str]) -> Batch:
        if not entry_ids:
            return self
        return self._add(("XACK", key, group, *entry_ids), "xack", key, group, *entry_ids)

    @sends("PEXPIRE")
    def pexpire(self, key: str, millis: int) -> Batch:
        return self._add(("PEXPIRE", key, millis), "pexpire", key, millis)

    @sends("HSET")
    def hset(self, key: str, name: str, value: bytes) -> Batch:
        return self._add(("HSET", key, name, value), "hset", key, name, value)

    @sends("HINCRBY")
    def hincrby(self, key: str, name: str, amount: int = 1) -> Batch:
        return self._add(("HINCRBY", key, name, amount), "hincrby", key, name, amount)

    @sends("HDEL")
    def hdel(self, key: str, *names: str) -> Batch:
        return self._add(("HDEL", key, *names), "hdel", key, *names)

    @sends("SET")
    def set(self, key: str, value: bytes, *, ttl_ms: int) -> Batch:
        return self._add(("SET", key, value, "PX", ttl_ms), "set", key, value, px=ttl_ms)

    @sends("DEL")
    def delete(self, *keys: str) -> Batch:
        return self._add(("DEL", *keys), "delete", *keys)

    @property
    def commands(self) -> list[Call]:
        return list(self._commands)

    @property
    def words(self) -> Sequence[Command]:
        """The same commands as the server reads them, for raw round trips (not copied:
        every ack batch is sent this way)."""
        return self._words

    @property
    def streams(self) -> list[str]:
        """The streams the batch adds to, for waking their blocked readers."""
        return sorted(self._streams)

    @sends("MULTI", "EXEC")
    async def execute(self) -> list[Any]:
        """Send every command; safe to call again after ``BusUnavailable``. The replies
        are the server's (raw on a single server, redis-py's parsing elsewhere): callers
        that read them read counts and entry ids, the same either way."""
        if not self._commands:
            return []
        return await self._run(self)
