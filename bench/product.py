"""Our product's side of the benchmark: the same scenarios as ``bench.baselines``.

Every scenario drives the real thing end to end: a ``Publisher`` (the registry's side
of the bus) emits events and awaits the acks of its required plugins, and each plugin
runs as its own ``rapid-objection worker`` process (``bench.product:NoopPlugin``).

The plugins below are also what those worker processes import, so this module's
top-level imports stay as light as a real plugin's: ``plugin_workers`` and nothing
else. The scenario functions import what they need when they run.

Every run uses a fresh namespace (``bench-<hex>``); worker processes are terminated
(SIGTERM, then SIGKILL) when a run ends, die with the benchmark if it is killed
(``PR_SET_PDEATHSIG``), and the namespace's keys are deleted afterwards.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, Final

from rapid_objection.plugin_workers import PluginInterface

if TYPE_CHECKING:
    from collections.abc import Sequence
    from subprocess import Popen

    import redis

    from rapid_objection.bus import AutoOperationsCompleted, Bus, Publisher, Retention, WaitResult
    from rapid_objection.bus._keyring import Keyring
    from rapid_objection.bus._publisher import PluginPolicy

    from .baselines import CpuUse


APP: Final = "billing-service"
STALL_S: Final = 15.0  # seconds without a new ack after which a throughput run fails


class NoopPlugin(PluginInterface):
    """A plugin whose one hook (``on_auto_operations_completed``) returns at once."""

    plugin_name = "bench-noop"

    def __init__(self) -> None:
        super().__init__(self.plugin_name, "1.0.0")

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> None:
        return None


class NoopPluginB(NoopPlugin):
    """The second plugin of the fan-out scenario."""

    plugin_name = "bench-noop-b"


class NoopPluginC(NoopPlugin):
    """The third plugin of the fan-out scenario."""

    plugin_name = "bench-noop-c"


FANOUT_PLUGINS: Final = (NoopPlugin, NoopPluginB, NoopPluginC)


# -- events -------------------------------------------------------------------


def make_payload(seq: int) -> AutoOperationsCompleted:
    """The event of ``bench.baselines.make_event`` as a lifecycle payload.

    Same facts (a migration applied: revisions, dialect, tables, duration), so the
    encoded envelope is comparable in size (about 410 bytes against about 310: the
    envelope adds its schema version, sequence, deadline, required plugins and tags).
    """
    from rapid_objection.bus import AutoOperationsCompleted, OperationResult

    return AutoOperationsCompleted(
        operations=(
            OperationResult(
                operation="migrations",
                success=True,
                items=("3f9a1c2b7d4e",),
                duration=1.2345,
                details={
                    "seq": seq,
                    "previous_revision": "8e2d5b1a0c9f",
                    "dialect": "postgresql",
                    "tables": ["invoices", "invoice_lines", "payments", "customers"],
                    "dry_run": False,
                },
            ),
        ),
    )


# -- worker processes ---------------------------------------------------------

# How the worker is started: `python -m rapid_objection.core._cli` needs
# `core/_cli/__main__.py`; in a
# tree without it, this is exactly what the `rapid-objection` console script runs.
_CLI_SHIM: Final = "import sys\nfrom rapid_objection.core._cli import main\nsys.exit(main())"


def cli_command() -> list[str]:
    """``python -m rapid_objection.core._cli`` if that works, else the console script's lines."""
    import importlib.util
    import sys

    if importlib.util.find_spec("rapid_objection.core._cli.__main__") is not None:
        return [sys.executable, "-m", "rapid_objection.core._cli"]
    return [sys.executable, "-c", _CLI_SHIM]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the child when the benchmark dies (prctl PR_SET_PDEATHSIG)."""
    import contextlib
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn_worker(arguments: Sequence[str], stderr: IO[bytes]) -> Popen[bytes]:
    """A ``rapid-objection worker ARGUMENTS`` process in the repository, its stderr to
    ``stderr``, that dies with the benchmark."""
    import subprocess
    import sys

    from .baselines import ROOT

    return subprocess.Popen(
        [*cli_command(), "worker", *arguments],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )


class Workers:
    """``rapid-objection worker`` processes of one namespace, stopped and purged on exit."""

    def __init__(
        self,
        url: str,
        plugins: Sequence[type[NoopPlugin]],
        per_plugin: int,
        namespace: str | None = None,
        keys: Keys | None = None,
    ) -> None:
        import secrets

        self.url = url
        self.keys = keys
        self.namespace = namespace or f"bench-{secrets.token_hex(6)}"
        self.specs = [
            (plugin, f"c{i}") for plugin in plugins for i in range(per_plugin)
        ]  # (plugin class, consumer name)
        self.procs: list[Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def client_name(self, consumer: str) -> str:
        return f"{self.namespace}-{consumer}"

    def worker_url(self, plugin: type[NoopPlugin], consumer: str) -> str:
        # A client name per worker, so that CLIENT LIST shows when it blocks on XREADGROUP.
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}client_name={self.client_name(plugin.plugin_name + consumer)}"

    def __enter__(self) -> Workers:
        import tempfile

        try:
            for plugin, consumer in self.specs:
                log = tempfile.TemporaryFile()
                self._logs.append(log)
                arguments = [
                    f"{plugin.__module__}:{plugin.__qualname__}",
                    "--bus-url",
                    self.worker_url(plugin, consumer),
                    "--namespace",
                    self.namespace,
                    "--consumer",
                    consumer,
                    "--concurrency",
                    "1",
                ]
                if self.keys is not None:
                    arguments += ["--keyring", self.keys.exports[plugin.plugin_name]]
                self.procs.append(spawn_worker(arguments, log))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        from .baselines import stop_processes

        try:
            stop_processes(self.procs)
        finally:
            for log in self._logs:
                log.close()
            purge_namespace(self.url, self.namespace)

    def redis_pid(self) -> int | None:
        """The Redis server's pid when it runs on this machine (for CPU accounting)."""
        import redis

        from .baselines import local_pid

        if is_cluster(self.url):
            return None  # several servers: no one pid to account for
        client = redis.Redis.from_url(plain_url(self.url))
        try:
            return local_pid(client.info("server"))
        finally:
            client.close()

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self._logs, strict=True):
            if proc.poll() is not None:
                msg = f"worker {proc.pid} exited with {proc.returncode}:{_tail(log)}"
                raise RuntimeError(msg)

    def logs(self) -> str:
        """The last lines each worker wrote to stderr (for error messages)."""
        return "".join(
            f"\nworker {proc.pid}:{_tail(log)}"
            for proc, log in zip(self.procs, self._logs, strict=True)
        )

    def wait_ready(self) -> None:
        """Until every worker announced itself and blocks on XREADGROUP."""
        import time

        from .baselines import READY_TIMEOUT_S

        wanted = {
            self.client_name(plugin.plugin_name + consumer) for plugin, consumer in self.specs
        }
        client = sync_client(self.url)
        cluster = is_cluster(self.url)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            # CLIENT LIST shows who blocks, but only on one server: on a cluster, a
            # worker is ready once it is a consumer of its group.
            while not (
                _reading(client, self.namespace, self.specs)
                if cluster
                else wanted <= _blocked_readers(client)
            ) or not _announced(client, self.namespace, self.specs):
                self.check_alive()
                if time.monotonic() > deadline:
                    msg = "workers never blocked on XREADGROUP"
                    raise TimeoutError(msg)
                time.sleep(0.05)
        finally:
            client.close()


def _tail(log: IO[bytes], lines: int = 5) -> str:
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-lines:]
    return "".join(f"\n  {line}" for line in tail)


def _blocked_readers(client: redis.Redis) -> set[str]:
    """Client names that are waiting in XREADGROUP ... BLOCK right now."""
    return {
        entry["name"]
        for entry in client.client_list()
        if entry.get("cmd") == "xreadgroup" and "b" in entry["flags"]
    }


def _announced(client: Any, namespace: str, specs: Sequence[tuple[type[NoopPlugin], str]]) -> bool:
    """Whether every worker's manifest and heartbeat are in the directory."""
    from rapid_objection.bus._keys import Keys

    keys = Keys(namespace)
    plugins = {_text(name) for name in client.hkeys(keys.plugins)}
    workers = {_text(name) for name in client.hkeys(keys.workers)}
    return all(
        plugin.plugin_name in plugins and f"{plugin.plugin_name}|{consumer}" in workers
        for plugin, consumer in specs
    )


def is_cluster(url: str) -> bool:
    from rapid_objection.bus._topology import parse

    return bool(parse(url).cluster)


def sync_client(url: str) -> Any:
    """A plain redis-py client for ``url``: a cluster's when the URL says cluster=true."""
    import redis

    if is_cluster(url):
        return redis.RedisCluster.from_url(plain_url(url))
    return redis.Redis.from_url(plain_url(url))


def _reading(client: Any, namespace: str, specs: Sequence[tuple[type[NoopPlugin], str]]) -> bool:
    """Whether every worker is a consumer of its plugin's group (XINFO CONSUMERS)."""
    import redis

    from rapid_objection.bus._keys import Keys

    events = Keys(namespace).events
    for plugin, consumer in specs:
        try:
            rows = client.xinfo_consumers(events, plugin.plugin_name)
        except redis.ResponseError:
            return False  # no stream or group yet
        if consumer not in {_text(row["name"]) for row in rows}:
            return False
    return True


def plain_url(url: str) -> str:
    """``url`` without the bus's own options (min_replicas, ...), for a plain redis-py."""
    from rapid_objection.bus._topology import parse

    return parse(url).client_url


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def purge_namespace(url: str, namespace: str) -> int:
    """Delete every key of ``namespace`` (``rapid_objection.bus.testing.purge``, synchronously)."""

    from rapid_objection.bus._keys import Keys

    pattern = Keys(namespace).prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    client = sync_client(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=500))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


# -- the registry's side ------------------------------------------------------


def _policies(plugins: Sequence[type[NoopPlugin]]) -> dict[str, PluginPolicy]:
    from rapid_objection.bus._publisher import PluginPolicy

    return {plugin.plugin_name: PluginPolicy(required=True) for plugin in plugins}


def _check(result: WaitResult, plugins: int) -> None:
    if not result.ok or len(result.acked) != plugins:
        msg = f"event {result.event_id} was not acked by all {plugins} plugins: {result.outcomes}"
        raise RuntimeError(msg)


class Keys:
    """A keyring for the signed scenario: the registry's ring and each plugin's export."""

    def __init__(self, directory: str, plugins: Sequence[type[NoopPlugin]]) -> None:
        from pathlib import Path

        from rapid_objection.bus._keyfile import KeyFile

        ring = KeyFile.generate([plugin.plugin_name for plugin in plugins])
        self.ring = str(Path(directory) / "ring.json")
        ring.save(self.ring)
        self.exports: dict[str, str] = {}
        for plugin in plugins:
            path = str(Path(directory) / f"{plugin.plugin_name}.json")
            ring.export(plugin.plugin_name).save(path)
            self.exports[plugin.plugin_name] = path


def _keyring(keys: Keys | None) -> Keyring | None:
    from rapid_objection.bus._keyring import Keyring

    return None if keys is None else Keyring.load(keys.ring)


# -- scenario 1 and 3: round trips with one event in flight -------------------


def round_trip(url: str, n: int, *, warmup: int = 200, keys: Keys | None = None) -> list[float]:
    """Seconds per ``Publisher.emit`` with one required plugin (one worker process);
    with ``keys``, signed events and acks."""
    return _round_trips(url, n, (NoopPlugin,), warmup=warmup, keys=keys)


def fanout(url: str, n: int, *, warmup: int = 200) -> list[float]:
    """Seconds per ``Publisher.emit`` with three required plugins, one worker process each."""
    return _round_trips(url, n, FANOUT_PLUGINS, warmup=warmup)


def _round_trips(
    url: str,
    n: int,
    plugins: Sequence[type[NoopPlugin]],
    *,
    warmup: int,
    keys: Keys | None = None,
) -> list[float]:
    from functools import partial

    import anyio

    with Workers(url, plugins, 1, keys=keys) as workers:
        workers.wait_ready()
        run = partial(_measure_round_trips, url, workers, plugins, warmup + n)
        return anyio.run(run, backend="asyncio")[warmup:]


async def _measure_round_trips(
    url: str, workers: Workers, plugins: Sequence[type[NoopPlugin]], total: int
) -> list[float]:
    import time

    from rapid_objection.bus import Bus, Publisher

    payloads = [make_payload(seq) for seq in range(total)]
    samples: list[float] = []
    async with (
        Bus.connect(url, workers.namespace, keyring=_keyring(workers.keys)) as bus,
        Publisher(bus, registry_id="bench", policies=_policies(plugins)) as publisher,
    ):
        for payload in payloads:
            started = time.perf_counter()
            result = await publisher.emit(payload, app=APP)
            samples.append(time.perf_counter() - started)
            _check(result, len(plugins))
        workers.check_alive()
    return samples


# -- scenario 2: throughput ---------------------------------------------------


def throughput_emit(
    url: str,
    n_events: int,
    workers: int = 4,
    *,
    emitters: int = 256,
    batch: int = 1,
    cpu: list[CpuUse] | None = None,
) -> float:
    """Acked events/s when ``emitters`` tasks call ``Publisher.emit`` concurrently (with
    ``batch`` > 1: ``Publisher.emit_many`` of ``batch`` events at a time).

    The clock runs from the first emit until the last emit returned, that is until the
    registry observed the ack of every event; every result is checked.
    """
    from functools import partial

    import anyio

    with Workers(url, (NoopPlugin,), workers) as running:
        running.wait_ready()
        run = partial(_measure_emit, url, running, n_events, emitters, batch=batch, cpu=cpu)
        return anyio.run(run, backend="asyncio")


async def _measure_emit(
    url: str,
    workers: Workers,
    n_events: int,
    emitters: int,
    *,
    batch: int,
    cpu: list[CpuUse] | None,
) -> float:
    import time

    import anyio

    from rapid_objection.bus import Bus, Emission, Publisher

    from .baselines import CpuMeter

    payloads = [make_payload(seq) for seq in range(n_events)]

    async def emit_some(publisher: Publisher, first: int) -> None:
        if batch == 1:
            for seq in range(first, n_events, emitters):
                _check(await publisher.emit(payloads[seq], app=APP), 1)
            return
        mine = [Emission(payloads[seq], app=APP) for seq in range(first, n_events, emitters)]
        for start in range(0, len(mine), batch):
            for result in await publisher.emit_many(mine[start : start + batch]):
                _check(result, 1)

    redis_pid = workers.redis_pid()
    async with (
        Bus.connect(url, workers.namespace) as bus,
        Publisher(bus, registry_id="bench", policies=_policies((NoopPlugin,))) as publisher,
    ):
        meter = CpuMeter([proc.pid for proc in workers.procs], redis_pid)
        with anyio.fail_after(60.0 + n_events / 500):
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for first in range(emitters):
                    group.start_soon(emit_some, publisher, first)
            elapsed = time.perf_counter() - started
        if cpu is not None:
            cpu.append(meter.stop())
        workers.check_alive()
    return n_events / elapsed


def throughput_pipelined(
    url: str,
    n_events: int,
    workers: int = 4,
    *,
    batch: int = 100,
    cpu: list[CpuUse] | None = None,
    namespace: str | None = None,
    keys: Keys | None = None,
) -> float:
    """Acked events/s when the registry publishes in pipelines of ``batch`` XADDs.

    The same publishing as the bare baseline (one pipeline of 100 XADDs at a time),
    with the product's envelopes (``Publisher.envelope``: id, sequence, redaction,
    required plugins, deadline) and the product's ``Batch``. The acks are observed
    by the ``Publisher``'s own ack reader; as no ``emit`` waits for them, it counts
    them in ``late_acks``. The clock stops when it has counted all of them; the ack
    records are then read back and checked (every event acked ``ok`` exactly once).
    """
    from functools import partial

    import anyio

    with Workers(url, (NoopPlugin,), workers, namespace, keys) as running:
        running.wait_ready()
        run = partial(_measure_pipelined, url, running, n_events, batch, cpu)
        return anyio.run(run, backend="asyncio")


def retention_pipelined(
    url: str, n_events: int, max_len: int, workers: int = 4, *, batch: int = 100
) -> tuple[float, list[tuple[int, int]], int]:
    """Scenario 2's publishing with ``retention_max_len = max_len`` on the registry:
    (acked events/s, the stream's length and its entries not yet acked sampled every
    10 ms from the first publish until every event was acked, its length a trim
    interval later)."""
    from functools import partial

    import anyio

    from rapid_objection.bus import Retention

    lengths: list[tuple[int, int]] = []
    with Workers(url, (NoopPlugin,), workers) as running:
        running.wait_ready()
        run = partial(
            _measure_pipelined,
            url,
            running,
            n_events,
            batch,
            None,
            retention=Retention(max_len=max_len),
            lengths=lengths,
        )
        rate = anyio.run(run, backend="asyncio")
        return rate, lengths[:-1], lengths[-1][0]


async def _sample_lengths(bus: Bus, lengths: list[tuple[int, int]]) -> None:
    """(stream length, entries not yet delivered or acked) every 10 ms."""
    import anyio

    while True:
        length = await bus.redis.xlen(bus.keys.events)
        groups = await bus.redis.xinfo_groups(bus.keys.events)
        lengths.append((length, max((g.pending + (g.lag or 0) for g in groups), default=0)))
        await anyio.sleep(0.01)


async def _measure_pipelined(
    url: str,
    workers: Workers,
    n_events: int,
    batch: int,
    cpu: list[CpuUse] | None,
    *,
    retention: Retention | None = None,
    lengths: list[tuple[int, int]] | None = None,
) -> float:
    """Scenario 2's run; with ``lengths``, the stream's length is sampled meanwhile
    and, a trim interval after the last ack, once more (the last item)."""
    import time

    import anyio

    from rapid_objection.bus import Bus, Publisher
    from rapid_objection.bus._constants import (
        EVENT_FIELD,  # the envelope's stream field, as Bus.publish writes
        RETENTION_INTERVAL,
        SIGNATURE_FIELD,
    )
    from rapid_objection.bus._contract import encode

    from .baselines import CpuMeter

    payloads = [make_payload(seq) for seq in range(n_events)]
    redis_pid = workers.redis_pid()
    async with (
        Bus.connect(url, workers.namespace, keyring=_keyring(workers.keys)) as bus,
        Publisher(
            bus, registry_id="bench", policies=_policies((NoopPlugin,)), retention=retention
        ) as publisher,
        anyio.create_task_group() as sampler,
    ):
        if lengths is not None:
            sampler.start_soon(_sample_lengths, bus, lengths)
        required = publisher.required_for("auto_operations_completed")
        event_ids: set[str] = set()
        meter = CpuMeter([proc.pid for proc in workers.procs], redis_pid)
        with anyio.fail_after(60.0 + n_events / 500):
            started = time.perf_counter()
            for first in range(0, n_events, batch):
                pipe = bus.redis.batch(atomic=False)
                deadline = time.time() + publisher.ack_timeout
                for payload in payloads[first : first + batch]:
                    envelope = publisher.envelope(
                        payload, app=APP, required=required, deadline=deadline
                    )
                    event_ids.add(envelope.id)
                    data = encode(envelope)
                    fields = {EVENT_FIELD: data}
                    if bus.keyring is not None:  # as Bus.publish signs
                        fields[SIGNATURE_FIELD] = bus.keyring.seal_event(data)
                    pipe.xadd(bus.keys.events, fields)
                await pipe.execute()
            await _until_acked(publisher, n_events, workers)
            elapsed = time.perf_counter() - started
        sampler.cancel_scope.cancel()
        if cpu is not None:
            cpu.append(meter.stop())
        # Every event acked exactly once: retention trimmed none before its delivery.
        await _check_ack_records(bus, publisher, event_ids)
        workers.check_alive()
        if lengths is not None:
            await anyio.sleep(RETENTION_INTERVAL * 1.5)
            lengths.append((await bus.redis.xlen(bus.keys.events), 0))
    return n_events / elapsed


async def _until_acked(publisher: Publisher, n_events: int, workers: Workers) -> None:
    """Until the registry's ack reader has counted ``n_events`` acks; fails on a stall.

    The ack reader has no completion signal to wait on, so its counter is polled every
    2 ms (the resolution of the FastStream baseline's clock too).
    """
    import time

    import anyio

    from .baselines import POLL_S

    seen, since = publisher.late_acks, time.monotonic()
    while publisher.late_acks < n_events:
        await anyio.sleep(POLL_S)
        if publisher.late_acks != seen:
            seen, since = publisher.late_acks, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            workers.check_alive()
            msg = f"no ack for {STALL_S:g} s, {seen} of {n_events} acked{workers.logs()}"
            raise RuntimeError(msg)


async def _check_ack_records(bus: Bus, publisher: Publisher, event_ids: set[str]) -> None:
    """Every published event has exactly one ``ok`` ack record in the registry's stream."""
    from rapid_objection.bus._contract import decode_ack_entry

    key = bus.keys.acks(publisher.registry_id)
    seen: dict[str, int] = {}
    start = "-"
    while True:
        entries = await bus.redis.xrange(key, start, "+", count=1000)
        if start != "-":
            entries = entries[1:]  # the first one is where the last page ended
        if not entries:
            break
        for ack in (ack for _, fields in entries for ack in decode_ack_entry(fields)):
            if ack.status != "ok":
                msg = f"event {ack.event_id}: ack {ack.status} {ack.error}"
                raise RuntimeError(msg)
            seen[ack.event_id] = seen.get(ack.event_id, 0) + 1
        start = entries[-1][0]
    doubles = [event_id for event_id, count in seen.items() if count > 1]
    if set(seen) != event_ids or doubles:
        msg = (
            f"{len(event_ids - set(seen))} events without an ack, "
            f"{len(set(seen) - event_ids)} unknown acks, {len(doubles)} acked twice"
        )
        raise RuntimeError(msg)


# -- scenario 4: footprint ----------------------------------------------------


def idle_worker_rss(url: str) -> float:
    """VmRSS in MiB of an idle ``rapid-objection worker`` (NoopPlugin) that announced
    itself (manifest and heartbeat in the directory) and blocks on XREADGROUP."""
    import time

    from .baselines import vm_rss_kib

    with Workers(url, (NoopPlugin,), 1) as workers:
        workers.wait_ready()
        time.sleep(0.2)  # as the baseline: let the first read settle before sampling
        workers.check_alive()
        return vm_rss_kib(workers.procs[0].pid) / 1024
