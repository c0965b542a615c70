"""Publishing: each caller of a shared round trip gets its own answer, and an envelope
that reached the stream before the connection broke is not published twice (real Redis
behind a proxy that loses a reply or cuts a pipeline)."""

from __future__ import annotations

import anyio
import pytest

from rapid_objection.bus import Bus, Envelope, HealthCheck, Publisher
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._heads import decode_head

from .proxy import Proxy

pytestmark = pytest.mark.anyio


async def stream_event_ids(bus: Bus) -> list[str]:
    entries = await bus.redis.xrange(bus.keys.events, "-", "+", count=100)
    heads = [decode_head(fields[EVENT_FIELD]) for _, fields in entries]
    return [head.id for head in heads if head is not None]


def envelopes(bus: Bus, count: int) -> list[Envelope]:
    publisher = Publisher(bus, "reg")
    return [publisher.envelope(HealthCheck(health={"n": n}), app="shop") for n in range(count)]


class TestCutPipeline:
    async def test_a_pipeline_cut_midway_publishes_each_event_once(
        self, proxied: tuple[Proxy, Bus, Bus]
    ) -> None:
        """Five concurrent publishes (one alone, then four in one pipeline) whose pipeline
        breaks after its second XADD: every caller gets an entry id, and the stream holds
        each envelope exactly once."""
        proxy, through, direct = proxied
        await direct.ensure_group("anyone")
        sent = envelopes(through, 5)
        proxy.cut_before("XADD", 4)  # XADD 1 alone; 2 and 3 land; 4 and 5 are cut off
        answers: dict[str, str] = {}

        async def publish(envelope: Envelope) -> None:
            answers[envelope.id] = await through.publish(envelope)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                for envelope in sent:
                    group.start_soon(publish, envelope)
        assert proxy.fired.is_set()
        assert sorted(answers) == sorted(envelope.id for envelope in sent)
        ids = await stream_event_ids(direct)
        assert sorted(ids) == sorted(answers)
        assert len(ids) == len(set(ids)) == 5

    async def test_a_lost_xadd_reply_is_found_in_the_stream(
        self, proxied: tuple[Proxy, Bus, Bus]
    ) -> None:
        """A lone publish whose XADD reply was lost returns the id of the entry that
        landed, and does not publish the envelope a second time."""
        proxy, through, direct = proxied
        [envelope] = envelopes(through, 1)
        proxy.drop_reply("XADD")
        with anyio.fail_after(5):
            entry_id = await through.publish(envelope)
        assert proxy.fired.is_set()
        entries = await direct.redis.xrange(direct.keys.events, "-", "+", count=10)
        assert [entry for entry, _ in entries] == [entry_id]
        assert await stream_event_ids(direct) == [envelope.id]
