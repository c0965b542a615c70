"""The event history: the stream read back by id or time range, app and type, in pages."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass

import msgspec

from ._constants import EVENT_FIELD
from ._contract import Envelope, decode_envelope
from ._keys import Keys
from ._redis import Redis


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    entry_id: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[HistoryEntry]
    cursor: str | None
    """Pass as ``after`` to read the next page; None when the history is exhausted."""
    undecodable: int = 0
    """Entries in this page's range that are not valid envelopes (skipped)."""


def time_to_id(seconds: float) -> str:
    """The smallest stream id at or after a Unix time (stream ids are milliseconds)."""
    return f"{int(seconds * 1000)}-0"


class History:
    """Past events of the stream, oldest first; the basis of audit and replay."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def page(
        self,
        *,
        after: str | None = None,
        since: float | None = None,
        until: float | None = None,
        app: str | None = None,
        types: Collection[str] = (),
        size: int = 100,
        newest_first: bool = False,
    ) -> Page:
        """Up to ``size`` matching events after entry ``after`` (or from ``since``);
        ``newest_first``: before entry ``after`` (or from ``until``) going back."""
        low = time_to_id(since) if since is not None else "-"
        high = f"{int(until * 1000)}-18446744073709551615" if until is not None else "+"
        if after:
            low, high = (low, f"({after}") if newest_first else (f"({after}", high)
        found: list[HistoryEntry] = []
        undecodable = 0
        while len(found) < size:
            if newest_first:
                chunk = await self._redis.xrevrange(self._keys.events, high, low, count=size)
            else:
                chunk = await self._redis.xrange(self._keys.events, low, high, count=size)
            for entry_id, fields in chunk:
                if newest_first:
                    high = f"({entry_id}"
                else:
                    low = f"({entry_id}"
                try:
                    envelope = decode_envelope(fields.get(EVENT_FIELD, b""))
                except (msgspec.DecodeError, ValueError):
                    undecodable += 1
                    continue
                if (app is None or envelope.app == app) and (not types or envelope.type in types):
                    found.append(HistoryEntry(entry_id, envelope))
                    if len(found) == size:
                        return Page(found, entry_id, undecodable)
            if len(chunk) < size:
                return Page(found, None, undecodable)
        return Page(found, None, undecodable)

    async def iterate(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        app: str | None = None,
        types: Collection[str] = (),
        size: int = 500,
    ) -> AsyncGenerator[HistoryEntry, None]:
        """Every matching event, page by page."""
        cursor: str | None = None
        while True:
            page = await self.page(
                after=cursor, since=since, until=until, app=app, types=types, size=size
            )
            for entry in page.entries:
                yield entry
            if page.cursor is None:
                return
            cursor = page.cursor
