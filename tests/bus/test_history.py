"""History: the event stream read back by app, type and time, in pages, on both lanes."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    SCHEMA_VERSIONS,
    AppRegistered,
    AppUnregistered,
    Bus,
    ConnectionInfo,
    Envelope,
    HealthCheck,
    Payload,
    Publisher,
    new_event_id,
)
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import encode

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")


@dataclass
class Published:
    """What a test wrote to the stream: the decodable events and the poison entries."""

    ids: list[str]
    """Entry ids of the valid events, oldest first."""
    by_app: dict[str, list[str]]
    by_type: dict[str, list[str]]
    poison: list[str]


async def publish_mix(bus: Bus) -> Published:
    """Valid events of two apps and three types, interleaved with four undecodable entries."""
    publisher = Publisher(bus, "reg-h")
    plan: list[tuple[str, Payload]] = [
        ("shop", AppRegistered(connection=CONNECTION)),
        ("shop", HealthCheck(health={"n": 1})),
        ("blog", AppRegistered(connection=CONNECTION)),
        ("shop", HealthCheck(health={"n": 2})),
        ("blog", AppUnregistered()),
        ("shop", AppRegistered(connection=CONNECTION)),
        ("blog", HealthCheck(health={"n": 3})),
        ("shop", AppUnregistered()),
    ]
    published = Published([], {}, {}, [])
    future = Envelope(
        id=new_event_id(),
        type="health_check",
        version=SCHEMA_VERSIONS["health_check"] + 1,
        registry="reg-h",
        app="shop",
        time=time.time(),
        seq=99,
        payload=HealthCheck(),
    )
    poison = [
        {EVENT_FIELD: b"\xc1 not msgpack"},
        {b"x": b"no event field"},
        {EVENT_FIELD: encode(future)},
        {EVENT_FIELD: msgspec.msgpack.encode({"id": "x", "type": "health_check"})},
    ]
    for index, (app, payload) in enumerate(plan):
        if index % 2 == 1 and poison:
            published.poison.append(await bus.redis.xadd(bus.keys.events, poison.pop()))
        envelope, entry_id = await publisher.publish(payload, app=app)
        published.ids.append(entry_id)
        published.by_app.setdefault(app, []).append(entry_id)
        published.by_type.setdefault(envelope.type, []).append(entry_id)
    return published


async def read_pages(
    bus: Bus,
    size: int,
    *,
    app: str | None = None,
    types: Collection[str] = (),
) -> tuple[list[list[str]], int]:
    """Every page of a query by following cursors: entry ids per page, undecodable total."""
    pages: list[list[str]] = []
    undecodable = 0
    cursor: str | None = None
    for _ in range(100):
        page = await bus.history.page(after=cursor, app=app, types=types, size=size)
        pages.append([entry.entry_id for entry in page.entries])
        undecodable += page.undecodable
        if page.cursor is None:
            return pages, undecodable
        cursor = page.cursor
    raise AssertionError("the cursor never ran out")


class TestPage:
    async def test_empty_history_has_one_empty_last_page(self, bus: Bus) -> None:
        """A namespace without events gives an empty page without a cursor."""
        page = await bus.history.page()
        assert (page.entries, page.cursor, page.undecodable) == ([], None, 0)

    async def test_page_holds_envelopes_oldest_first(self, bus: Bus) -> None:
        """A page returns the decoded envelopes with their entry ids, oldest first."""
        published = await publish_mix(bus)
        page = await bus.history.page(size=100)
        assert [entry.entry_id for entry in page.entries] == published.ids
        assert [entry.envelope.seq for entry in page.entries] == list(range(1, 9))
        assert page.entries[1].envelope.payload == HealthCheck(health={"n": 1})
        assert page.cursor is None

    @pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 100], ids=lambda size: f"size-{size}")
    async def test_cursors_cover_everything_exactly_once(self, bus: Bus, size: int) -> None:
        """Following cursors yields every valid event once, in order, in pages of ``size``."""
        published = await publish_mix(bus)
        pages, undecodable = await read_pages(bus, size)
        assert [entry for page in pages for entry in page] == published.ids
        assert all(len(page) == size for page in pages[:-1])
        assert undecodable == len(published.poison)

    @pytest.mark.parametrize(
        ("app", "types", "expected"),
        [
            pytest.param("shop", (), "shop", id="app"),
            pytest.param("blog", (), "blog", id="other-app"),
            pytest.param(None, ("health_check",), "health_check", id="one-type"),
            pytest.param(None, ("app_registered", "app_unregistered"), "two-types", id="types"),
            pytest.param("shop", ("health_check",), "shop-health", id="app-and-type"),
            pytest.param("nowhere", (), "none", id="unknown-app"),
        ],
    )
    @pytest.mark.parametrize("size", [2, 100], ids=["paged", "one-page"])
    async def test_filters_by_app_and_types(
        self, bus: Bus, app: str | None, types: tuple[str, ...], expected: str, size: int
    ) -> None:
        """Pages hold only events of the given app and types, each once, in order."""
        published = await publish_mix(bus)
        wanted = {
            "shop": published.by_app["shop"],
            "blog": published.by_app["blog"],
            "health_check": published.by_type["health_check"],
            "two-types": sorted(
                published.by_type["app_registered"] + published.by_type["app_unregistered"],
                key=published.ids.index,
            ),
            "shop-health": [
                entry
                for entry in published.by_type["health_check"]
                if entry in published.by_app["shop"]
            ],
            "none": [],
        }[expected]
        pages, undecodable = await read_pages(bus, size, app=app, types=types)
        assert [entry for page in pages for entry in page] == wanted
        assert undecodable == len(published.poison)

    async def test_undecodable_entries_are_counted_not_returned(self, bus: Bus) -> None:
        """Garbage, a missing field, a newer schema and a malformed envelope are counted only."""
        published = await publish_mix(bus)
        page = await bus.history.page(size=100)
        returned = {entry.entry_id for entry in page.entries}
        assert returned.isdisjoint(published.poison)
        assert page.undecodable == 4


class TestTimeRange:
    async def test_since_and_until_split_the_history_at_a_moment(self, bus: Bus) -> None:
        """``since`` keeps events at or after a time, ``until`` those at or before it."""
        publisher = Publisher(bus, "reg-h")
        early = [(await publisher.publish(HealthCheck(), app="shop"))[1] for _ in range(3)]
        await anyio.sleep(0.02)
        moment = time.time()
        await anyio.sleep(0.02)
        late = [(await publisher.publish(HealthCheck(), app="shop"))[1] for _ in range(2)]
        await anyio.sleep(0.02)
        end = time.time()

        since = await bus.history.page(since=moment)
        until = await bus.history.page(until=moment)
        window = await bus.history.page(since=moment, until=end)
        before_all = await bus.history.page(until=moment - 60)
        assert [entry.entry_id for entry in since.entries] == late
        assert [entry.entry_id for entry in until.entries] == early
        assert [entry.entry_id for entry in window.entries] == late
        assert before_all.entries == []

    async def test_paging_inside_a_time_range(self, bus: Bus) -> None:
        """Cursors keep the page inside the ``until`` bound."""
        publisher = Publisher(bus, "reg-h")
        early = [(await publisher.publish(HealthCheck(), app="shop"))[1] for _ in range(5)]
        await anyio.sleep(0.02)
        moment = time.time()
        await anyio.sleep(0.02)
        for _ in range(3):
            await publisher.publish(HealthCheck(), app="shop")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await bus.history.page(after=cursor, until=moment, size=2)
            seen.extend(entry.entry_id for entry in page.entries)
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == early


class TestIterate:
    @pytest.mark.parametrize("size", [1, 3, 500], ids=lambda size: f"size-{size}")
    async def test_iterates_every_match_once(self, bus: Bus, size: int) -> None:
        """iterate() yields every matching valid event once, oldest first, across pages."""
        published = await publish_mix(bus)
        every = [entry.entry_id async for entry in bus.history.iterate(size=size)]
        shop = [entry.entry_id async for entry in bus.history.iterate(app="shop", size=size)]
        health = [
            entry.envelope.payload
            async for entry in bus.history.iterate(types=("health_check",), size=size)
        ]
        assert every == published.ids
        assert shop == published.by_app["shop"]
        assert health == [HealthCheck(health={"n": n}) for n in (1, 2, 3)]

    async def test_iterates_from_a_moment(self, bus: Bus) -> None:
        """iterate(since=...) starts at that time and still pages to the end."""
        publisher = Publisher(bus, "reg-h")
        await publisher.publish(HealthCheck(), app="shop")
        await anyio.sleep(0.02)
        moment = time.time()
        await anyio.sleep(0.02)
        late = [(await publisher.publish(HealthCheck(), app="shop"))[1] for _ in range(5)]
        found = [entry.entry_id async for entry in bus.history.iterate(since=moment, size=2)]
        assert found == late
