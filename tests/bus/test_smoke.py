"""A first round trip on both lanes: publish, a worker acks, the registry sees it."""

from __future__ import annotations

from typing import Any

import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker

pytestmark = pytest.mark.anyio


class Echo(PluginInterface):
    def __init__(self) -> None:
        super().__init__("echo", "1.0.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, str]:
        return {"app": app_name, "dialect": connection.dialect}


async def test_required_plugin_acks_with_its_result(bus: Bus) -> None:
    """A required plugin's worker answers an event; the wait returns its result."""
    async with running_worker(Echo(), bus, required=True), Publisher(bus, "reg-a") as publisher:
        await publisher.refresh_directory()
        result = await publisher.emit(
            AppRegistered(connection=ConnectionInfo(dialect="sqlite")), app="shop", timeout=5
        )
    assert result.ok
    assert result.outcomes["echo"].status == "acked"
    assert result.outcomes["echo"].result == {"app": "shop", "dialect": "sqlite"}
