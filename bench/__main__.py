"""``python -m bench`` (``make bench``): our product beside bare redis-py and FastStream.

Four scenarios, each run ``--runs`` times (3), ours and the baselines in the same run,
taking turns (who goes first rotates from one run to the next) so that a machine
that gets busier or quieter during a run does not favour one side:

1. round trip: ``Publisher.emit`` with one required plugin -> one worker process ->
   ack observed by the registry, one event in flight (p50, p99);
2. throughput: acked events per second observed by the registry, 4 worker processes,
   20k events in flight, published in pipelines of 100 as the bare baseline does
   (and, beside it, 10k events from 256 concurrent ``Publisher.emit`` tasks);
3. fan-out: round trip with three required plugins, one worker process each (p50);
4. footprint: VmRSS of an idle worker process and the import time of ``plugin_workers``;
5. durability: the round trip with ``min_replicas=1`` against 0, on a primary and a
   replica of the benchmark's own (``bench/topology.py``);
6. cluster: scenario 2's throughput on 3 namespaces of 3 shards at once against 1, on
   a Redis Cluster of the benchmark's own;
7. retention: scenario 2's publishing with ``retention_max_len`` set on the registry:
   the stream's peak and final length (bounded at any rate), every event still acked
   (``--only retention`` runs this one alone);
8. signing: scenarios 1 and 2 with a keyring (signed events and acks) against without,
   in the same run (``bench/signing.py``);
9. registry cycle: register + unregister of a light app (ten awaited hooks) with one
   required no-op plugin on an external worker against no plugin (``bench/cycle.py``);
10. audit: the bundled audit plugin archiving a filled stream into PostgreSQL, one
    worker, a read batch per INSERT against one INSERT per event (``bench/audit.py``;
    ``--only audit`` runs this one alone).

Figures are the median over the runs; a ratio is ours / baseline, taken in each run
and then the median of those (the runs are paired). One line per scenario; the last
line is one JSON object with every figure, ratio and a ``targets_met`` map.
``docs/benchmarks.md`` explains the method and the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import redis

from . import audit, baselines, cycle, product, signing, topology
from .baselines import CpuUse, percentiles

DEFAULT_URL: Final = os.environ.get("RAPID_OBJECTION_BENCH_REDIS_URL", baselines.DEFAULT_URL)

# Targets of issue 14 (ratios to bare redis-py in the same run; median of the runs
# unless said otherwise).
MAX_P50_RATIO: Final = 1.2  # scenario 1, p50
MAX_P99_RATIO: Final = 1.3  # scenario 1, p99
MAX_FANOUT_RATIO: Final = 1.15  # scenario 3, p50
MIN_THROUGHPUT_VS_BARE: Final = 0.7  # scenario 2, in every run
MIN_THROUGHPUT_VS_FASTSTREAM: Final = 5.0  # scenario 2, in every run
MIN_EMIT_VS_BARE: Final = 0.6  # scenario 2b: concurrent Publisher.emit
MAX_CPU_RATIO: Final = 1.3  # scenario 2c: CPU per acked event, ours over bare
EMIT_MANY_TASKS: Final = 8  # scenario 2d: tasks each calling emit_many of 100 events

T = TypeVar("T")


def _log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the result lines."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _turns(run: int, *sides: tuple[str, Callable[[], T]]) -> dict[str, T]:
    """Run each side once, rotating who goes first from one run to the next."""
    shift = run % len(sides)
    ordered = sides[shift:] + sides[:shift]
    results: dict[str, T] = {}
    for name, side in ordered:
        _log(f"  run {run + 1}: {name}")
        results[name] = side()
    return results


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(ours: float, theirs: float) -> float:
    return round(ours / theirs, 3) if theirs else float("inf")


def _paired(ratios: Sequence[float]) -> float:
    """The ratio of a scenario: the median of the per-run ratios.

    Each run measures ours and the baseline back to back, so its ratio compares like
    with like even when the machine's load changes between runs; the ratio of the
    medians could pair a quiet run of one side with a busy run of the other.
    """
    return round(_median(ratios), 3)


def _mark(met: bool) -> str:
    return "met" if met else "MISSED"


# -- machine ------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _commit() -> str | None:
    """The checked-out commit (``git describe --always --dirty``), when git can tell."""
    import subprocess

    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH
            cwd=baselines.ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None


def machine(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        server = client.info("server")
    finally:
        client.close()
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "redis": server.get("redis_version"),
        "python": platform.python_version(),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "faststream": _version("faststream"),
        "anyio": _version("anyio"),
        "msgspec": _version("msgspec"),
        "commit": _commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# -- scenarios ----------------------------------------------------------------


def _latency_figures(samples: Sequence[float]) -> dict[str, float]:
    p50, p99 = percentiles(samples)
    return {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3)}


def _latencies(
    runs: int, bare: Callable[[], list[float]], ours: Callable[[], list[float]]
) -> dict[str, Any]:
    """p50 and p99 of each run, their medians, the ratios of the medians and per run."""
    per_run = [
        {
            name: _latency_figures(samples)
            for name, samples in _turns(run, ("bare", bare), ("ours", ours)).items()
        }
        for run in range(runs)
    ]
    medians = {
        side: {k: _median([r[side][k] for r in per_run]) for k in ("p50_ms", "p99_ms")}
        for side in ("ours", "bare")
    }
    ratio_per_run = {
        q: [_ratio(r["ours"][f"{q}_ms"], r["bare"][f"{q}_ms"]) for r in per_run]
        for q in ("p50", "p99")
    }
    ratio = {q: _paired(ratio_per_run[q]) for q in ("p50", "p99")}
    return {**medians, "ratio": ratio, "ratio_per_run": ratio_per_run, "runs": per_run}


def _spread(ratios: Sequence[float]) -> str:
    return "runs " + " / ".join(f"{value:.2f}" for value in ratios)


def scenario_round_trip(url: str, runs: int, n: int) -> dict[str, Any]:
    _log(f"1. round trip: {n} events, one in flight, {runs} runs")
    result = _latencies(
        runs, lambda: baselines.bare_round_trip(url, n), lambda: product.round_trip(url, n)
    )
    ours, bare, ratio = result["ours"], result["bare"], result["ratio"]
    print(
        f"1 round trip      ours p50 {ours['p50_ms']:.2f} ms  p99 {ours['p99_ms']:.2f} ms"
        f" | bare redis-py p50 {bare['p50_ms']:.2f} ms  p99 {bare['p99_ms']:.2f} ms"
        f" | ratio p50 {ratio['p50']:.2f}x ({_spread(result['ratio_per_run']['p50'])})"
        f"  p99 {ratio['p99']:.2f}x"
        f" | target p50 <= {MAX_P50_RATIO}x: {_mark(ratio['p50'] <= MAX_P50_RATIO)},"
        f" p99 <= {MAX_P99_RATIO}x: {_mark(ratio['p99'] <= MAX_P99_RATIO)}",
        flush=True,
    )
    return {"n": n, **result}


def _rate(
    figure: Callable[..., float], url: str, n: int, **options: Any
) -> Callable[[], tuple[float, CpuUse | None]]:
    def run() -> tuple[float, CpuUse | None]:
        cpu: list[CpuUse] = []
        rate = figure(url, n, cpu=cpu, **options)
        return rate, cpu[0] if cpu else None

    return run


def _cpu_summary(uses: Sequence[CpuUse | None], n: int) -> dict[str, float | None]:
    """Median CPU microseconds per event, per party and in total."""
    rows = [use.per_event_us(n) for use in uses if use is not None]
    if not rows:
        return {}
    summary: dict[str, float | None] = {}
    for party in ("publisher", "workers", "redis"):
        values = [row[party] for row in rows]
        known = [value for value in values if value is not None]
        summary[party] = round(_median(known), 1) if len(known) == len(values) else None
    summary["total"] = round(sum(value or 0.0 for value in summary.values()), 1)
    return summary


def scenario_throughput(url: str, runs: int, n: int, emitters: int, n_emit: int) -> dict[str, Any]:
    _log(f"2. throughput: {n} events ({n_emit} with emit), 4 worker processes, {runs} runs")
    per_run = []
    for run in range(runs):
        results = _turns(
            run,
            ("bare", _rate(baselines.bare_throughput, url, n)),
            ("ours (pipelined)", _rate(product.throughput_pipelined, url, n)),
            ("faststream", _rate(baselines.faststream_throughput, url, n)),
            ("ours (emit)", _rate(product.throughput_emit, url, n_emit, emitters=emitters)),
            (
                "ours (emit_many)",
                _rate(product.throughput_emit, url, n_emit, emitters=EMIT_MANY_TASKS, batch=100),
            ),
        )
        per_run.append(results)
    sizes = {
        "bare": n,
        "ours (pipelined)": n,
        "faststream": n,
        "ours (emit)": n_emit,
        "ours (emit_many)": n_emit,
    }
    rates = {name: round(_median([r[name][0] for r in per_run]), 1) for name in sizes}
    cpu = {name: _cpu_summary([r[name][1] for r in per_run], size) for name, size in sizes.items()}
    ours, bare, faststream = rates["ours (pipelined)"], rates["bare"], rates["faststream"]
    emit, emit_many = rates["ours (emit)"], rates["ours (emit_many)"]
    many_ratio = _paired([_ratio(r["ours (emit_many)"][0], r["bare"][0]) for r in per_run])
    ratio_per_run = {
        "vs_bare": [_ratio(r["ours (pipelined)"][0], r["bare"][0]) for r in per_run],
        "vs_faststream": [_ratio(r["ours (pipelined)"][0], r["faststream"][0]) for r in per_run],
    }
    ratio = {key: _paired(values) for key, values in ratio_per_run.items()}
    worst = {key: min(values) for key, values in ratio_per_run.items()}
    emit_ratio = {
        "vs_bare": _paired([_ratio(r["ours (emit)"][0], r["bare"][0]) for r in per_run]),
        "vs_faststream": _paired(
            [_ratio(r["ours (emit)"][0], r["faststream"][0]) for r in per_run]
        ),
    }
    # CPU time per event does not depend on how busy the machine is, as wall time does:
    # on an otherwise idle machine, throughput ratios tend to the inverse CPU ratios.
    ours_cpu = cpu["ours (pipelined)"].get("total") or 0.0
    cpu_ratio = {
        "vs_bare": _ratio(cpu["bare"].get("total") or 0.0, ours_cpu),
        "vs_faststream": _ratio(cpu["faststream"].get("total") or 0.0, ours_cpu),
    }
    print(
        f"2 throughput      ours {ours:,.0f} acked events/s (pipelines of 100)"
        f" | bare redis-py {bare:,.0f}/s | FastStream {faststream:,.0f}/s"
        f" | ratio {ratio['vs_bare']:.2f}x bare ({_spread(ratio_per_run['vs_bare'])}),"
        f" {ratio['vs_faststream']:.2f}x FastStream ({_spread(ratio_per_run['vs_faststream'])})"
        f" | target in every run >= {MIN_THROUGHPUT_VS_BARE}x bare:"
        f" {_mark(worst['vs_bare'] >= MIN_THROUGHPUT_VS_BARE)},"
        f" >= {MIN_THROUGHPUT_VS_FASTSTREAM}x FastStream:"
        f" {_mark(worst['vs_faststream'] >= MIN_THROUGHPUT_VS_FASTSTREAM)}",
        flush=True,
    )
    print(
        f"2b throughput     ours {emit:,.0f} acked events/s ({emitters} concurrent"
        f" Publisher.emit) | ratio {emit_ratio['vs_bare']:.2f}x bare,"
        f" {emit_ratio['vs_faststream']:.2f}x FastStream | target >= {MIN_EMIT_VS_BARE}x"
        f" bare: {_mark(emit_ratio['vs_bare'] >= MIN_EMIT_VS_BARE)}",
        flush=True,
    )
    print(
        f"2d throughput     ours {emit_many:,.0f} acked events/s ({EMIT_MANY_TASKS} tasks, each"
        f" Publisher.emit_many of 100 events at a time) | ratio {many_ratio:.2f}x bare"
        " (no target of its own)",
        flush=True,
    )
    cpu_cost = _ratio(ours_cpu, cpu["bare"].get("total") or 0.0)
    print(
        f"2c CPU per event  ours {cpu_cost:.2f}x bare (target <= {MAX_CPU_RATIO}x:"
        f" {_mark(cpu_cost <= MAX_CPU_RATIO)}; CPU-based throughput ratio"
        f" {cpu_ratio['vs_bare']:.2f}x bare, {cpu_ratio['vs_faststream']:.2f}x FastStream) "
        + " | ".join(
            f"{name} {use.get('total', 0):.0f} us"
            f" (publisher {use.get('publisher') or 0:.0f}, workers {use.get('workers') or 0:.0f},"
            f" redis {use.get('redis') or 0:.0f})"
            for name, use in cpu.items()
            if use
        ),
        flush=True,
    )
    return {
        "n_events": n,
        "workers": 4,
        "method": "pipelines of 100 XADDs, acks counted by the Publisher's ack reader",
        "ours_events_per_s": ours,
        "bare_events_per_s": bare,
        "faststream_events_per_s": faststream,
        "ratio": ratio,
        "ratio_per_run": ratio_per_run,
        "emit": {
            "method": f"{emitters} tasks calling Publisher.emit concurrently",
            "n_events": n_emit,
            "emitters": emitters,
            "events_per_s": emit,
            "ratio": emit_ratio,
            "meets_targets": {"vs_bare": emit_ratio["vs_bare"] >= MIN_EMIT_VS_BARE},
        },
        "emit_many": {
            "method": f"{EMIT_MANY_TASKS} tasks calling Publisher.emit_many of 100 events",
            "n_events": n_emit,
            "events_per_s": emit_many,
            "ratio": {"vs_bare": many_ratio},
        },
        "worst_run_ratio": worst,
        "cpu_us_per_event": cpu,
        "cpu_ratio": cpu_ratio,
        "cpu_cost_vs_bare": cpu_cost,
        "runs": [{name: round(rate, 1) for name, (rate, _cpu) in r.items()} for r in per_run],
    }


def scenario_fanout(url: str, runs: int, n: int) -> dict[str, Any]:
    _log(f"3. fan-out to 3 plugins: {n} events, one in flight, {runs} runs")
    result = _latencies(
        runs, lambda: baselines.bare_fanout(url, n, 3), lambda: product.fanout(url, n)
    )
    ours, bare, ratio = result["ours"], result["bare"], result["ratio"]
    print(
        f"3 fan-out x3      ours p50 {ours['p50_ms']:.2f} ms  p99 {ours['p99_ms']:.2f} ms"
        f" | bare redis-py p50 {bare['p50_ms']:.2f} ms  p99 {bare['p99_ms']:.2f} ms"
        f" | ratio p50 {ratio['p50']:.2f}x ({_spread(result['ratio_per_run']['p50'])})"
        f" | target p50 <= {MAX_FANOUT_RATIO}x: {_mark(ratio['p50'] <= MAX_FANOUT_RATIO)}",
        flush=True,
    )
    return {"n": n, "plugins": 3, **result}


def scenario_footprint(url: str, runs: int) -> dict[str, Any]:
    _log(f"4. footprint: idle worker RSS and import time, {runs} runs")
    per_run = []
    for run in range(runs):
        rss = _turns(
            run,
            ("bare RSS", lambda: baselines.idle_worker_rss_baseline(url)),
            ("ours RSS", lambda: product.idle_worker_rss(url)),
        )
        imports = _turns(
            run,
            ("bare import", lambda: baselines.import_time("redis.asyncio")),
            ("ours import", lambda: baselines.import_time("plugin_workers")),
        )
        per_run.append(
            {
                "rss_mib": {"ours": round(rss["ours RSS"], 1), "bare": round(rss["bare RSS"], 1)},
                "import_ms": {
                    "ours": round(imports["ours import"] * 1e3, 1),
                    "bare": round(imports["bare import"] * 1e3, 1),
                },
            }
        )
    figures: dict[str, Any] = {}
    for figure in ("rss_mib", "import_ms"):
        ours = _median([r[figure]["ours"] for r in per_run])
        bare = _median([r[figure]["bare"] for r in per_run])
        ratio = _paired([_ratio(r[figure]["ours"], r[figure]["bare"]) for r in per_run])
        figures[figure] = {"ours": ours, "bare": bare, "ratio": ratio}
    rss, imports = figures["rss_mib"], figures["import_ms"]
    print(
        f"4 footprint       idle worker VmRSS ours {rss['ours']:.1f} MiB"
        f" | bare redis.asyncio {rss['bare']:.1f} MiB | ratio {rss['ratio']:.2f}x"
        f" ;  import plugin_workers {imports['ours']:.0f} ms"
        f" | import redis.asyncio {imports['bare']:.0f} ms | ratio {imports['ratio']:.2f}x"
        " (no target)",
        flush=True,
    )
    return {**figures, "runs": per_run}


def scenario_retention(url: str, n: int, max_len: int) -> dict[str, Any]:
    _log(f"7. retention: {n} events at full speed, retention_max_len {max_len}, 4 workers")
    rate, samples, final = product.retention_pipelined(url, n, max_len)
    peak = max((length for length, _ in samples), default=0)
    # Over the limit by more than the entries not yet acked (which retention must keep):
    # what trimming has not caught up with yet.
    behind = max((length - max_len - unacked for length, unacked in samples), default=0)
    print(
        f"7 retention       {n:,} events at {rate:,.0f} acked events/s with"
        f" retention_max_len {max_len:,}: stream length peak {peak:,}, at most"
        f" {max(behind, 0):,} entries over the limit beyond those not yet acked"
        f" ({len(samples)} samples), {final:,} a trim later;"
        " every event acked once (none trimmed before delivery)",
        flush=True,
    )
    return {
        "n_events": n,
        "max_len": max_len,
        "events_per_s": round(rate, 1),
        "peak_length": peak,
        "max_over_beyond_unacked": max(behind, 0),
        "final_length": final,
        "samples": len(samples),
    }


# -- command line -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis URL (default {DEFAULT_URL})")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median shown)")
    parser.add_argument("--round-trips", type=int, default=2000, help="scenario 1 samples")
    parser.add_argument("--events", type=int, default=20_000, help="scenario 2 events")
    parser.add_argument("--emitters", type=int, default=256, help="scenario 2b emit tasks")
    parser.add_argument("--emit-events", type=int, default=10_000, help="scenario 2b events")
    parser.add_argument("--fanout", type=int, default=1000, help="scenario 3 samples")
    parser.add_argument("--cycles", type=int, default=100, help="scenario 9 registry cycles")
    parser.add_argument("--retention-events", type=int, default=100_000, help="scenario 7 events")
    parser.add_argument(
        "--retention-max-len", type=int, default=10_000, help="scenario 7 retention_max_len"
    )
    parser.add_argument("--audit-events", type=int, default=20_000, help="scenario 10 events")
    parser.add_argument(
        "--postgres-url", default=audit.DEFAULT_POSTGRES_URL, help="scenario 10's PostgreSQL"
    )
    parser.add_argument("--only", choices=("retention", "audit"), help="run this scenario alone")
    parser.add_argument(
        "--quick", action="store_true", help="one small run of everything (a smoke test)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.round_trips, args.events, args.fanout = 1, 300, 3000, 200
        args.emit_events, args.cycles = 3000, 20
        args.retention_events, args.retention_max_len = 20_000, 2_000
        args.audit_events = 3000
    try:
        client = redis.Redis.from_url(args.url, socket_connect_timeout=2, socket_timeout=5)
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        print(f"bench: Redis at {args.url} does not answer: {exc}", file=sys.stderr)
        return 2
    # asyncio.Runner turns Ctrl-C into a cancellation that a task group may absorb; a
    # handler of our own makes SIGINT and SIGTERM always unwind the run, so that every
    # `finally` stops its worker processes and deletes its keys.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.only == "retention":
            scenario_retention(args.url, args.retention_events, args.retention_max_len)
            return 0
        if args.only == "audit":
            audit.scenario_audit(args.url, args.runs, args.audit_events, args.postgres_url)
            return 0
        return _run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; worker processes stopped, keys deleted", file=sys.stderr)
        return 130


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    host = machine(args.url)
    print(
        f"bench on {host['nproc']} CPUs ({host['cpu']}), Redis {host['redis']}, "
        f"Python {host['python']}, redis-py {host['redis_py']} + hiredis {host['hiredis']}, "
        f"FastStream {host['faststream']}; commit {host['commit']}; "
        f"load average {host['load_average_at_start']}; "
        f"median of {args.runs} runs",
        flush=True,
    )
    round_trip = scenario_round_trip(args.url, args.runs, args.round_trips)
    throughput = scenario_throughput(
        args.url, args.runs, args.events, args.emitters, args.emit_events
    )
    fanout = scenario_fanout(args.url, args.runs, args.fanout)
    footprint = scenario_footprint(args.url, args.runs)
    durability = topology.scenario_durability(args.runs, args.round_trips)
    cluster = topology.scenario_cluster(args.runs, args.events)
    retention = scenario_retention(args.url, args.retention_events, args.retention_max_len)
    signed = signing.scenario_signing(args.url, args.runs, args.round_trips, args.events)
    registry_cycle = cycle.scenario_cycle(args.url, args.runs, args.cycles, args.round_trips // 4)
    archived = audit.scenario_audit(args.url, args.runs, args.audit_events, args.postgres_url)
    host["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    targets_met = {
        "round_trip_p50": round_trip["ratio"]["p50"] <= MAX_P50_RATIO,
        "round_trip_p99": round_trip["ratio"]["p99"] <= MAX_P99_RATIO,
        "throughput_vs_bare": throughput["worst_run_ratio"]["vs_bare"] >= MIN_THROUGHPUT_VS_BARE,
        "throughput_vs_faststream": (
            throughput["worst_run_ratio"]["vs_faststream"] >= MIN_THROUGHPUT_VS_FASTSTREAM
        ),
        "emit_vs_bare": throughput["emit"]["meets_targets"]["vs_bare"],
        "cpu_per_event": throughput["cpu_cost_vs_bare"] <= MAX_CPU_RATIO,
        "fanout_p50": fanout["ratio"]["p50"] <= MAX_FANOUT_RATIO,
        "registry_cycle": registry_cycle["met"],
        "signing_p50": signed["targets_met"]["p50"],
        "signing_throughput": signed["targets_met"]["throughput"],
        **archived.get("targets_met", {}),
    }
    elapsed = time.monotonic() - started
    _log(f"done in {elapsed:.0f} s; targets met: {targets_met}")
    report = {
        "machine": host,
        "runs": args.runs,
        "elapsed_s": round(elapsed, 1),
        "round_trip": round_trip,
        "throughput": throughput,
        "fanout": fanout,
        "footprint": footprint,
        "durability": durability,
        "cluster": cluster,
        "retention": retention,
        "signing": signed,
        "registry_cycle": registry_cycle,
        "audit": archived,
        "targets_met": targets_met,
    }
    print(msgspec.json.encode(report).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
