"""One registry id, one live process: a second host or pid under a live id is refused."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

from rapid_objection.bus import Bus, Publisher, RegistryIdTaken

pytestmark = pytest.mark.anyio

ELSEWHERE = "other-host|4242"
"""A live registry of another process, as its lease names it."""


class TestRegistryIds:
    async def test_a_live_id_of_another_process_is_refused(self, bus: Bus) -> None:
        """A publisher whose id a live registry of another host or pid holds does not
        start, and says who holds the id."""
        assert await bus.directory.claim_registry("reg", ELSEWHERE) is None
        with pytest.raises(RegistryIdTaken) as caught:
            async with Publisher(bus, "reg"):
                pass
        assert (caught.value.registry, caught.value.holder) == ("reg", ELSEWHERE)
        assert await bus.directory.registries() == []

    async def test_two_publishers_of_one_process_share_an_id(self, bus: Bus) -> None:
        """The same host and pid may open its id again (a restart inside one process)."""
        async with Publisher(bus, "reg"), Publisher(bus, "reg") as again:
            assert again.registry_id == "reg"

    async def test_a_stopped_registry_lets_go_of_its_id(self, bus: Bus) -> None:
        """Once a registry stops, another process may take its id at once."""
        async with Publisher(bus, "reg"):
            holder = f"{socket.gethostname()}|{os.getpid()}"
            assert await bus.directory.claim_registry("reg", ELSEWHERE) == holder
        assert await bus.directory.claim_registry("reg", ELSEWHERE) is None

    async def test_the_hold_on_an_id_expires_without_heartbeats(self, bus: Bus) -> None:
        """A crashed registry's hold lapses after one liveness window (it is a lease)."""
        assert await bus.directory.claim_registry("reg", ELSEWHERE) is None
        key = bus.keys.registry_lease("reg")
        assert await bus.redis.pexpire(key, 1)
        await anyio.sleep(0.05)
        assert await bus.directory.claim_registry("reg", "here|1") is None
