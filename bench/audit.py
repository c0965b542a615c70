"""``python -m bench.audit``: the audit plugin archiving into PostgreSQL (scenario 10).

One ``rapid-objection worker audit`` process (the bundled plugin, concurrency 1) with
a fresh PostgreSQL database of its own. The namespace's stream is filled first with
``n_events`` lifecycle events (the ~410-byte envelope of scenario 2) waiting in the
plugin's group; the worker is then started, and the rate is the rows that appear in
the table from its first row to its last, over that time (polled from outside every
20 ms, so the worker's start-up is left out). Each event is also acknowledged (ack
record and XACK) as always; the run checks every event has exactly one row and none
is left pending. Measured twice, taking turns: with the read batch written in one
INSERT (``prepare_batch``, the default) and with one INSERT per event (``batch =
false``). The target (issue 14): at least 5,000 events/s archived by one worker.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from statistics import median
from typing import Any, Final

DEFAULT_POSTGRES_URL: Final = os.environ.get(
    "RAPID_OBJECTION_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
"""A PostgreSQL server where the benchmark may create (and drop) a database of its own."""

MIN_RATE: Final = 5_000.0
"""Rows archived per second by one worker (issue 14)."""

POLL_S: Final = 0.02


def scenario_audit(
    url: str, runs: int, n_events: int, pg_url: str = DEFAULT_POSTGRES_URL
) -> dict[str, Any]:
    print(
        f"[bench] 10. audit on PostgreSQL: {n_events} events archived by one worker, "
        f"batched against one INSERT per event, {runs} runs",
        file=sys.stderr,
        flush=True,
    )
    reason = _unreachable(pg_url)
    if reason is not None:
        print(f"10 audit           skipped: PostgreSQL does not answer ({reason})", flush=True)
        return {"skipped": reason}
    found: dict[str, list[Archived]] = {"batch": [], "per_event": []}
    for run in range(runs):
        order = ("batch", "per_event") if run % 2 == 0 else ("per_event", "batch")
        for side in order:
            # One INSERT per event is slow: a tenth of the events tells its rate.
            n = n_events if side == "batch" else max(500, n_events // 10)
            found[side].append(archive_rate(url, pg_url, n, batch=side == "batch"))
    rates = {side: [run.rows_per_s for run in runs_] for side, runs_ in found.items()}
    worker_us = {side: median(run.worker_us for run in runs_) for side, runs_ in found.items()}
    pg_us = {
        side: median(values)
        if (values := [r.postgres_us for r in runs_ if r.postgres_us])
        else None
        for side, runs_ in found.items()
    }
    batched, single = median(rates["batch"]), median(rates["per_event"])
    met = min(rates["batch"]) >= MIN_RATE
    server = f", PostgreSQL {pg_us['batch']:.0f} us" if pg_us["batch"] else ""
    print(
        f"10 audit           batched {batched:,.0f} rows/s (runs: "
        f"{', '.join(f'{rate:,.0f}' for rate in rates['batch'])})"
        f" | one INSERT per event {single:,.0f} rows/s | {batched / single:.1f}x"
        f" | target >= {MIN_RATE:,.0f} rows/s in every run: {'met' if met else 'MISSED'}",
        flush=True,
    )
    print(
        f"10b audit CPU      batched: worker {worker_us['batch']:.0f} us per row{server}"
        f" (one core for the worker alone: {1e6 / worker_us['batch']:,.0f} rows/s)"
        f" | one INSERT per event: worker {worker_us['per_event']:.0f} us",
        flush=True,
    )
    return {
        "n_events": n_events,
        "rows_per_s": {"batch": batched, "per_event": single},
        "worker_cpu_us_per_row": worker_us,
        "postgres_cpu_us_per_row": pg_us,
        "runs": rates,
        "targets_met": {"audit_rows_per_s": met},
    }


def _unreachable(pg_url: str) -> str | None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    finally:
        engine.dispose()
    return None


def archive_rate(url: str, pg_url: str, n_events: int, *, batch: bool) -> Archived:
    """Rows/s that one audit worker process writes to a fresh PostgreSQL database."""
    import secrets
    import subprocess
    import tempfile
    from pathlib import Path

    import anyio
    import sqlalchemy as sa

    from .baselines import stop_processes
    from .product import purge_namespace, spawn_worker

    namespace = f"bench-{secrets.token_hex(6)}"
    database = f"ro_bench_audit_{secrets.token_hex(6)}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    db_url = sa.make_url(pg_url).set(database=database)
    proc: subprocess.Popen[bytes] | None = None
    try:
        anyio.run(_fill, url, namespace, n_events, backend="asyncio")
        with tempfile.TemporaryDirectory(prefix="ro-bench-audit-") as directory:
            config = Path(directory) / "audit.toml"
            rendered = db_url.render_as_string(hide_password=False)
            config.write_text(f'url = "{rendered}"\nbatch = {"true" if batch else "false"}\n')
            log = Path(directory) / "worker.log"
            with log.open("wb") as stderr:
                arguments = ["audit", "--config", str(config), "--bus-url", url]
                arguments += ["--namespace", namespace, "--consumer", "c0"]
                proc = spawn_worker(arguments, stderr)
                engine = sa.create_engine(db_url)
                try:
                    rate = _watch(engine, proc, n_events, log)
                    _check(engine, n_events)
                finally:
                    engine.dispose()
                anyio.run(_until_acked, url, namespace, backend="asyncio")
        return rate
    finally:
        if proc is not None:
            stop_processes([proc])
        purge_namespace(url, namespace)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


async def _fill(url: str, namespace: str, n_events: int) -> None:
    """``n_events`` events in the stream, waiting in the audit plugin's group (published
    in pipelines of 100 XADDs, as scenario 2 does)."""
    from rapid_objection.bus import Bus, Publisher
    from rapid_objection.bus._constants import EVENT_FIELD
    from rapid_objection.bus._contract import encode

    from .product import APP, make_payload

    async with Bus.connect(url, namespace) as bus, Publisher(bus, registry_id="bench") as pub:
        await bus.ensure_group("audit")
        for first in range(0, n_events, 100):
            pipe = bus.redis.batch(atomic=False)
            for seq in range(first, min(first + 100, n_events)):
                envelope = pub.envelope(make_payload(seq), app=APP)
                pipe.xadd(bus.keys.events, {EVENT_FIELD: encode(envelope)})
            await pipe.execute()


@dataclass(frozen=True, slots=True)
class Archived:
    """One run: rows/s from the first row seen to the last, and the CPU per row meanwhile."""

    rows_per_s: float
    worker_us: float
    """CPU of the worker process (its loop and its database thread) per row."""
    postgres_us: float | None
    """CPU of the worker's PostgreSQL backends per row (None when not on this machine)."""


def _watch(engine: Any, proc: Any, n_events: int, log: Any) -> Archived:
    import time

    import sqlalchemy as sa

    from .baselines import _process_cpu

    # The newest row's id: an index lookup, where count(*) would scan the table each
    # time and take the database's time from the worker (checked against count(*) after).
    count = sa.text("SELECT coalesce(max(id), 0) FROM ro_audit")
    deadline = time.monotonic() + 60 + n_events / 500
    first: tuple[float, int, float, float | None] | None = None
    backends: list[int] = []
    while True:
        if proc.poll() is not None:
            tail = log.read_text()[-500:]
            raise RuntimeError(f"the audit worker exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the audit worker archived fewer than {n_events} events in time")
        try:
            with engine.connect() as connection:
                rows = int(connection.execute(count).scalar_one())
                if rows and first is None:
                    backends = _backends(connection)
        except sa.exc.ProgrammingError:
            rows = 0  # the worker has not created the table yet
        now = time.perf_counter()
        if rows and first is None:
            first = (now, rows, _process_cpu(proc.pid), _cpu(backends))
        if rows >= n_events and first is not None:
            done = rows - first[1]
            worker = _process_cpu(proc.pid) - first[2]
            server = _cpu(backends)
            postgres = None if server is None or first[3] is None else server - first[3]
            return Archived(
                done / (now - first[0]),
                worker / done * 1e6,
                None if postgres is None else postgres / done * 1e6,
            )
        time.sleep(POLL_S)


def _backends(connection: Any) -> list[int]:
    """The PostgreSQL backends of this database other than ``connection``'s own."""
    import sqlalchemy as sa

    query = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    return [int(pid) for pid in connection.execute(query).scalars()]


def _cpu(pids: list[int]) -> float | None:
    from .baselines import _process_cpu

    try:
        return sum(_process_cpu(pid) for pid in pids) if pids else None
    except OSError:
        return None  # not on this machine (or gone)


def _check(engine: Any, n_events: int) -> None:
    """Exactly one row per event, each keeping its encoded event."""
    import sqlalchemy as sa

    query = sa.text("SELECT count(*), count(DISTINCT event_id), count(envelope) FROM ro_audit")
    with engine.connect() as connection:
        rows, distinct, kept = connection.execute(query).one()
    if not rows == distinct == kept == n_events:
        raise RuntimeError(f"{rows} rows, {distinct} events, {kept} envelopes; wanted {n_events}")


async def _until_acked(url: str, namespace: str) -> None:
    """Until the audit group has nothing pending and nothing left to read."""
    import anyio

    from rapid_objection.bus import Bus

    async with Bus.connect(url, namespace) as bus:
        with anyio.fail_after(30):
            while True:
                (group,) = [
                    g for g in await bus.redis.xinfo_groups(bus.keys.events) if g.name == "audit"
                ]
                if group.pending == 0 and not group.lag:
                    return
                await anyio.sleep(POLL_S)


if __name__ == "__main__":
    from .__main__ import DEFAULT_URL

    quick = "--quick" in sys.argv[1:]
    scenario_audit(DEFAULT_URL, 1 if quick else 3, 3000 if quick else 20_000)
