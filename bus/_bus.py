"""The bus of one namespace: a Redis connection, its keys and the services built on them."""

from __future__ import annotations

from types import TracebackType

from ._constants import DEFAULT_NAMESPACE
from ._contract import Envelope, encode
from ._directory import Directory
from ._errors import NamespaceError
from ._failures import FailureLog
from ._history import History
from ._keys import Keys
from ._outbox import Outbox
from ._redis import Redis
from ._topology import with_options


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
        self._publisher = Outbox(redis, self.keys.events)

    @classmethod
    def connect(
        cls,
        url: str = "memory://",
        namespace: str = DEFAULT_NAMESPACE,
        *,
        cluster: bool | None = None,
        min_replicas: int | None = None,
    ) -> Bus:
        """A bus for ``url``; nothing is sent until it is opened. ``cluster`` and
        ``min_replicas``, when given, override the URL's options of those names."""
        url = with_options(url, cluster=cluster, min_replicas=min_replicas)
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
        return await self._publisher.publish(envelope.id, encode(envelope))

    async def ensure_group(self, plugin: str) -> bool:
        """Create ``plugin``'s consumer group at the stream's end unless it exists."""
        return await self.redis.ensure_group(self.keys.events, plugin, start="$")
