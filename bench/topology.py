"""``python -m bench.topology``: what durability costs, and what a cluster gives.

Scenarios 5 and 6 of ``make bench``.

5. A primary and one replica of the benchmark's own on
loopback (``redis-server`` on free ports, nothing on disk); the round trip of scenario
1 (``Publisher.emit`` -> one worker process -> ack) with ``min_replicas=1`` against the
same with ``min_replicas=0``, taking turns, median of the runs. With ``min_replicas=1``
the publish and the worker's ack transaction each wait (WAIT) for the replica.

6. A Redis Cluster of the benchmark's own (3 masters, 3 replicas): the throughput of
scenario 2 (pipelined publishing, 2 worker processes per namespace) on 3 namespaces
whose slots live on the 3 masters, all at once, against 1 namespace alone; the ratio
is the 3 namespaces' events per second over the one's. Every process runs on this
machine, so it measures the protocol's spread over shards, not more hardware.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from tests.topologies import Servers, client, free_ports, start_cluster

from . import product
from .baselines import percentiles


@contextmanager
def replicated_server() -> Iterator[str]:
    """The URL of a primary with one replica in sync; both stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="ro-bench-") as directory:
        servers = Servers(Path(directory))
        primary, replica = free_ports(2)
        try:
            servers.start(primary)
            servers.start(replica, "--replicaof", "127.0.0.1", str(primary))
            with client(replica) as node:
                while node.info("replication").get("master_link_status") != "up":
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{primary}/0"
        finally:
            servers.close()


def scenario_durability(runs: int, n: int) -> dict[str, Any]:
    print(f"[bench] 5. durability: min_replicas=1 against 0, {n} round trips, {runs} runs")
    figures: dict[str, list[tuple[float, float]]] = {"0": [], "1": []}
    with replicated_server() as url:
        for run in range(runs):
            order = ("0", "1") if run % 2 == 0 else ("1", "0")  # taking turns
            for replicas in order:
                samples = product.round_trip(f"{url}?min_replicas={replicas}", n)
                figures[replicas].append(percentiles(samples))
    p50 = {side: median(p for p, _ in rows) * 1e3 for side, rows in figures.items()}
    p99 = {side: median(p for _, p in rows) * 1e3 for side, rows in figures.items()}
    cost = {"p50": p50["1"] / p50["0"], "p99": p99["1"] / p99["0"]}
    print(
        f"5 min_replicas=1  p50 {p50['1']:.2f} ms  p99 {p99['1']:.2f} ms"
        f" | min_replicas=0 p50 {p50['0']:.2f} ms  p99 {p99['0']:.2f} ms"
        f" | cost p50 {cost['p50']:.2f}x  p99 {cost['p99']:.2f}x",
        flush=True,
    )
    return {"n": n, "p50_ms": p50, "p99_ms": p99, "cost": cost}


def scenario_cluster(runs: int, n: int) -> dict[str, Any]:
    print(f"[bench] 6. cluster: {n} events on 3 namespaces of 3 shards against 1, {runs} runs")
    with tempfile.TemporaryDirectory(prefix="ro-bench-cluster-") as directory:
        cluster = start_cluster(Path(directory))
        try:
            url = f"{cluster.url}?cluster=true"
            spread = _namespaces_per_master(cluster)
            one: list[float] = []
            three: list[float] = []
            for _ in range(runs):
                one.append(product.throughput_pipelined(url, n, 2, namespace=spread[0]))
                three.append(_at_once(url, n, spread))
        finally:
            cluster.servers.close()
    single, spread_rate = median(one), median(three)
    ratio = spread_rate / single
    print(
        f"6 cluster         3 namespaces on 3 shards {spread_rate:,.0f} events/s"
        f" | 1 namespace {single:,.0f} events/s | ratio {ratio:.2f}x",
        flush=True,
    )
    return {"n": n, "one_namespace": single, "three_namespaces": spread_rate, "ratio": ratio}


def _namespaces_per_master(cluster: Any) -> list[str]:
    chosen: dict[int, str] = {}
    for number in range(1000):
        name = f"bench-shard-{number}"
        chosen.setdefault(cluster.master_of(f"ro:{{{name}}}:events"), name)
        if len(chosen) == 3:
            break
    return list(chosen.values())


def _at_once(url: str, n: int, namespaces: list[str]) -> float:
    """Events per second of all namespaces together, each run in a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(len(namespaces)) as pool:
        list(
            pool.map(
                lambda namespace: product.throughput_pipelined(url, n, 2, namespace=namespace),
                namespaces,
            )
        )
    return n * len(namespaces) / (time.perf_counter() - started)


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    scenario_durability(1 if quick else 3, 300 if quick else 2000)
    scenario_cluster(1 if quick else 3, 3000 if quick else 20_000)
