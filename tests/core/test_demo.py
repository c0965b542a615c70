"""``rapid-objection demo`` (the README's ``make demo``): no server, one process, exit 0."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bus.testing import embedded_bus
from core._cli._demo import PLANTED_PASSWORD, run_demo

ROOT = Path(__file__).resolve().parents[2]

LIFECYCLE = [
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
    "health_check",
    "app_unregistration_started",
    "app_rollback_started",
    "app_rollback_completed",
    "connection_shutdown",
    "app_unregistered",
]
"""DESIGN §5: register_app, a health check, unregister_app."""

STEP = re.compile(r"^\s*(\d{1,2}) ([a-z_]+)\s", re.MULTILINE)
ACK = re.compile(r"^\s+(audit-log|monitoring)\s+acked\s", re.MULTILINE)

# `core._cli` has no __main__ module yet, so `python -m core._cli` cannot run it; this is
# the same entry point (the console script `rapid-objection` calls core._cli:main).
CLI = "import sys; from core._cli import main; sys.exit(main())"


def _acks(output: str) -> dict[str, int]:
    counts = {"audit-log": 0, "monitoring": 0}
    for plugin in ACK.findall(output):
        counts[plugin] += 1
    return counts


def test_demo_command_runs_the_lifecycle_with_both_plugins() -> None:
    """The subprocess prints the eleven events in order, both plugins' acks, no secret."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("RAPID_OBJECTION_BUS_URL", None)  # the demo ignores it; make that irrelevant here
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert STEP.findall(output) == [(str(n), t) for n, t in enumerate(LIFECYCLE, 1)]
    # audit-log implements every hook; monitoring the four of them that the demo sends.
    assert _acks(output) == {"audit-log": 11, "monitoring": 4}
    assert PLANTED_PASSWORD not in output + proc.stderr
    assert "backup:***@backup.internal" in output  # the config did arrive, masked
    assert "History of 'shop'" in output
    assert "workers drained and left the bus" in output
    assert elapsed < 20


@pytest.mark.anyio
async def test_run_demo_in_process_leaves_the_bus_clean() -> None:
    """Every required ack arrives, the history holds the eleven events, workers leave."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    async with embedded_bus("demo") as bus:
        report = await run_demo(bus, console)
        workers = await bus.directory.workers()
        groups = await bus.redis.xinfo_groups(bus.keys.events)
        registries = await bus.directory.registries()
        types = [entry.envelope.type async for entry in bus.history.iterate(app="shop")]
    assert report.ok
    assert [result.type for result in report.results] == LIFECYCLE
    assert types == LIFECYCLE
    assert report.audited == LIFECYCLE  # the audit-log plugin saw every hook, in order
    assert workers == []  # both heartbeats removed on stop
    assert registries == []
    assert {group.name: (group.consumers, group.pending) for group in groups} == {
        "audit-log": (0, 0),
        "monitoring": (0, 0),
    }
    assert PLANTED_PASSWORD not in buffer.getvalue()
