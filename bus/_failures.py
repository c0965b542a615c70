"""Failure records: a stream of records and counters per plugin, consumer and kind."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ._constants import FAILURES_MAXLEN, RECORD_FIELD
from ._contract import Failure, FailureKind, decode_failure, encode
from ._keys import Keys
from ._outcomes import add_outcomes, of_failure
from ._redis import Redis
from ._redis_batch import Batch

NO_CONSUMER = "-"
"""The counter field's consumer part when no consumer held the event."""


@dataclass(frozen=True, slots=True)
class FailureCount:
    plugin: str
    consumer: str | None
    kind: str
    count: int


def add_failure(batch: Batch, keys: Keys, failure: Failure) -> None:
    """Queue one failure record and its counter into ``batch`` (no round trip of its own)."""
    batch.xadd(keys.failures, {RECORD_FIELD: encode(failure)}, maxlen=FAILURES_MAXLEN)
    consumer = failure.consumer or NO_CONSUMER
    batch.hincrby(keys.failure_counts, f"{failure.plugin}|{consumer}|{failure.kind}")


class FailureLog:
    """Every failure of the bus, recorded against the consumer that held the event."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, failures: Sequence[Failure]) -> None:
        """Record ``failures``; those that name their event's stream entry (a registry's
        verdicts: timeout, no_consumer, crashed) join the outcome history too."""
        if not failures:
            return
        batch = self._redis.batch()
        for failure in failures:
            add_failure(batch, self._keys, failure)
        add_outcomes(
            batch, self._keys, [of_failure(f.entry_id, f) for f in failures if f.entry_id]
        )
        await batch.execute()

    async def recent(
        self,
        count: int = 20,
        *,
        plugin: str | None = None,
        consumer: str | None = None,
        kind: FailureKind | None = None,
    ) -> list[Failure]:
        """The newest failures first, optionally of one plugin, consumer or kind."""
        found: list[Failure] = []
        end = "+"
        while len(found) < count:
            page = await self._redis.xrevrange(self._keys.failures, end, "-", count=max(count, 100))
            for entry_id, fields in page:
                end = f"({entry_id}"
                failure = decode_failure(fields[RECORD_FIELD])
                if (
                    (plugin is None or failure.plugin == plugin)
                    and (consumer is None or failure.consumer == consumer)
                    and (kind is None or failure.kind == kind)
                ):
                    found.append(failure)
            if len(page) < max(count, 100):
                break
        return found[:count]

    async def counts(self) -> list[FailureCount]:
        """Failure counters, one per plugin, consumer and kind."""
        raw = await self._redis.hgetall(self._keys.failure_counts)
        counts: Counter[tuple[str, str, str]] = Counter()
        for name, value in raw.items():
            plugin, consumer, kind = name.rsplit("|", 2)
            counts[(plugin, consumer, kind)] += int(value)
        return [
            FailureCount(plugin, None if consumer == NO_CONSUMER else consumer, kind, count)
            for (plugin, consumer, kind), count in sorted(counts.items())
        ]
