"""The audit of a signed history (``replay --verify``): forged, altered and missing events
are named; what retention trimmed is not a gap; an untouched history verifies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rapid_objection.bus import Bus, HealthCheck, Publisher, Retention
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._retention import trim_events
from rapid_objection.bus._verify import verify_history
from rapid_objection.bus.testing import purge
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio

RING = KeyFile.generate(["alpha"])


@pytest.fixture
async def signed(two_lane_url: str, namespace: str) -> AsyncIterator[Bus]:
    async with Bus.connect(two_lane_url, namespace, keyring=Keyring(RING)) as bus:
        try:
            yield bus
        finally:
            await purge(bus)


async def history(bus: Bus, count: int) -> list[str]:
    """``count`` signed events of one registry; their stream entry ids."""
    async with Publisher(bus, "reg") as publisher:
        return [
            (await publisher.publish(HealthCheck(health={"n": n}), app="shop"))[1]
            for n in range(count)
        ]


async def tamper(bus: Bus, entry_ids: list[str]) -> tuple[str, str]:
    """Alter one byte of the 2nd event (deleted, put back changed) and delete the 4th;
    returns (the altered entry's new id, the deleted entry's id)."""
    (entry,) = await bus.redis.xrange(bus.keys.events, entry_ids[1], entry_ids[1], 1)
    fields = dict(entry[1])
    fields[EVENT_FIELD] = fields[EVENT_FIELD].replace(b"shop", b"shoq")
    await bus.redis.xdel(bus.keys.events, entry_ids[1], entry_ids[3])
    return await bus.redis.xadd(bus.keys.events, fields), entry_ids[3]


class TestVerify:
    async def test_untouched_history_verifies(self, signed: Bus) -> None:
        """Every event of an untouched history verifies, in one chain."""
        await history(signed, 6)
        audit = await verify_history(signed)
        assert (audit.ok, audit.checked, audit.verified, audit.chains) == (True, 6, 6, 1)

    async def test_altered_and_missing_events_are_named(self, signed: Bus) -> None:
        """An event altered by one byte and one deleted from the middle are both named."""
        entry_ids = await history(signed, 6)
        altered, _ = await tamper(signed, entry_ids)
        audit = await verify_history(signed)
        found = {(p.kind, p.entry_id) for p in audit.problems}
        assert ("altered", altered) in found
        (missing,) = [p for p in audit.problems if p.kind == "missing"]
        assert "(seq 4 of chain" in missing.detail
        assert f"after entry {entry_ids[2]} and before entry {entry_ids[4]}" in missing.detail
        assert not audit.ok

    async def test_unsigned_event_is_forged(self, signed: Bus) -> None:
        """An entry added by a client without keys is named as forged."""
        await history(signed, 2)
        (entry,) = await signed.redis.xrange(signed.keys.events, "-", "+", 1)
        unsigned = {EVENT_FIELD: entry[1][EVENT_FIELD]}
        forged_id = await signed.redis.xadd(signed.keys.events, unsigned)
        audit = await verify_history(signed)
        assert [(p.kind, p.entry_id) for p in audit.problems] == [("forged", forged_id)]

    async def test_what_retention_trimmed_is_no_gap(self, signed: Bus) -> None:
        """Events that retention trimmed are recorded, not reported as missing."""
        await history(signed, 5)
        removed = await trim_events(signed, Retention(max_len=2))
        assert removed == 3
        audit = await verify_history(signed)
        assert (audit.ok, audit.checked, audit.trimmed) == (True, 2, 3)


class TestCommand:
    async def test_replay_verify_exit_status(
        self, redis_url: str, namespace: str, tmp_path: Path
    ) -> None:
        """``replay --verify`` exits 0 on an untouched history, and 1 naming both the
        altered and the missing event once it was tampered with."""
        ring = tmp_path / "ring.json"
        RING.save(ring)
        args = ["replay", "--verify", "--keyring", str(ring), "--namespace", namespace]
        args += ["--bus-url", redis_url]
        async with Bus.connect(redis_url, namespace, keyring=Keyring(RING)) as bus:
            try:
                entry_ids = await history(bus, 6)
                code, out, err = await run_cli(*args)
                assert code == 0, err
                assert "6 events checked, 6 verified, 1 chains: all verified" in out
                altered, _ = await tamper(bus, entry_ids)
                code, out, err = await run_cli(*args)
            finally:
                await purge(bus)
        assert code == 1, err
        assert f"ALTERED  entry {altered}" in out
        assert "MISSING" in out
        assert "seq 4 of chain" in out
