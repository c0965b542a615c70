"""``python -m bench.tracing``: what OpenTelemetry support costs a worker's hook call and a
registry's step, without the package, with the API alone, and with the SDK recording.

Each mode runs in a subprocess of its own (``absent`` hides ``opentelemetry`` from the
import system, as on a machine without the extra). Per mode, in one process:

* hook: a no-op ``async def`` hook called through the worker's handler (the dispatcher,
  wrapped by ``_tracing.traced``) against the bare dispatcher, ``--calls`` times each,
  alternating rounds; the difference is the tracing's cost per hook call;
* step: ``step_span`` + ``traceparent`` + ``step_done``, the additions to a registry's
  step, per call.

Prints one line per mode and a last line of JSON with every figure (nanoseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

MODES = ("absent", "api", "sdk")


def _setup(mode: str) -> None:
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import fails
    elif mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        trace.set_tracer_provider(provider)


async def _measure(calls: int, rounds: int) -> dict[str, Any]:
    from rapid_objection.bus import AppRegistered, ConnectionInfo
    from rapid_objection.bus._delivery import Delivery
    from rapid_objection.bus._tracing import ENABLED, step_done, step_span, traced, traceparent
    from rapid_objection.bus._waits import WaitResult
    from rapid_objection.plugin_workers import PluginInterface
    from rapid_objection.plugin_workers._dispatch import Dispatcher
    from rapid_objection.plugin_workers.testing import envelope_for

    class Quiet(PluginInterface):
        async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
            return None

    dispatcher = Dispatcher(Quiet("quiet"), "quiet", "c-1", timeout=5.0)
    handler = traced(dispatcher, dispatcher.handles, "quiet", "c-1")
    payload = AppRegistered(connection=ConnectionInfo(dialect="sqlite"), config={})
    envelope = envelope_for(payload, app="shop", registry="bench")
    delivery = Delivery("1-0", envelope)

    async def per_call(call: Any) -> float:
        started = time.perf_counter_ns()
        for _ in range(calls):
            await call(delivery)
        return (time.perf_counter_ns() - started) / calls

    bare, wrapped = [], []
    for _ in range(rounds):
        bare.append(await per_call(dispatcher))
        wrapped.append(await per_call(handler))

    result = WaitResult("01BENCH", "1-0", "app_registered", "shop", (), {}, 0.0)
    started = time.perf_counter_ns()
    for _ in range(calls):
        with step_span("app_registered", "shop", "bench") as span:
            traceparent()
            step_done(span, result)
    step = (time.perf_counter_ns() - started) / calls
    return {
        "enabled": ENABLED,
        "handler_is_dispatcher": handler is dispatcher,
        "hook_bare_ns": min(bare),
        "hook_traced_ns": min(wrapped),
        "hook_added_ns": min(wrapped) - min(bare),
        "step_added_ns": step,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        _setup(args.mode)
        print(json.dumps(asyncio.run(_measure(args.calls, args.rounds))))
        return
    figures = {}
    for mode in MODES:
        command = [sys.executable, "-m", "bench.tracing", "--mode", mode]
        command += ["--calls", str(args.calls), "--rounds", str(args.rounds)]
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ)
        figures[mode] = json.loads(out.stdout)
        f = figures[mode]
        print(
            f"{mode:>6}: hook {f['hook_bare_ns']:.0f} ns bare, +{f['hook_added_ns']:.0f} ns "
            f"traced (handler is the dispatcher: {f['handler_is_dispatcher']}); "
            f"step +{f['step_added_ns']:.0f} ns",
            flush=True,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
