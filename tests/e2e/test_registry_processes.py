"""The registry with plugins in supervised worker processes on the real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry
from tests.core.test_registry import REGISTER_ORDER, UNREGISTER_ORDER, sample_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_hook_order_through_worker_processes(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """Two supervised workers of one plugin see the whole lifecycle in the documented
    order, and the health check merges their answer."""
    config = {
        "bus": {"url": redis_url, "namespace": namespace, "ack_timeout": 10},
        "plugins": {
            "hook-order": {
                "module": "tests.e2e.lifecycle_plugins:HookOrder",
                "mode": "process",
                "workers": 2,
                "required": True,
            }
        },
    }
    try:
        async with AppRegistry(config) as registry:
            status = await registry.plugins.get_status()
            assert status["plugins"]["hook-order"]["status"] == "loaded"
            await registry.register_app("shop", sample_config(tmp_path))
            health = await registry.check_health("shop")
            await registry.unregister_app("shop")
            bus = registry.bus
            logged = await bus.redis.xrange(f"{bus.keys.prefix}e2e:hook-order", "-", "+", 100)
        events = [fields[b"e"].decode() for _, fields in logged]
        expected = [*REGISTER_ORDER, "health_check", *UNREGISTER_ORDER]
        assert events == [f"{event}:shop" for event in expected]
        assert health["plugins"]["hook-order"] == {"seen_by": "hook-order"}
    finally:
        async with Bus.connect(redis_url, namespace) as bus:
            await purge(bus)
