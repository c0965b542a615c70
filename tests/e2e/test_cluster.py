"""The whole product on a Redis Cluster: namespaces on every shard, one node's URL."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry
from tests.core.test_registry import REGISTER_ORDER, UNREGISTER_ORDER, sample_config
from tests.e2e import run_cli
from tests.topologies import Cluster

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]


def one_namespace_per_shard(cluster: Cluster, prefix: str) -> list[str]:
    """Namespaces whose slots live on three different masters."""
    chosen: dict[int, str] = {}
    for number in range(1000):
        name = f"{prefix}-{number}"
        chosen.setdefault(cluster.master_of(f"ro:{{{name}}}:events"), name)
        if len(chosen) == 3:
            return sorted(chosen.values())
    raise AssertionError("three masters did not share 1000 namespaces")


async def lifecycle(url: str, namespace: str, tmp_path: Path) -> list[str]:
    """Register and unregister one app with a required plugin in worker processes; the
    events the plugin saw, in order."""
    config = {
        "bus": {"url": url, "namespace": namespace, "ack_timeout": 10},
        "plugins": {
            "hook-order": {
                "module": "tests.e2e.lifecycle_plugins:HookOrder",
                "mode": "process",
                "workers": 1,
                "required": True,
                "on_failure": "abort",
            }
        },
    }
    home = tmp_path / namespace
    home.mkdir()
    async with AppRegistry(config) as registry:
        await registry.register_app("shop", sample_config(home))
        await registry.unregister_app("shop")
        bus = registry.bus
        logged = await bus.redis.xrange(f"{bus.keys.prefix}e2e:hook-order", "-", "+", 100)
    return [fields[b"e"].decode() for _, fields in logged]


async def test_every_shard_serves_registries_workers_and_the_cli(
    redis_cluster: Cluster, tmp_path: Path
) -> None:
    """On a namespace of each shard, through the first node's URL, a registry with a
    supervised worker runs a whole lifecycle in order, and ``status`` and ``replay``
    read it back."""
    namespaces = one_namespace_per_shard(redis_cluster, f"e2e-{tmp_path.name[-6:]}")
    url = redis_cluster.url
    try:
        seen: dict[str, list[str]] = {}

        async def run(namespace: str) -> None:
            seen[namespace] = await lifecycle(url, namespace, tmp_path)

        async with anyio.create_task_group() as group:
            for namespace in namespaces:
                group.start_soon(run, namespace)
        expected = [f"{event}:shop" for event in (*REGISTER_ORDER, *UNREGISTER_ORDER)]
        assert seen == dict.fromkeys(namespaces, expected)
        for namespace in namespaces:
            code, out, err = await run_cli(
                "status", "--bus-url", url, "--cluster", "--namespace", namespace
            )
            assert code == 0, err
            assert "hook-order" in out
            code, out, err = await run_cli(
                "replay", "--bus-url", url, "--namespace", namespace, "--format", "jsonl"
            )
            assert code == 0, err
            types = [json.loads(line)["type"] for line in out.splitlines()]
            assert types == [*REGISTER_ORDER, *UNREGISTER_ORDER]
    finally:
        for namespace in namespaces:
            async with Bus.connect(url, namespace) as bus:
                await purge(bus)
