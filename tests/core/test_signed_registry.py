"""A registry with a keyring: a forged ``error`` ack against an ``abort`` plugin vetoes
nothing; the plugin's own (slower) answer decides."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Ack, Bus, ConnectionInfo
from rapid_objection.bus._constants import ACK_FIELD, EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope, encode
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import PluginInterface

pytestmark = pytest.mark.anyio


class SlowGate(PluginInterface):
    """An access-control plugin that allows every registration, a little slowly."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("gate", "1.0.0")

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> str:
        await anyio.sleep(0.3)
        return "allowed"

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        await anyio.sleep(0.3)
        return "allowed"


async def veto_everything(bus: Bus, registry: str) -> None:
    """A client without keys answers every event in the gate's name with an error."""
    after = "$"
    while True:
        for _, fields in await bus.redis.xread(bus.keys.events, after, count=10, block_ms=50):
            envelope = decode_envelope(fields[EVENT_FIELD])
            ack = Ack(
                event_id=envelope.id,
                plugin="gate",
                consumer="gate-1",
                status="error",
                error="vetoed",
                error_type="PermissionError",
                permanent=True,
            )
            await bus.redis.xadd(bus.keys.acks(registry), {ACK_FIELD: encode(ack)})
        entries = await bus.redis.xrevrange(bus.keys.events, "+", "-", 1)
        after = entries[0][0] if entries else after


async def test_a_forged_error_ack_vetoes_nothing(tmp_path: Path) -> None:
    """With on_failure = "abort", a forged error ack in the plugin's name does not fail
    the registration: the registry waits for the plugin's own signed ack, and records
    the forgeries as ``forged``."""
    ring = tmp_path / "ring.json"
    KeyFile.generate(["gate"]).save(ring)
    name = f"t-{secrets.token_hex(6)}"
    config = {
        "registry": {"id": "reg"},
        "bus": {"url": f"memory://{name}", "keyring": str(ring), "ack_timeout": 5},
        "plugins": {
            "gate": {
                "module": f"{__name__}:SlowGate",
                "required": True,
                "on_failure": "abort",
                "timeout": 3,
            }
        },
    }
    try:
        async with AppRegistry(config) as registry, anyio.create_task_group() as group:
            intruder = Bus.connect(f"memory://{name}", "default")
            async with intruder:
                group.start_soon(veto_everything, intruder, "reg")
                await registry.register_app("shop", {"database": {"url": "sqlite://"}})
                group.cancel_scope.cancel()
            forged = await registry.bus.failures.recent(kind="forged")
            assert registry.has_app("shop")
        assert forged
        assert {(f.plugin, f.consumer) for f in forged} == {("gate", "gate-1")}
    finally:
        forget_memory_server(name)
