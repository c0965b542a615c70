"""Scenario 9: a registry cycle, with one required no-op plugin on an external worker
against the same cycle with no plugin.

One cycle is ``register_app`` then ``unregister_app`` of a light app (an in-memory
SQLite database, no migrations, no seeds): five lifecycle events awaited each way, ten
in all. With the plugin (``CycleNoop``, every hook a no-op, ``required = true``,
``mode = "external"``) each of them waits for the ack of a ``rapid-objection worker``
process; without it, nothing waits. The per-hook cost (the difference over ten hooks)
is printed beside a bare redis-py round trip measured in the same run.

Top-level imports stay as light as a plugin's: the worker process imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from rapid_objection.plugin_workers import PluginInterface

HOOKS_PER_CYCLE: Final = 10
"""register: started, connection, auto-ops started, auto-ops completed, registered;
unregister: started, rollback started, rollback completed, connection shutdown,
unregistered (the ones this light app emits; counted from the ack stream below)."""

WARMUP: Final = 5
MAX_CYCLE_RATIO: Final = 2.0
"""The target: a cycle with the plugin at most twice the cycle without."""


class EveryHookNoop(PluginInterface):
    """Every hook of a register and an unregister, each returning at once: the cost is
    the bus's (``bench.registry``'s inline plugins are these too)."""

    async def on_app_registration_started(self, *args: Any) -> None: ...
    async def on_connection_created(self, *args: Any) -> None: ...
    async def on_auto_operations_started(self, *args: Any) -> None: ...
    async def on_auto_operations_completed(self, *args: Any) -> None: ...
    async def on_app_registered(self, *args: Any) -> None: ...
    async def on_app_unregistration_started(self, *args: Any) -> None: ...
    async def on_app_rollback_started(self, *args: Any) -> None: ...
    async def on_app_rollback_completed(self, *args: Any) -> None: ...
    async def on_connection_shutdown(self, *args: Any) -> None: ...
    async def on_app_unregistered(self, *args: Any) -> None: ...


class CycleNoop(EveryHookNoop):
    """The plugin of this scenario's external worker."""

    plugin_name = "bench-cycle"

    def __init__(self) -> None:
        super().__init__(self.plugin_name, "1.0.0")


def cycles(url: str, n: int, *, plugin: bool) -> tuple[list[float], int]:
    """Seconds of each of ``n`` cycles (after ``WARMUP``), and the events a cycle awaited
    (the plugin's acks per cycle; 0 without the plugin)."""
    from functools import partial

    import anyio

    from .product import Workers, purge_namespace

    if not plugin:
        import secrets

        namespace = f"bench-{secrets.token_hex(6)}"
        try:
            return anyio.run(partial(_measure, url, namespace, n, plugin=False))
        finally:
            purge_namespace(url, namespace)
    with Workers(url, (CycleNoop,), 1) as running:  # type: ignore[arg-type]
        running.wait_ready()
        return anyio.run(partial(_measure, url, running.namespace, n, plugin=True))


async def _measure(url: str, namespace: str, n: int, *, plugin: bool) -> tuple[list[float], int]:
    import time

    from rapid_objection.core import AppRegistry

    config: dict[str, Any] = {"bus": {"url": url, "namespace": namespace}}
    if plugin:
        config["plugins"] = {
            CycleNoop.plugin_name: {
                "mode": "external",
                "module": f"{__name__}:CycleNoop",
                "required": True,
                "timeout": 10,
            }
        }
    app = {"database": {"url": "sqlite://"}}
    samples: list[float] = []
    acked = 0
    steps: list[Any] = []
    async with AppRegistry(config) as registry:
        registry.on("step", steps.append)
        for index in range(WARMUP + n):
            name = f"light{index}"
            steps.clear()
            started = time.perf_counter()
            await registry.register_app(name, app)
            await registry.unregister_app(name)
            elapsed = time.perf_counter() - started
            results = [step["result"] for step in steps]
            if not all(result.ok for result in results):
                msg = f"cycle {index}: a step failed: {results}"
                raise RuntimeError(msg)
            acked = sum(len(result.acked) for result in results)
            if plugin and acked != HOOKS_PER_CYCLE:
                msg = f"cycle {index}: {acked} acks, expected {HOOKS_PER_CYCLE}"
                raise RuntimeError(msg)
            if index >= WARMUP:
                samples.append(elapsed)
    return samples, acked


def scenario_cycle(url: str, runs: int, n: int, round_trips: int) -> dict[str, Any]:
    """Scenario 9's line and JSON: per run, ``n`` cycles with the plugin, ``n`` without and
    ``round_trips`` bare redis-py round trips, taking turns; medians of the per-run p50s."""
    import statistics
    import sys

    from . import baselines

    print(
        f"[bench] 9. registry cycle: {n} cycles with and without a plugin, {runs} runs",
        file=sys.stderr,
        flush=True,
    )
    per_run: list[dict[str, float]] = []
    for run in range(runs):
        sides: list[tuple[str, Callable[[], list[float]]]] = [
            ("with", lambda: cycles(url, n, plugin=True)[0]),
            ("without", lambda: cycles(url, n, plugin=False)[0]),
            ("bare", lambda: baselines.bare_round_trip(url, round_trips)),
        ]
        shift = run % len(sides)
        figures = {
            name: statistics.median(side()) * 1e3 for name, side in [*sides[shift:], *sides[:shift]]
        }
        figures["ratio"] = figures["with"] / figures["without"]
        figures["per_hook_ms"] = (figures["with"] - figures["without"]) / HOOKS_PER_CYCLE
        figures["per_hook_vs_bare"] = figures["per_hook_ms"] / figures["bare"]
        per_run.append({key: round(value, 3) for key, value in figures.items()})
    result = {
        key: round(statistics.median(r[key] for r in per_run), 3)
        for key in ("with", "without", "bare", "ratio", "per_hook_ms", "per_hook_vs_bare")
    }
    met = result["ratio"] <= MAX_CYCLE_RATIO
    spread = " / ".join(f"{r['ratio']:.2f}" for r in per_run)
    print(
        f"9 registry cycle  with a required no-op plugin (external worker)"
        f" {result['with']:.2f} ms | without {result['without']:.2f} ms"
        f" | ratio {result['ratio']:.2f}x (runs {spread})"
        f" | per hook {result['per_hook_ms']:.2f} ms = {result['per_hook_vs_bare']:.2f}x"
        f" bare round trip ({result['bare']:.2f} ms)"
        f" | target <= {MAX_CYCLE_RATIO}x: {'met' if met else 'MISSED'}",
        flush=True,
    )
    return {"n": n, "hooks_per_cycle": HOOKS_PER_CYCLE, "ms": result, "runs": per_run, "met": met}
