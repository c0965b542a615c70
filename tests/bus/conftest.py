"""Fixtures of the bus tests beyond the shared ones: the proxy lane for lost replies."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus.testing import purge

from .proxy import Proxy, redis_proxy


@pytest.fixture
async def proxied(redis_url: str) -> AsyncIterator[tuple[Proxy, Bus, Bus]]:
    """A proxy in front of the real Redis; a bus through it and one straight to Redis."""
    namespace = f"t-{secrets.token_hex(6)}"
    async with (
        redis_proxy(redis_url) as proxy,
        Bus.connect(proxy.url, namespace) as through,
        Bus.connect(redis_url, namespace) as direct,
    ):
        try:
            yield proxy, through, direct
        finally:
            await purge(direct)
