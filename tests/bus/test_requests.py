"""Operators' requests to a registry and its answers (``bus._requests``), on every lane;
with a keyring, only a holder of the registries' key makes a registry act."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from rapid_objection.bus import Answer, Bus, Request
from rapid_objection.bus._constants import RECORD_FIELD
from rapid_objection.bus._contract import encode
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._requests import NoAnswer, Requests
from rapid_objection.bus.testing import purge

pytestmark = pytest.mark.anyio


def echo(seen: list[Request]) -> Callable[[Request], object]:
    async def handle(request: Request) -> Answer:
        seen.append(request)
        return Answer(
            request=request.id,
            registry=request.registry,
            ok=True,
            result={"app": request.app, "action": request.action, "steps": request.steps},
        )

    return handle


@asynccontextmanager
async def serving(bus: Bus, registry: str, seen: list[Request]) -> AsyncIterator[None]:
    async with anyio.create_task_group() as group:
        await group.start(Requests(bus).serve, registry, echo(seen))
        yield
        group.cancel_scope.cancel()


class TestRoundTrip:
    async def test_the_addressee_answers(self, bus: Bus) -> None:
        """A request reaches the registry it names and its answer comes back."""
        seen: list[Request] = []
        async with serving(bus, "reg-a", seen):
            answer = await Requests(bus).ask("reg-a", "shop", "rollback_migrations", 2, timeout=5)
        assert answer.ok
        assert answer.result == {"app": "shop", "action": "rollback_migrations", "steps": 2}
        assert [request.sender for request in seen] != [""]

    async def test_nobody_answering_raises_no_answer(self, bus: Bus) -> None:
        """A registry that does not read its requests leaves the asker with NoAnswer."""
        with pytest.raises(NoAnswer, match="did not answer"):
            await Requests(bus).ask("reg-gone", "shop", "migrate", timeout=0.3)

    async def test_a_stale_or_repeated_request_is_not_run(self, bus: Bus) -> None:
        """A request past its deadline, or the same request added twice, runs at most once."""
        seen: list[Request] = []
        key = bus.keys.requests("reg-a")
        now = time.time()
        stale = Request(
            id="stale", registry="reg-a", app="shop", action="migrate", deadline=now - 1
        )
        fresh = Request(
            id="fresh", registry="reg-a", app="shop", action="migrate", deadline=now + 30
        )
        async with serving(bus, "reg-a", seen):
            for request in (stale, fresh, fresh):
                await bus.redis.xadd(key, {RECORD_FIELD: encode(request)})
            with anyio.fail_after(5):
                while not await bus.redis.exists(bus.keys.answer("fresh")):
                    await anyio.sleep(0.02)
            await anyio.sleep(0.1)
        assert [request.id for request in seen] == ["fresh"]


class TestSigned:
    async def test_only_the_registries_key_makes_a_registry_act(
        self, bus_url: str, namespace: str
    ) -> None:
        """With a keyring, an unsigned request (or one from a plugin's export) is answered
        ``unauthenticated`` without running; one signed by the ring runs."""
        ring = KeyFile.generate(["audit"])
        seen: list[Request] = []
        async with (
            Bus.connect(bus_url, namespace, keyring=Keyring(ring)) as registry_bus,
            Bus.connect(bus_url, namespace) as plain,
        ):
            try:
                async with serving(registry_bus, "reg-a", seen):
                    refused = await Requests(plain).ask("reg-a", "shop", "migrate", timeout=5)
                    async with Bus.connect(
                        bus_url, namespace, keyring=Keyring(ring.export("audit"))
                    ) as plugin_bus:
                        with pytest.raises(Exception, match="holds no registry key"):
                            await Requests(plugin_bus).ask("reg-a", "shop", "migrate", timeout=5)
                    signed = await Requests(registry_bus).ask("reg-a", "shop", "migrate", timeout=5)
            finally:
                await purge(plain)
        assert (refused.ok, refused.error_type) == (False, "unauthenticated")
        assert signed.ok
        assert len(seen) == 1
