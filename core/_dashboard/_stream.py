"""The dashboard's live feed: one reader of the bus for every open page, as server-sent
events (``GET /api/stream``).

Two tasks read the bus, whatever the number of pages: one follows new events and their
outcomes as ``replay --follow`` does (``core._follow``), one reads the status every
``interval`` seconds. Each message goes to every page's bounded queue; a page that falls
that far behind is dropped (its EventSource reconnects and starts again), so a stalled
browser never holds the readers back.

Messages (the ``event:`` name, then one JSON object as ``data:``):

* ``status``: the object of ``GET /api/status``, first on connecting, then every interval;
* ``event``: one event, as ``GET /api/history`` lists it (on connecting, the last
  ``BACKFILL`` events; then each new one);
* ``outcome``: one plugin's answer to an event (an ``OutcomeRecord``), as it is recorded
  (for ``core._follow.FOLLOW_WINDOW`` seconds after the event, for the last
  ``FOLLOW_OPEN`` events at most);
* ``live``: ``{}``, once what a page receives on connecting was sent: what follows is new;
* ``bus_error``: ``{"error": ...}`` while the bus cannot be read.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from rapid_objection.bus import Bus, BusError, HistoryEntry, OutcomeRecord, collect_status

from .._follow import OutcomeKey, follow, outcome_key
from .._replay import Selection, as_row

log = logging.getLogger(__name__)

QUEUE: Final = 1_000
"""Messages one page may fall behind before it is dropped (a burst of events is fine)."""

BACKFILL: Final = 25
"""Events (with their outcomes) a page receives on connecting, so it is never blank."""

REMEMBERED: Final = 1_000
"""Recent events whose outcomes already sent the feed remembers: after a bus error it
follows them again without sending what it sent twice."""

KEEPALIVE: Final = 15.0
"""Seconds of silence after which a comment line is sent: proxies close idle streams."""

RETRY_AFTER_ERROR: Final = 1.0
"""Seconds the readers wait after a bus error (Redis away) before they try again."""

Message = tuple[str, bytes]
"""(the SSE event name, its JSON data)."""


def frame(name: str, data: bytes) -> bytes:
    """One server-sent event; JSON has no raw newline, so ``data`` is one line."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class _Followed:
    """One recent event: its row, and its outcomes sent so far."""

    __slots__ = ("entry", "outcomes", "row")

    def __init__(self, entry: HistoryEntry) -> None:
        self.entry = entry
        self.row = msgspec.json.encode(as_row(entry))
        self.outcomes: dict[OutcomeKey, bytes] = {}


class Feed:
    """Reads the bus once and fans what it reads out to every open page."""

    def __init__(self, bus: Bus, *, interval: float = 1.0, recent_failures: int = 20) -> None:
        self.bus = bus
        self.interval = interval
        self.recent_failures = recent_failures
        self.status: bytes | None = None
        """The newest status JSON: what a page receives first."""
        self._followed: OrderedDict[str, _Followed] = OrderedDict()
        """Entry id -> the event, oldest first."""
        self._backfill: deque[_Followed] = deque(maxlen=BACKFILL)
        """The last events, followed or not any more."""
        self._pages: set[MemoryObjectSendStream[Message]] = set()
        self._closed = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read until cancelled; started once the first status is read (or failed)."""
        after, backlog = await self._last_events()
        await self._read_status()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._follow, after, backlog)
            tasks.start_soon(self._poll)
            task_status.started()

    def routes(self) -> list[Route]:
        return [Route("/api/stream", self.stream)]

    async def stream(self, request: Request) -> StreamingResponse:
        first: list[Message] = [] if self.status is None else [("status", self.status)]
        for followed in self._backfill:
            first.append(("event", followed.row))
            first.extend(("outcome", outcome) for outcome in followed.outcomes.values())
        first.append(("live", b"{}"))
        send, receive = anyio.create_memory_object_stream[Message](len(first) + QUEUE)
        for message in first:
            send.send_nowait(message)
        if self._closed:
            send.close()
        else:
            self._pages.add(send)
        return StreamingResponse(
            self._frames(send, receive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _frames(
        self, send: MemoryObjectSendStream[Message], receive: MemoryObjectReceiveStream[Message]
    ) -> AsyncIterator[bytes]:
        # Starlette cancels this generator when the page goes away.
        try:
            yield b"retry: 2000\n\n"
            async with receive:
                while True:
                    # No yield inside the cancel scope: the generator is suspended there.
                    message: Message | None = None
                    with anyio.move_on_after(KEEPALIVE):
                        message = await receive.receive()
                    yield b": keepalive\n\n" if message is None else frame(*message)
        except anyio.EndOfStream:
            return  # dropped for falling behind, or the server stops: the page reconnects
        finally:
            self._pages.discard(send)
            send.close()

    def close(self) -> None:
        """End every page's stream (the server is stopping: a live feed never ends by
        itself, and the server would wait for it)."""
        self._closed = True
        for page in list(self._pages):
            page.close()
        self._pages.clear()

    def publish(self, name: str, data: bytes) -> None:
        """Queue one message for every page; a page whose queue is full is dropped."""
        for page in list(self._pages):
            try:
                page.send_nowait((name, data))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._pages.discard(page)
                page.close()

    async def _last_events(self) -> tuple[str, list[HistoryEntry]]:
        """The newest event's entry id and the last ``BACKFILL`` events, oldest first."""
        while True:
            try:
                page = await self.bus.history.page(size=BACKFILL, newest_first=True)
            except BusError as exc:
                log.warning("dashboard: reading the event stream: %s", exc)
                await anyio.sleep(RETRY_AFTER_ERROR)
                continue
            entries = page.entries[::-1]
            # Following on from the newest event: whatever is after it is not one either.
            return (entries[-1].entry_id if entries else "0-0"), entries

    async def _follow(self, after: str, backlog: list[HistoryEntry]) -> None:
        """Every new event and every outcome of the recent ones, as they come; after a
        bus error, again from the last event seen (what was sent is not sent twice)."""
        while True:
            try:
                async for item in follow(self.bus, Selection(), after=after, backlog=backlog):
                    if isinstance(item, OutcomeRecord):
                        self._outcome(item)
                    else:
                        self._event(item)
                        after = item.entry_id
            except BusError as exc:
                log.warning("dashboard: following the event stream: %s", exc)
                self.publish("bus_error", msgspec.json.encode({"error": str(exc)}))
                await anyio.sleep(RETRY_AFTER_ERROR)
                backlog = [followed.entry for followed in self._followed.values()]

    def _event(self, entry: HistoryEntry) -> None:
        if entry.entry_id in self._followed:
            return  # followed again after a bus error
        followed = _Followed(entry)
        self._followed[entry.entry_id] = followed
        self._backfill.append(followed)
        while len(self._followed) > REMEMBERED:
            self._followed.popitem(last=False)
        self.publish("event", followed.row)

    def _outcome(self, record: OutcomeRecord) -> None:
        data = msgspec.json.encode(record)
        followed = self._followed.get(record.entry_id)
        if followed is not None:
            key = outcome_key(record)
            if key in followed.outcomes:
                return
            followed.outcomes[key] = data
        self.publish("outcome", data)

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await self._read_status()

    async def _read_status(self) -> None:
        try:
            report = await collect_status(self.bus, recent=self.recent_failures)
        except BusError as exc:
            log.warning("dashboard: reading the status: %s", exc)
            self.publish("bus_error", msgspec.json.encode({"error": str(exc)}))
            return
        self.status = report.json()
        self.publish("status", self.status)
