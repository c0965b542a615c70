"""A ``rapid-objection worker`` process applies the ``[bus] dlq_*`` bounds of its file."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from rapid_objection.bus import Bus, DeadLetters
from rapid_objection.bus._constants import EVENT_FIELD

from .conftest import WorkerPool
from .plugins import PluginA

pytestmark = pytest.mark.anyio


async def test_a_worker_caps_its_dead_letters_as_its_registry_file_says(
    redis_bus: Bus, workers: WorkerPool, tmp_path: Path
) -> None:
    """Started with ``--config registry.toml`` whose ``[bus]`` says ``dlq_max_len = 2``
    and ``dlq_payload_prefix = 8``, a worker dead-letters five garbage entries and keeps
    only the newest two, each cut to its first 8 bytes."""
    config = tmp_path / "registry.toml"
    config.write_text(
        "[bus]\ndlq_max_len = 2\ndlq_payload_prefix = 8\n"
        '[plugins.e2e-a]\nmodule = "tests.e2e.plugins:PluginA"\nmode = "external"\n'
    )
    await workers.start(PluginA, options=["--config", str(config)])
    payloads = [b"\xc1garbage-%d-" % n + b"x" * 100 for n in range(5)]
    ids = [await redis_bus.redis.xadd(redis_bus.keys.events, {EVENT_FIELD: p}) for p in payloads]
    with anyio.fail_after(10):
        while len(await redis_bus.failures.recent(10, kind="dead_lettered")) < 5:
            await anyio.sleep(0.05)
    letters = [entry.letter for entry in await DeadLetters(redis_bus).list()]
    assert [letter.entry_id for letter in letters] == ids[-2:]
    assert [letter.data for letter in letters] == [p[:8] for p in payloads[-2:]]
    assert [letter.data_size for letter in letters] == [len(p) for p in payloads[-2:]]
