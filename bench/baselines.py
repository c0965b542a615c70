"""Baselines: bare redis-py streams and FastStream draining the same events.

Each scenario is a plain function so that the product's own scenarios can run
next to them in one process and be printed side by side.
``python -m bench.baselines`` runs them all at modest sizes.

Worker processes are this module run as ``python -m bench.baselines worker ...``;
they are terminated when a scenario ends and exit by themselves if their parent
disappears. Every run uses fresh keys (``bench:{<uuid>}:...``) and deletes them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import msgspec
import redis
import redis.asyncio

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
BATCH: Final = 100  # XADDs per publish pipeline, and COUNT of each worker's XREADGROUP
BLOCK_MS: Final = 1000  # XREAD(GROUP) BLOCK; also how often a bare worker checks its parent
WARMUP: Final = 200  # round trips discarded before measuring
READY_TIMEOUT_S: Final = 60.0  # worker start-up on a busy 2-core machine
POLL_S: Final = 0.002  # FastStream completion poll: resolution of its wall time
DATA_FIELD: Final = b"__data__"  # the entry field FastStream reads its envelope from

_Entry = tuple[bytes, dict[bytes, bytes]]

ROOT: Final = Path(__file__).resolve().parent.parent  # so `-m bench.baselines` resolves
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])

# The idle worker imports nothing but redis.asyncio (and what asyncio needs), so
# it lives in its own script instead of this module's heavier import graph.
_IDLE_SCRIPT: Final = """
import asyncio, os, sys
import redis.asyncio

async def main(url, stream, group, name):
    parent = os.getppid()
    r = redis.asyncio.Redis.from_url(url, client_name=name)
    while os.getppid() == parent:
        await r.xreadgroup(group, name, {stream: ">"}, count=1, block=1000)

asyncio.run(main(*sys.argv[1:]))
"""


# -- events and keys ----------------------------------------------------------


def make_event(seq: int) -> bytes:
    """One msgpack-encoded lifecycle event of about 300 bytes."""
    event = {
        "id": uuid.uuid4().hex,
        "type": "app.migration.applied",
        "app": "billing-service",
        "registry": "prod-eu-west",
        "time": datetime.now(UTC).isoformat(),
        "payload": {
            "seq": seq,
            "revision": "3f9a1c2b7d4e",
            "previous_revision": "8e2d5b1a0c9f",
            "dialect": "postgresql",
            "tables": ["invoices", "invoice_lines", "payments", "customers"],
            "duration_ms": 1234.5,
            "dry_run": False,
        },
    }
    return _encoder.encode(event)


@dataclass(frozen=True, slots=True)
class _Keys:
    events: str
    replies: str
    ready: str  # workers RPUSH their name here once they are about to read

    @classmethod
    def new(cls) -> _Keys:
        # The hash tag keeps every key of a run in one Cluster slot.
        prefix = f"bench:{{{uuid.uuid4().hex}}}"
        return cls(f"{prefix}:events", f"{prefix}:replies", f"{prefix}:ready")


@contextlib.contextmanager
def _streams(url: str, keys: _Keys, groups: Sequence[str]) -> Iterator[None]:
    """Create the events stream and its groups (XGROUP CREATE MKSTREAM); delete all keys after."""
    client = redis.Redis.from_url(url)
    try:
        for group in groups:
            client.xgroup_create(keys.events, group, id="$", mkstream=True)
        yield
    finally:
        client.delete(keys.events, keys.replies, keys.ready)
        client.close()


def _entries(reply: object) -> list[_Entry]:
    """The entries of a one-stream XREAD/XREADGROUP reply, whether RESP2 or RESP3 shaped."""
    if isinstance(reply, dict):  # RESP3: {stream: [[entry, ...]]}
        return [entry for batch in reply.values() for entry in batch[0]]
    if isinstance(reply, list):  # RESP2: [[stream, [entry, ...]]]
        return [entry for _stream, batch in reply for entry in batch]
    return []


# -- worker processes ---------------------------------------------------------


@contextlib.contextmanager
def _workers(commands: Sequence[Sequence[str]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one ``python -m bench.baselines worker ...`` per command; terminate them all after."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.baselines", "worker", *command],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,  # EOF tells a worker its parent is gone
                    stdout=subprocess.DEVNULL,
                )
            )
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


def _check_alive(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            msg = f"worker {proc.pid} exited with {proc.returncode}"
            raise RuntimeError(msg)


async def _wait_ready(
    client: redis.asyncio.Redis, key: str, procs: Sequence[subprocess.Popen[bytes]]
) -> None:
    with anyio.fail_after(READY_TIMEOUT_S):
        ready = 0
        while ready < len(procs):
            if await client.blpop([key], timeout=1) is None:
                _check_alive(procs)
            else:
                ready += 1


def _bare_commands(url: str, keys: _Keys, groups: Sequence[str], per_group: int) -> list[list[str]]:
    return [
        ["bare", url, keys.events, group, f"c{i}", keys.replies, keys.ready]
        for group in groups
        for i in range(per_group)
    ]


# -- scenario 1 and 3: round trips with one event in flight -------------------


def bare_round_trip(url: str, n: int, *, warmup: int = WARMUP) -> list[float]:
    """Seconds per publish → worker process → ack round trip, one event in flight."""
    return _round_trips(url, n, groups=1, warmup=warmup)


def bare_fanout(url: str, n: int, groups: int = 3, *, warmup: int = WARMUP) -> list[float]:
    """Seconds until every one of ``groups`` consumer groups (one worker each) has acked."""
    return _round_trips(url, n, groups=groups, warmup=warmup)


def _round_trips(url: str, n: int, *, groups: int, warmup: int) -> list[float]:
    keys = _Keys.new()
    names = [f"g{i}" for i in range(groups)]
    with _streams(url, keys, names), _workers(_bare_commands(url, keys, names, 1)) as procs:
        run = partial(_measure_round_trips, url, keys, procs, warmup + n, groups)
        return anyio.run(run, backend="asyncio")[warmup:]


async def _measure_round_trips(
    url: str, keys: _Keys, procs: Sequence[subprocess.Popen[bytes]], total: int, acks: int
) -> list[float]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await _wait_ready(client, keys.ready, procs)
        samples: list[float] = []
        last_reply: bytes | str = "0-0"
        for seq in range(total):
            blob = make_event(seq)
            event_id = _decoder.decode(blob)["id"].encode()
            started = time.perf_counter()
            await client.xadd(keys.events, {DATA_FIELD: blob})
            seen = 0
            while seen < acks:
                # XREAD BLOCK: https://redis.io/commands/xread/
                reply = await client.xread({keys.replies: last_reply}, count=acks, block=BLOCK_MS)
                entries = _entries(reply)
                if not entries:
                    _check_alive(procs)
                    continue
                for entry_id, fields in entries:
                    if fields[b"id"] != event_id:
                        msg = f"ack for {fields[b'id']!r} while waiting for {event_id!r}"
                        raise RuntimeError(msg)
                    last_reply = entry_id
                    seen += 1
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await client.aclose()


# -- scenario 2 and 4: throughput ---------------------------------------------


def bare_throughput(
    url: str, n_events: int, workers: int = 4, *, cpu: list[CpuUse] | None = None
) -> float:
    """Acked events/s: batches of 100 in, 4 workers acking each read batch in one pipeline.

    When ``cpu`` is given, the CPU time used during the measured window is appended to it.
    """
    keys = _Keys.new()
    commands = _bare_commands(url, keys, ["g"], workers)
    with _streams(url, keys, ["g"]), _workers(commands) as procs:
        run = partial(_measure_throughput, url, keys, procs, n_events, _count_replies, cpu=cpu)
        return anyio.run(run, backend="asyncio")


def faststream_throughput(
    url: str, n_events: int, workers: int = 4, *, cpu: list[CpuUse] | None = None
) -> float:
    """Handled events/s: the same events drained by FastStream's stream subscriber.

    Each worker is a FastStream RedisBroker with one StreamSub(group, consumer,
    max_records=100) subscriber whose handler decodes the event and returns, so
    FastStream acks it its normal way (one XACK per message). Completion is
    observed from outside, polling XINFO GROUPS every 2 ms until the group has
    delivered the last entry and nothing is pending: the handler does no extra
    Redis call (an INCRBY or a reply XADD per message would add a round trip that
    FastStream would otherwise not make). The bare workers do strictly more Redis
    work (a reply XADD per entry), so any bias favours FastStream.
    """
    keys = _Keys.new()
    commands = [["faststream", url, keys.events, "g", f"c{i}", keys.ready] for i in range(workers)]
    with _streams(url, keys, ["g"]), _workers(commands) as procs:
        run = partial(
            _measure_throughput, url, keys, procs, n_events, _poll_group, envelope=True, cpu=cpu
        )
        return anyio.run(run, backend="asyncio")


# Returns once every event is known to be handled: (client, keys, procs, n_events, published).
_Done = Callable[
    [redis.asyncio.Redis, _Keys, Sequence[subprocess.Popen[bytes]], int, list[bytes]],
    Awaitable[None],
]


async def _measure_throughput(
    url: str,
    keys: _Keys,
    procs: Sequence[subprocess.Popen[bytes]],
    n_events: int,
    done: _Done,
    *,
    envelope: bool = False,
    cpu: list[CpuUse] | None = None,
) -> float:
    """Events/s from the first publish until ``done`` returns.

    Events are built and encoded before the clock starts (``make_event`` costs
    about 5 µs each), so the figure covers publishing, transport and workers.
    """
    blobs = [make_event(seq) for seq in range(n_events)]
    if envelope:
        blobs = [await _faststream_envelope(blob) for blob in blobs]
    client = redis.asyncio.Redis.from_url(url)
    try:
        await _wait_ready(client, keys.ready, procs)
        published: list[bytes] = []  # the last entry id, once everything is published
        meter = CpuMeter([proc.pid for proc in procs], await redis_server_pid(client))
        with anyio.fail_after(max(120.0, n_events / 200)):
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_publish, client, keys.events, blobs, published)
                await done(client, keys, procs, n_events, published)
            elapsed = time.perf_counter() - started
        if cpu is not None:
            cpu.append(meter.stop())
        return n_events / elapsed
    finally:
        await client.aclose()


async def _publish(
    client: redis.asyncio.Redis, stream: str, blobs: Sequence[bytes], published: list[bytes]
) -> None:
    last = b""
    for start in range(0, len(blobs), BATCH):
        pipe = client.pipeline(transaction=False)
        for blob in blobs[start : start + BATCH]:
            pipe.xadd(stream, {DATA_FIELD: blob})
        ids = await pipe.execute()
        last = ids[-1]
    published.append(last)


async def _count_replies(
    client: redis.asyncio.Redis,
    keys: _Keys,
    procs: Sequence[subprocess.Popen[bytes]],
    n_events: int,
    _published: list[bytes],
) -> None:
    # The pool hands this blocking XREAD its own connection, apart from the publisher's.
    seen = 0
    last: bytes | str = "0-0"
    while seen < n_events:
        entries = _entries(await client.xread({keys.replies: last}, count=1000, block=BLOCK_MS))
        if not entries:
            _check_alive(procs)
            continue
        seen += len(entries)
        last = entries[-1][0]


async def _poll_group(
    client: redis.asyncio.Redis,
    keys: _Keys,
    procs: Sequence[subprocess.Popen[bytes]],
    _n_events: int,
    published: list[bytes],
) -> None:
    # XINFO GROUPS: https://redis.io/commands/xinfo-groups/
    while True:
        await anyio.sleep(POLL_S)
        if not published:
            continue
        (group,) = await client.xinfo_groups(keys.events)
        if group["pending"] == 0 and group["last-delivered-id"] == published[0]:
            return
        _check_alive(procs)


async def _faststream_envelope(blob: bytes) -> bytes:
    """The blob in FastStream's own wire format, as its publisher would have sent it."""
    from faststream.redis import BinaryMessageFormatV1

    envelope: bytes = await BinaryMessageFormatV1.encode(
        message=blob, reply_to=None, headers=None, correlation_id=uuid.uuid4().hex
    )
    return envelope


# -- scenario 5: footprint ----------------------------------------------------


def idle_worker_rss_baseline(url: str = DEFAULT_URL) -> float:
    """VmRSS in MiB of a process that imported only redis.asyncio, blocked on XREADGROUP."""
    keys = _Keys.new()
    name = f"bench-idle-{uuid.uuid4().hex}"
    with _streams(url, keys, ["g"]), contextlib.closing(redis.Redis.from_url(url)) as client:
        proc = subprocess.Popen(
            [sys.executable, "-c", _IDLE_SCRIPT, url, keys.events, "g", name],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _is_blocked(client, name):
                _check_alive([proc])
                if time.monotonic() > deadline:
                    msg = "idle worker never blocked on XREADGROUP"
                    raise TimeoutError(msg)
                time.sleep(0.05)
            time.sleep(0.2)  # let the first read settle before sampling
            return vm_rss_kib(proc.pid) / 1024
        finally:
            stop_processes([proc])


def _is_blocked(client: redis.Redis, name: str) -> bool:
    # CLIENT LIST: `flags` holds `b` while the client waits in a blocking command.
    return any(
        entry.get("name") == name and entry.get("cmd") == "xreadgroup" and "b" in entry["flags"]
        for entry in client.client_list()
    )


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for pid {pid}"
    raise RuntimeError(msg)


def import_time(module: str, *, repeat: int = 5) -> float:
    """Seconds ``python -c "import <module>"`` takes over ``python -c pass`` (medians)."""
    if not all(part.isidentifier() for part in module.split(".")):
        msg = f"not a module name: {module!r}"
        raise ValueError(msg)

    def median_wall(code: str) -> float:
        _run_python(code)  # untimed: byte-compiles and warms the page cache
        return statistics.median(_run_python(code) for _ in range(repeat))

    return median_wall(f"import {module}") - median_wall("pass")


def _run_python(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


# -- CPU accounting -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds spent during a measured window, by who spent them."""

    publisher: float
    """This process: the publisher and whatever observes completion."""
    workers: float
    """All worker processes together."""
    redis: float | None
    """The Redis server, when it runs on this machine (None otherwise)."""

    def per_event_us(self, n_events: int) -> dict[str, float | None]:
        """Microseconds of CPU per event, per party (the way to compare costs on a busy box)."""

        def us(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds / n_events * 1e6, 1)

        return {
            "publisher": us(self.publisher),
            "workers": us(self.workers),
            "redis": us(self.redis),
        }


def _process_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Starts counting at construction; ``stop()`` returns what each party spent since."""

    def __init__(self, worker_pids: Sequence[int], redis_pid: int | None) -> None:
        self._workers = list(worker_pids)
        self._redis = redis_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        own = os.times()
        workers = sum(_process_cpu(pid) for pid in self._workers)
        server = _process_cpu(self._redis) if self._redis is not None else None
        return own.user + own.system, workers, server

    def stop(self) -> CpuUse:
        own, workers, server = self._sample()
        start_own, start_workers, start_server = self._start
        return CpuUse(
            publisher=own - start_own,
            workers=workers - start_workers,
            redis=None if server is None or start_server is None else server - start_server,
        )


async def redis_server_pid(client: redis.asyncio.Redis) -> int | None:
    """The Redis server's pid when it runs on this machine and /proc shows it, else None."""
    return local_pid(await client.info("server"))


def local_pid(server_info: dict[str, Any]) -> int | None:
    """The pid of ``INFO server`` when that process is a Redis server on this machine."""
    pid = int(server_info.get("process_id", 0))
    try:
        comm = Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return None
    return pid if pid and comm.startswith("redis") else None


# -- helpers for reports ------------------------------------------------------


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of the samples, in the samples' unit."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[98]


# -- worker entry points ------------------------------------------------------


async def _bare_worker(args: Sequence[str]) -> None:
    url, stream, group, consumer, replies, ready = args
    parent = os.getppid()
    client = redis.asyncio.Redis.from_url(url)
    await client.rpush(ready, consumer)
    while os.getppid() == parent:
        # XREADGROUP: https://redis.io/commands/xreadgroup/
        reply = await client.xreadgroup(group, consumer, {stream: ">"}, count=BATCH, block=BLOCK_MS)
        entries = _entries(reply)
        if not entries:
            continue
        # One round trip per read batch: an ack record per entry, then XACK of all ids.
        pipe = client.pipeline(transaction=False)
        for _entry_id, fields in entries:
            event = _decoder.decode(fields[DATA_FIELD])
            pipe.xadd(replies, {b"id": event["id"], b"group": group})
        pipe.xack(stream, group, *(entry_id for entry_id, _fields in entries))
        await pipe.execute()


async def _faststream_worker(args: Sequence[str]) -> None:
    from faststream.redis import RedisBroker, StreamSub

    url, stream, group, consumer, ready = args
    # A logger that drops INFO: no access-log line per message, which would time the console.
    quiet = logging.getLogger("bench.faststream")
    quiet.setLevel(logging.WARNING)
    broker = RedisBroker(url, logger=quiet)
    sub = StreamSub(
        stream, group=group, consumer=consumer, max_records=BATCH, polling_interval=BLOCK_MS
    )

    @broker.subscriber(stream=sub)
    async def handle(body: bytes) -> None:
        _decoder.decode(body)

    await broker.start()
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.rpush(ready, consumer)
        # Serve until stdin reaches EOF: the parent closed it or died.
        await anyio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
    finally:
        await client.aclose()
        await broker.stop()


# -- command line -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Run every baseline at modest sizes, or (``worker ...``) be one worker process."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="internal: one worker process")
    worker.add_argument("kind", choices=["bare", "faststream"])
    worker.add_argument("args", nargs="+")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (median shown)")
    ns = parser.parse_args(argv)
    if ns.command == "worker":
        target = _bare_worker if ns.kind == "bare" else _faststream_worker
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(target, ns.args, backend="asyncio")
        return
    _report(ns.url, ns.round_trips, ns.events, ns.fanout, ns.repeat)


def _report(url: str, round_trips: int, events: int, fanout: int, repeat: int) -> None:
    def ms(samples: Sequence[float]) -> str:
        p50, p99 = percentiles(samples)
        return f"p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms"

    def rate(scenario: Callable[[str, int], float]) -> str:
        # Throughput on 2 shared cores swings by a third between runs: show the spread.
        runs = [scenario(url, events) for _ in range(repeat)]
        return (
            f"{statistics.median(runs):,.0f} events/s (median of {repeat}, "
            f"range {min(runs):,.0f}-{max(runs):,.0f})"
        )

    print(f"bare round trip        n={round_trips}  {ms(bare_round_trip(url, round_trips))}")
    print(f"bare throughput        {events} events, 4 workers: {rate(bare_throughput)}")
    print(f"bare fan-out x3        n={fanout}  {ms(bare_fanout(url, fanout))}")
    print(f"faststream throughput  {events} events, 4 workers: {rate(faststream_throughput)}")
    print(
        f"idle worker RSS        redis.asyncio, blocked on XREADGROUP: "
        f"{idle_worker_rss_baseline(url):.1f} MiB"
    )
    for module in ("redis.asyncio", "faststream.redis"):
        print(f"import time            {module}: {import_time(module) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
