"""The bus of one namespace: a Redis connection, its keys and the services built on them."""

from __future__ import annotations

from types import TracebackType

from ._constants import DEFAULT_NAMESPACE, EVENT_FIELD, SIGNATURE_FIELD
from ._contract import Envelope, encode
from ._directory import Directory
from ._dlq_bounds import DeadLetterBounds
from ._failures import FailureLog
from ._history import History
from ._keyring import Keyring
from ._keys import Keys, check_namespace
from ._outbox import Outbox
from ._outcomes import OutcomeLog
from ._redis import Redis
from ._topology import with_options


class Bus:
    """One namespace of one Redis server (or of the embedded bus, ``memory://``).

    Open it with ``async with Bus.connect(url, namespace) as bus:`` or ``await bus.open()``.
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        dead_letters: DeadLetterBounds | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        check_namespace(namespace)
        self.redis = redis
        self.dead_letters = dead_letters or DeadLetterBounds()
        """How big the dead-letter stream may grow (``[bus] dlq_*``), as this process
        writes and trims it."""
        self.namespace = namespace
        self.keys = Keys(namespace)
        self.keyring = keyring
        """With a keyring every event published is signed, every event read and every
        ack is verified (docs/security.md); without one nothing is."""
        self.directory = Directory(redis, self.keys)
        self.failures = FailureLog(redis, self.keys)
        self.history = History(redis, self.keys)
        self.outcomes = OutcomeLog(redis, self.keys)
        """Every plugin's outcome of every event still in the history."""
        self._publisher = Outbox(redis, self.keys.events)

    @classmethod
    def connect(
        cls,
        url: str = "memory://",
        namespace: str = DEFAULT_NAMESPACE,
        *,
        cluster: bool | None = None,
        min_replicas: int | None = None,
        dead_letters: DeadLetterBounds | None = None,
        keyring: Keyring | None = None,
    ) -> Bus:
        """A bus for ``url``; nothing is sent until it is opened. ``cluster`` and
        ``min_replicas``, when given, override the URL's options of those names."""
        url = with_options(url, cluster=cluster, min_replicas=min_replicas)
        return cls(Redis.connect(url), namespace, dead_letters=dead_letters, keyring=keyring)

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
        return await self.publish_encoded(envelope.id, encode(envelope))

    async def publish_encoded(self, event_id: str, data: bytes) -> str:
        """``publish`` of an envelope encoded already (``event_id`` is its id)."""
        return await self._publisher.publish(event_id, self._sealed(data))

    async def publish_encoded_many(self, events: list[tuple[str, bytes]]) -> list[str]:
        """Several encoded envelopes (id, data), in order, in one round trip (shared
        with concurrent publishers); their entry ids. Raises the first error when any
        could not be published (the others were)."""
        sealed = [(event_id, self._sealed(data)) for event_id, data in events]
        return await self._publisher.publish_many(sealed)

    def _sealed(self, data: bytes) -> dict[bytes, bytes]:
        """The stream entry's fields of an encoded envelope: it, and its signatures when
        this bus has a keyring."""
        fields = {EVENT_FIELD: data}
        if self.keyring is not None:
            fields[SIGNATURE_FIELD] = self.keyring.seal_event(data)
        return fields

    async def ensure_group(self, plugin: str, start: str = "$") -> bool:
        """Create ``plugin``'s consumer group unless it exists: at the stream's end, or
        after entry ``start``; True when it was created."""
        return await self.redis.ensure_group(self.keys.events, plugin, start=start)
