"""Events a worker cannot decode in full: a newer schema version is answered at once."""

from __future__ import annotations

from typing import Any

import pytest

from rapid_objection.bus import SCHEMA_VERSIONS, Bus, HealthCheck, Publisher
from rapid_objection.bus import _publisher as publisher_module
from rapid_objection.bus._constants import RECORD_FIELD
from rapid_objection.bus._contract import decode_dead_letter, encode
from rapid_objection.bus._heads import decode_head

from .helpers import Runs, consumer_of

pytestmark = pytest.mark.anyio


class TestHeads:
    def test_the_head_of_an_envelope_is_read_without_its_payload(self) -> None:
        """A newer envelope's id, registry and required plugins are read even when its
        payload is of a type this version does not know."""
        data = encode(
            {
                "id": "01J0000000000000000000000",
                "type": "app_renamed",
                "version": 1,
                "registry": "reg",
                "required": ["audit"],
                "payload": {"type": "app_renamed", "new_name": "x"},
            }
        )
        head = decode_head(data)
        assert head is not None
        assert (head.id, head.type, head.registry, head.required) == (
            "01J0000000000000000000000",
            "app_renamed",
            "reg",
            ("audit",),
        )

    def test_garbage_has_no_head(self) -> None:
        """Bytes that are not an envelope at all have no head."""
        assert decode_head(b"\x01\x02garbage") is None


class TestNewerVersion:
    async def test_a_newer_schema_version_is_answered_with_an_error_ack(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A required plugin's worker that meets a newer schema version answers the
        registry at once with an error naming the version (no wait until the deadline)
        and dead-letters the event with its id (its outcome: dead_lettered)."""
        newer = {**SCHEMA_VERSIONS, "health_check": SCHEMA_VERSIONS["health_check"] + 1}
        # A newer registry: it writes the next version of health_check.
        monkeypatch.setattr(publisher_module, "written_version", lambda _: newer["health_check"])
        runs = Runs()
        async with (
            consumer_of(bus, runs, "old-worker"),
            Publisher(bus, "reg") as publisher,
        ):
            result = await publisher.emit(
                HealthCheck(health={}), app="shop", required=[runs.plugin], timeout=4
            )
        outcome = result.outcomes[runs.plugin]
        assert outcome.status == "failed"
        assert outcome.consumer == "old-worker"
        assert f"schema version {newer['health_check']}" in (outcome.error or "")
        assert result.elapsed < 2
        assert runs.calls == {}
        letters: list[Any] = [
            decode_dead_letter(fields[RECORD_FIELD])
            for _, fields in await bus.redis.xrange(bus.keys.dlq, "-", "+", count=10)
        ]
        assert [letter.event_id for letter in letters] == [result.event_id]
        found = await bus.outcomes.for_events([result.entry_id])
        assert [(r.status, r.error_type) for r in found[result.entry_id]] == [
            ("dead_lettered", "UnsupportedEvent")
        ]
