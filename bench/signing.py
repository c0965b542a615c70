"""``python -m bench.signing``: what signed events and acks cost (scenario 8 of ``make bench``).

The round trip of scenario 1 (``Publisher.emit`` -> one worker process -> ack) and the
pipelined throughput of scenario 2 (4 worker processes), each with a keyring (every
event tagged by the registry, checked by the worker and remembered by its group; every
ack entry tagged by the worker and checked by the registry) against the same without,
in the same run, taking turns, median of the runs. The target (issue 11): signing
moves the round trip p50 and the throughput by at most 15 %.
"""

from __future__ import annotations

import sys
import tempfile
from statistics import median
from typing import Any, Final

from . import product
from .baselines import CpuUse, percentiles

MAX_COST: Final = 1.15
"""Signed over unsigned: at most 15 % slower round trip p50, 15 % lower throughput."""


def scenario_signing(url: str, runs: int, n_round_trips: int, n_events: int) -> dict[str, Any]:
    print(
        f"[bench] 8. signing: keyring against none, {n_round_trips} round trips and "
        f"{n_events} events, {runs} runs",
        file=sys.stderr,
        flush=True,
    )
    p50: dict[str, list[float]] = {"signed": [], "plain": []}
    rate: dict[str, list[float]] = {"signed": [], "plain": []}
    cpu: dict[str, list[float]] = {"signed": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="ro-bench-keys-") as directory:
        keys = product.Keys(directory, (product.NoopPlugin,))
        for run in range(runs):
            order = ("plain", "signed") if run % 2 == 0 else ("signed", "plain")  # turns
            for side in order:
                chosen = keys if side == "signed" else None
                samples = product.round_trip(url, n_round_trips, keys=chosen)
                p50[side].append(percentiles(samples)[0] * 1e3)
            for side in order:
                chosen = keys if side == "signed" else None
                uses: list[CpuUse] = []
                rate[side].append(
                    product.throughput_pipelined(url, n_events, keys=chosen, cpu=uses)
                )
                per_event = uses[0].per_event_us(n_events) if uses else {}
                cpu[side].append(sum(value or 0.0 for value in per_event.values()))
    # Paired per run (each run measured both sides back to back), then the median.
    latency_cost = median(s / p for s, p in zip(p50["signed"], p50["plain"], strict=True))
    rate_cost = median(p / s for s, p in zip(rate["signed"], rate["plain"], strict=True))
    cpu_cost = median(s / p for s, p in zip(cpu["signed"], cpu["plain"], strict=True) if p)
    mark = {
        "p50": "met" if latency_cost <= MAX_COST else "MISSED",
        "throughput": "met" if rate_cost <= MAX_COST else "MISSED",
    }
    print(
        f"8 signing         signed p50 {median(p50['signed']):.2f} ms"
        f" | unsigned p50 {median(p50['plain']):.2f} ms | cost {latency_cost:.2f}x"
        f" ;  signed {median(rate['signed']):,.0f} events/s"
        f" | unsigned {median(rate['plain']):,.0f} events/s | cost {rate_cost:.2f}x"
        f" | target <= {MAX_COST}x: p50 {mark['p50']}, throughput {mark['throughput']}",
        flush=True,
    )
    print(
        f"8b signing CPU    signed {median(cpu['signed']):.0f} us per event"
        f" | unsigned {median(cpu['plain']):.0f} us (publisher, workers and Redis)"
        f" | cost {cpu_cost:.2f}x (steadier than wall time on a busy machine)",
        flush=True,
    )
    return {
        "n_round_trips": n_round_trips,
        "n_events": n_events,
        "p50_ms": {side: median(values) for side, values in p50.items()},
        "events_per_s": {side: median(values) for side, values in rate.items()},
        "cpu_us_per_event": {side: median(values) for side, values in cpu.items()},
        "cost": {"p50": latency_cost, "throughput": rate_cost, "cpu": cpu_cost},
        "runs": {"p50_ms": p50, "events_per_s": rate, "cpu_us_per_event": cpu},
        "targets_met": {k: v == "met" for k, v in mark.items()},
    }


if __name__ == "__main__":
    from .__main__ import DEFAULT_URL

    quick = "--quick" in sys.argv[1:]
    scenario_signing(
        DEFAULT_URL, 1 if quick else 3, 300 if quick else 2000, 3000 if quick else 20_000
    )
