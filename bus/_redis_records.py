"""Typed rows of Redis's replies (stream entries, XPENDING, XINFO) and the words of the
commands the adapter sends raw (``_wire``): shared by ``_redis`` and ``_redis_batch``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._wire import Command, text_of

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


def raw_pending_entry(row: Sequence[Any]) -> PendingEntry:
    """One row of XPENDING's extended form as the server sends it (id, consumer, idle
    milliseconds, deliveries)."""
    entry_id, consumer, idle_ms, deliveries = row
    return PendingEntry(text_of(entry_id), text_of(consumer), int(idle_ms), int(deliveries))


def pending_entry(row: Any) -> PendingEntry:
    """One row of XPENDING's extended form, as redis-py parses it."""
    return PendingEntry(
        entry_id=text_of(row["message_id"]),
        consumer=text_of(row["consumer"]),
        idle_ms=int(row["time_since_delivered"]),
        deliveries=int(row["times_delivered"]),
    )


def flat(fields: Fields) -> list[Any]:
    """An entry's fields as XADD's words: name, value, name, value..."""
    return [word for pair in fields.items() for word in pair]


def scored(members: Mapping[Any, float]) -> list[Any]:
    """Sorted-set members as ZADD's words: score, member, score, member..."""
    return [word for member, score in members.items() for word in (score, member)]


def trim(maxlen: int | None, *, exact: bool = False) -> Command:
    """XADD's words for ``MAXLEN`` (approximate unless ``exact``); none without it."""
    return () if maxlen is None else ("MAXLEN", "=" if exact else "~", maxlen)


def block(millis: int | None) -> Command:
    """A read's words for ``BLOCK``; none for a read that answers at once."""
    return ("BLOCK", millis) if millis else ()


def entries(raw: Sequence[Any] | None) -> list[Entry]:
    return [(text_of(entry_id), dict(fields or {})) for entry_id, fields in raw or ()]
