"""A registry with a keyring hands each supervised worker its own plugin's export of the
ring, never the ring itself, and their signed acks count."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from rapid_objection.bus import collect_status
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import ENV_KEYRING
from rapid_objection.core import AppRegistry
from tests.core.test_supervisor import MONITORING, cleanup, process_config

pytestmark = [pytest.mark.anyio, pytest.mark.redis_server]

__all__ = ["cleanup"]  # the fixture, used by name


def exported(path: Path) -> tuple[int, dict[str, Any]]:
    """(mode, content) of a keyring file."""
    return stat.S_IMODE(path.stat().st_mode), json.loads(path.read_text())


def environment(pid: int) -> dict[str, str]:
    raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(): value.decode() for key, _, value in pairs}


async def test_supervised_workers_get_their_plugins_export_only(
    redis_url: str,
    namespace: str,
    cleanup: list[AppRegistry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's keyring is a 0600 export of its plugin (no registry key, no other
    plugin's secret), even when the registry's own ring comes by environment; its
    signed acks satisfy a required ``abort`` plugin, and nothing is forged."""
    ring = tmp_path / "ring.json"
    KeyFile.generate(["supervised", "other"]).save(ring)
    monkeypatch.setenv(ENV_KEYRING, str(ring))
    config = process_config(
        redis_url, namespace, MONITORING, required=True, on_failure="abort", timeout=5
    )
    registry = AppRegistry(config)
    cleanup.append(registry)
    assert (await registry.initialize()).loaded_plugins == ["supervised"]
    loaded = registry.plugins.loaded("supervised")
    assert loaded is not None
    assert loaded.supervisor is not None
    (pid,) = loaded.supervisor.pids
    export = Path(environment(pid)[ENV_KEYRING])
    assert export != ring
    mode, data = exported(export)
    assert mode == 0o600
    assert (data["kind"], data["plugin"], data["registry"]) == ("export", "supervised", [])
    assert all(set(key) == {"id", "public"} for key in data["plugins"]["other"])
    await registry.register_app("shop", {"database": {"url": "sqlite://"}})
    report = await collect_status(registry.bus, recent=50)
    assert report.signed
    assert [f for f in report.recent_failures if f.kind in ("forged", "unauthenticated")] == []
    assert os.environ[ENV_KEYRING] == str(ring)
