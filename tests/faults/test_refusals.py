"""Redis refusing writes for a while: an outage like any other, never a crash.

Under ``maxmemory`` with the default ``noeviction`` policy, Redis answers every write
with OOM but keeps serving reads; a write to a replica gets READONLY. Each refusal
must reach our callers as ``BusUnavailable`` naming its cause, and every worker and
registry must stay up and carry on once the server accepts writes again.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import anyio
import pytest

from rapid_objection.bus import Bus, BusUnavailable, Publisher
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._errors import BusRefused
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus.testing import drained
from tests.e2e import subprocess_env

from .conftest import Report
from .plugins import Recorder
from .server import RedisServer
from .tally import ack_records, counts, tally
from .test_faults import DRAIN_TIMEOUT, publish, registered
from .workers import process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

REGISTRY = "refusal-registry"
REFUSAL = 5.0
"""Seconds the server refuses writes."""
EMIT_TIMEOUT = 2.5


class TestOutOfMemory:
    async def test_workers_and_registry_ride_out_a_full_server(
        self, report: Report, server: RedisServer, server_bus: Bus
    ) -> None:
        """Five seconds of OOM under load: emits meet BusUnavailable naming OOM, no worker
        dies, and afterwards every event in the stream is handled and answered, and a
        new emit is acked."""
        bus, plugin = server_bus, Recorder.NAME
        refusals: list[str] = []
        outcomes: Counter[str] = Counter()

        async def emit_until(publisher: Publisher, app: str, done: anyio.Event) -> None:
            while not done.is_set():
                try:
                    with anyio.fail_after(EMIT_TIMEOUT + 10):
                        result = await publisher.emit(registered(), app=app, timeout=EMIT_TIMEOUT)
                    outcomes[result.outcomes[plugin].status] += 1
                except BusUnavailable as exc:
                    refusals.append(exc.reason)
                    outcomes["unavailable"] += 1
                await anyio.sleep(0.05)

        policies = {plugin: PluginPolicy(required=True)}
        async with process_workers(bus, server.url, server.directory) as workers:
            names = await workers.start(Recorder, 2, concurrency=2, timeout=30)
            async with Publisher(bus, REGISTRY, policies=policies) as publisher:
                done = anyio.Event()
                async with anyio.create_task_group() as group:
                    for number in range(3):
                        group.start_soon(emit_until, publisher, f"oom-{number}", done)
                    before = await publish(publisher, 300, sleep=0.002)
                    async with server.admin() as admin:
                        await admin.config_set("maxmemory", "1")  # noeviction: writes refused
                        refused_at = time.monotonic()
                        await anyio.sleep(REFUSAL)
                        await admin.config_set("maxmemory", "0")
                    after = await publish(publisher, 300, sleep=0.002)
                    await anyio.sleep(EMIT_TIMEOUT)
                    done.set()
                await drained(bus, plugin, timeout=DRAIN_TIMEOUT)
                final = await publisher.emit(registered(), app="final", timeout=EMIT_TIMEOUT)
            alive = {w.consumer for w in await bus.directory.workers(plugin) if is_alive(w.seen)}
            running = [name for name in names if workers.running(name)]
            logs = workers.logs()
        result = await tally(bus, plugin)
        handled = await counts(bus, "handled", plugin)
        answered = await ack_records(bus, REGISTRY)
        waited = " ".join(f"{kind}={n}" for kind, n in sorted(outcomes.items()))
        report(result, f"waits: {waited}; refused for {time.monotonic() - refused_at:.1f}s")

        assert running == names, logs
        assert alive == set(names)
        assert "Traceback" not in logs, logs
        assert refusals, "no emit met the refusal"
        assert all(reason.startswith("OOM") for reason in refusals), refusals
        assert (result.lost, result.pending, result.lag) == (0, 0, 0)
        assert not [event for event in before + after if event not in handled]
        unanswered = {e: (n, answered[e]) for e, n in handled.items() if answered[e] < n}
        assert not unanswered, f"handlings without an ack record (handled, acks): {unanswered}"
        assert final.ok, final


class TestRefusalsByKind:
    """Each refusal becomes one of our errors, named by its code, whatever redis-py's text."""

    @pytest.mark.parametrize(
        ("settings", "code"),
        [
            pytest.param({"maxmemory": "1"}, "OOM", id="oom"),
            pytest.param({}, "READONLY", id="readonly-replica"),
            pytest.param({"replica-serve-stale-data": "no"}, "MASTERDOWN", id="masterdown"),
        ],
    )
    async def test_a_passing_refusal_is_an_outage(
        self, server: RedisServer, server_bus: Bus, settings: dict[str, str], code: str
    ) -> None:
        """OOM and READONLY (on a write) and MASTERDOWN (on a read of a stale replica) raise
        BusUnavailable whose reason starts with the code; once the server serves again the
        same bus works."""
        redis, key = server_bus.redis, server_bus.keys.events
        async with server.admin() as admin:
            for name, value in settings.items():
                await admin.config_set(name, value)
            if code != "OOM":
                await admin.replicaof("127.0.0.1", "1")  # a primary that never answers
            refused = redis.xlen(key) if code == "MASTERDOWN" else redis.xadd(key, {b"k": b"v"})
            with pytest.raises(BusUnavailable) as caught:
                await refused
            await admin.config_set("maxmemory", "0")
            await admin.replicaof("NO", "ONE")
        assert caught.value.reason.startswith(code), caught.value.reason
        assert await redis.xadd(key, {b"k": b"v"})
        assert await redis.xlen(key) == 1

    async def test_a_missing_permission_is_refused_not_retried(
        self, server: RedisServer, namespace: str
    ) -> None:
        """A user whose ACL lacks XADD gets BusRefused naming the command, never the password."""
        async with server.admin() as admin:
            await admin.acl_setuser(
                "reader",
                enabled=True,
                passwords=["+s3cret"],
                keys=["*"],
                commands=["+@read", "+ping"],
            )
        url = server.url.replace("redis://", "redis://reader:s3cret@")
        async with Bus.connect(url, namespace) as bus:
            with pytest.raises(BusRefused) as caught:
                await bus.redis.xadd(bus.keys.events, {b"k": b"v"})
        assert caught.value.command == "XADD"
        assert caught.value.reason.startswith("NOPERM"), caught.value.reason
        assert "s3cret" not in str(caught.value)


class TestUnixSocket:
    async def test_a_unix_url_carries_events(self, server: RedisServer, namespace: str) -> None:
        """``unix://`` bus URLs work: an event published there is read back by a group."""
        async with Bus.connect(server.unix_url, namespace) as bus:
            await bus.ensure_group("unix-plugin")
            envelope, _ = await Publisher(bus, REGISTRY).publish(registered(), app="shop")
            entries = await bus.redis.xreadgroup(
                bus.keys.events, "unix-plugin", "unix-1", count=10, block_ms=None
            )
        assert len(entries) == 1
        assert decode_envelope(entries[0][1][EVENT_FIELD]).id == envelope.id


class TestWorkerWithoutPermission:
    async def test_it_exits_with_one_line(self, server: RedisServer, namespace: str) -> None:
        """``rapid-objection worker`` whose user may not write exits 1 with one line naming
        the refused command and the user, not a traceback, and no password."""
        async with server.admin() as admin:
            await admin.acl_setuser(
                "reader",
                enabled=True,
                passwords=["+s3cret"],
                keys=["*"],
                commands=["+@read", "+ping"],
            )
        url = server.url.replace("redis://", "redis://reader:s3cret@")
        command = [sys.executable, "-m", "rapid_objection.core._cli", "worker"]
        command += ["tests.faults.plugins:Recorder", "--bus-url", url, "--namespace", namespace]
        with anyio.fail_after(30):
            done = await anyio.run_process(command, check=False, env=subprocess_env())
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert len(err.strip().splitlines()) == 1, err
        assert "NOPERM" in err
        assert "reader" in err
        assert "refused" in err
        assert "s3cret" not in err
