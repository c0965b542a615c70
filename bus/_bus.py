"""The bus of one namespace: a Redis connection, its keys and the services built on them."""

from __future__ import annotations

from types import TracebackType

import anyio

from ._constants import DEFAULT_NAMESPACE, EVENT_FIELD
from ._contract import Envelope, encode
from ._directory import Directory
from ._errors import NamespaceError
from ._failures import FailureLog
from ._history import History
from ._keys import Keys
from ._redis import Redis


class Bus:
    """One namespace of one Redis server (or of the embedded bus, ``memory://``).

    Open it with ``async with Bus.connect(url, namespace) as bus:`` or ``await bus.open()``.
    """

    def __init__(self, redis: Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not namespace or any(char in namespace for char in "{}: "):
            raise NamespaceError(namespace)
        self.redis = redis
        self.namespace = namespace
        self.keys = Keys(namespace)
        self.directory = Directory(redis, self.keys)
        self.failures = FailureLog(redis, self.keys)
        self.history = History(redis, self.keys)
        self._publisher = _Pipeline(redis, self.keys.events)

    @classmethod
    def connect(cls, url: str = "memory://", namespace: str = DEFAULT_NAMESPACE) -> Bus:
        """A bus for ``url``; nothing is sent until it is opened."""
        return cls(Redis.connect(url), namespace)

    @property
    def url(self) -> str:
        """The bus URL with its password masked."""
        return self.redis.url

    @property
    def embedded(self) -> bool:
        return self.redis.embedded

    async def open(self) -> Bus:
        """Check that the server answers; raises ``BusUnavailable`` naming the URL."""
        await self.redis.open()
        return self

    async def close(self) -> None:
        await self.redis.close()

    async def __aenter__(self) -> Bus:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, envelope: Envelope) -> str:
        """Append one event to the stream; returns its stream entry id.

        Concurrent callers share round trips: the first one sends every event queued
        by then as one pipeline (one XADD each), the others wait for their ids. A lone
        caller costs one XADD, as before.
        """
        return await self._publisher.publish(encode(envelope))

    async def ensure_group(self, plugin: str) -> bool:
        """Create ``plugin``'s consumer group at the stream's end unless it exists."""
        return await self.redis.ensure_group(self.keys.events, plugin, start="$")


class _Slot:
    __slots__ = ("data", "done", "entry_id", "error")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = anyio.Event()
        self.entry_id = ""
        self.error: BaseException | None = None


class _Pipeline:
    """Coalesces concurrent publishes into pipelined round trips."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._queue: list[_Slot] = []
        self._sending = False

    async def publish(self, data: bytes) -> str:
        slot = _Slot(data)
        self._queue.append(slot)
        if self._sending:
            await slot.done.wait()
        else:
            self._sending = True
            try:
                # Shielded: the events of other callers ride on this round trip. No yield
                # before the first send (that would cost a lone caller latency): callers
                # that arrive while it is in flight go together in the next one.
                with anyio.CancelScope(shield=True):
                    while self._queue:
                        await self._send()
            finally:
                self._sending = False
        if slot.error is not None:
            raise slot.error
        return slot.entry_id

    async def _send(self) -> None:
        slots, self._queue = self._queue, []
        try:
            if len(slots) == 1:
                ids = [await self._redis.xadd(self._key, {EVENT_FIELD: slots[0].data})]
            else:
                ids = await self._redis.xadd_many(
                    self._key, [{EVENT_FIELD: slot.data} for slot in slots]
                )
        except Exception as exc:
            for slot in slots:
                slot.error = exc
                slot.done.set()
            return
        for slot, entry_id in zip(slots, ids, strict=True):
            slot.entry_id = entry_id
            slot.done.set()
