"""Registry benchmark: register and unregister SQLite apps with and without plugins.

Each app has 2 migrations, 2 seeds and a model module (tests/core/sample_app). The same
run measures 100 apps with 3 required inline plugins on the embedded bus and 100 apps
with no plugins, taking turns, and reports the time per app and the ratio. Target: with
plugins at most 2x the time without.

    python -m bench.registry [--apps 100] [--runs 3] [--bus-url memory://]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from rapid_objection.core import AppRegistry

from .cycle import EveryHookNoop

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "core" / "sample_app"


class Listener(EveryHookNoop):
    """A plugin that implements every hook and does nothing: the cost is the bus's."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(str((config or {}).get("name", "listener")), "1.0.0")


def app_config(directory: Path, name: str) -> dict[str, Any]:
    return {
        "database": {"url": f"sqlite:///{directory / (name + '.db')}"},
        "migrations": {"directory": str(SAMPLE / "migrations")},
        "seeds": {"directory": str(SAMPLE / "seeds")},
        "models": {"module": "tests.core.sample_app.models"},
    }


async def run_once(apps: int, plugins: int, bus_url: str) -> float:
    """Seconds per app to register and unregister ``apps`` apps with ``plugins`` plugins."""
    url = bus_url if bus_url != "memory://" else f"memory://bench-{secrets.token_hex(4)}"
    config = {"bus": {"url": url, "namespace": f"bench-{secrets.token_hex(4)}"}}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        async with AppRegistry(config) as registry:
            for index in range(plugins):
                await registry.load_plugin(Listener, {"name": f"p{index}"}, required=True)
            await registry.refresh_plugins()
            started = time.perf_counter()
            for index in range(apps):
                name = f"app{index}"
                await registry.register_app(name, app_config(directory, name))
                await registry.unregister_app(name)
            elapsed = time.perf_counter() - started
    return elapsed / apps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bus-url", default="memory://")
    args = parser.parse_args()
    with_plugins: list[float] = []
    without: list[float] = []
    for run in range(args.runs):
        order = [(3, with_plugins), (0, without)]
        for plugins, figures in order if run % 2 == 0 else reversed(order):
            figures.append(anyio.run(run_once, args.apps, plugins, args.bus_url))
    plugged, bare = statistics.median(with_plugins), statistics.median(without)
    ratio = plugged / bare
    print(f"registry: {args.apps} apps, {args.runs} runs, bus {args.bus_url}")
    print(f"  3 required inline plugins: {plugged * 1000:.1f} ms per app")
    print(f"  no plugins:                {bare * 1000:.1f} ms per app")
    print(f"  ratio {ratio:.2f} (target <= 2.0: {'met' if ratio <= 2.0 else 'MISSED'})")
    summary = {
        "registry": {
            "apps": args.apps,
            "runs": args.runs,
            "ms_per_app_with_plugins": round(plugged * 1000, 2),
            "ms_per_app_without_plugins": round(bare * 1000, 2),
            "ratio": round(ratio, 3),
            "target_met": ratio <= 2.0,
        }
    }
    print(msgspec.json.encode(summary).decode())


if __name__ == "__main__":
    main()
