"""The dead-letter stream, on both lanes: listing with provenance, and re-driving."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    DeadLetterEntry,
    DeadLetters,
    Envelope,
    Publisher,
    RedriveError,
)
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope
from rapid_objection.bus.testing import drained
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")
REGISTRY = "reg-dlq"


class Broken(PluginInterface):
    """Raises while ``broken`` is set, answers ``"fine"`` once it is cleared."""

    def __init__(self, name: str = "broken") -> None:
        super().__init__(name, "1.0.0")
        self.broken = True
        self.calls: list[str] = []

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        self.calls.append(app_name)
        if self.broken:
            raise RuntimeError(f"boom {len(self.calls)}")
        return "fine"


async def _letters(bus: Bus, count: int = 1) -> list[DeadLetterEntry]:
    """The dead letters once there are ``count`` of them."""
    letters = DeadLetters(bus)
    with anyio.fail_after(1.5):
        while len(found := await letters.list()) < count:
            await anyio.sleep(0.02)
    return found


async def _event_at(bus: Bus, entry_id: str) -> Envelope:
    [(_, fields)] = await bus.redis.xrange(bus.keys.events, entry_id, entry_id, count=1)
    return decode_envelope(fields[EVENT_FIELD])


class TestList:
    async def test_a_hook_that_always_raises_is_listed_with_its_provenance(self, bus: Bus) -> None:
        """After max_deliveries failed attempts the letter names the event, its stream
        entry, registry, app, plugin, consumer, attempts and the first and last error."""
        async with (
            running_worker(Broken(), bus, consumer="w-1", max_deliveries=2),
            Publisher(bus, REGISTRY) as publisher,
        ):
            envelope, entry_id = await publisher.publish(AppRegistered(connection=SQLITE), app="a")
            [entry] = await _letters(bus)
        letter = entry.letter
        assert (letter.event_id, letter.entry_id, letter.type) == (
            envelope.id,
            entry_id,
            "app_registered",
        )
        assert (letter.registry, letter.app) == (REGISTRY, "a")
        assert (letter.plugin, letter.consumer, letter.attempts) == ("broken", "w-1", 2)
        assert (letter.first_error, letter.last_error) == (
            "RuntimeError: boom 1",
            "RuntimeError: boom 2",
        )
        assert decode_envelope(letter.data) == envelope

    async def test_an_empty_dead_letter_stream_lists_nothing(self, bus: Bus) -> None:
        """A namespace where nothing ever died lists no letters."""
        assert await DeadLetters(bus).list() == []


class TestRedrive:
    async def test_a_redriven_letter_is_a_new_event_for_its_plugin_only(self, bus: Bus) -> None:
        """Re-driving publishes a new event that names the one it replaces and targets the
        dead plugin: that plugin handles it (and, fixed now, acks it to the registry), the
        other plugin's worker is not called again, and the letter is gone."""
        broken, bystander = Broken(), Broken("bystander")
        bystander.broken = False
        async with (
            running_worker(broken, bus, consumer="w-1", max_deliveries=2),
            running_worker(bystander, bus, consumer="w-2"),
            Publisher(bus, REGISTRY) as publisher,
        ):
            original, _ = await publisher.publish(AppRegistered(connection=SQLITE), app="a")
            [entry] = await _letters(bus)
            await drained(bus, "bystander", timeout=1)
            broken.broken = False
            done = await DeadLetters(bus).redrive(entry.id)
            await drained(bus, "broken", timeout=1)
            await drained(bus, "bystander", timeout=1)
            with anyio.fail_after(1):
                while not any(a.event_id == done.event_id for a in publisher.unclaimed_acks):
                    await anyio.sleep(0.02)
        redriven = await _event_at(bus, done.entry_id)
        assert redriven.id == done.event_id != original.id
        assert (redriven.replaces, redriven.target) == (original.id, "broken")
        assert (done.letter_id, done.plugin) == (entry.id, "broken")
        assert broken.calls == ["a", "a", "a"]
        assert bystander.calls == ["a"]
        assert await DeadLetters(bus).list() == []
        [ack] = [a for a in publisher.unclaimed_acks if a.event_id == done.event_id]
        assert (ack.plugin, ack.status, ack.result) == ("broken", "ok", "fine")

    @pytest.mark.parametrize("letter_id", ["1-1", "no-such-id"], ids=["well-formed", "malformed"])
    async def test_an_unknown_id_is_refused_naming_it(self, bus: Bus, letter_id: str) -> None:
        """Re-driving an id that is not in the dead-letter stream raises RedriveError that
        carries and names the id."""
        with pytest.raises(RedriveError, match=letter_id) as caught:
            await DeadLetters(bus).redrive(letter_id)
        assert caught.value.letter_id == letter_id

    async def test_a_poison_letter_is_refused_as_never_valid(self, bus: Bus) -> None:
        """A letter whose entry never decoded cannot be re-driven: RedriveError says it was
        never a valid envelope, and the letter stays for inspection."""
        async with running_worker(Broken(), bus, consumer="w-1", max_deliveries=2):
            await bus.redis.xadd(bus.keys.events, {EVENT_FIELD: b"\xc1 not msgpack"})
            [entry] = await _letters(bus)
        assert entry.letter.event_id is None
        with pytest.raises(RedriveError, match="never a valid envelope") as caught:
            await DeadLetters(bus).redrive(entry.id)
        assert caught.value.letter_id == entry.id
        assert [e.id for e in await DeadLetters(bus).list()] == [entry.id]
