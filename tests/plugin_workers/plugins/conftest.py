"""Fixtures of the bundled plugins' tests: the database lanes, buses and registries."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from rapid_objection.bus import Ack, Deferred, Delivery, Envelope
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import embedded_bus
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import Dispatcher, RegistryView
from rapid_objection.plugin_workers._connection import Engines
from tests.core.conftest import postgres_admin_url, sql_url

__all__ = ["postgres_admin_url", "sql_url"]  # the database lanes of tests/core, reused

Deliver = Callable[..., Awaitable[Ack]]


@pytest.fixture
async def view() -> AsyncIterator[RegistryView]:
    """A worker's view of an embedded bus of its own (for run_once and custom events)."""
    async with embedded_bus() as bus:
        yield RegistryView(bus, plugin="under-test", consumer="test-consumer")


@pytest.fixture
async def registry() -> AsyncIterator[AppRegistry]:
    """A registry on an embedded bus of its own."""
    name = f"plugins-{secrets.token_hex(4)}"
    async with AppRegistry({"bus": {"url": f"memory://{name}", "ack_timeout": 10}}) as opened:
        yield opened
    forget_memory_server(name)


async def _deliver(
    plugin: Any, envelope: Envelope, *, attempt: int = 1, view: RegistryView | None = None
) -> Ack:
    dispatcher = Dispatcher(
        plugin,
        plugin.name,
        "test-consumer",
        timeout=10,
        custom_handlers=view.handlers if view is not None else None,
        engines=Engines(getattr(plugin, "config", {})),  # as a worker: its own databases
    )
    answer = await dispatcher(Delivery(f"1-{attempt}", envelope, attempt))
    assert not isinstance(answer, Deferred), answer
    return answer


@pytest.fixture
def deliver() -> Deliver:
    """``await deliver(plugin, envelope, attempt=2, view=view)``: one delivery as a worker
    makes it (the same envelope can be delivered again, as after a crash); its ack."""
    return _deliver
