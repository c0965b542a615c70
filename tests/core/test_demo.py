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

from rapid_objection.core._cli._demo import run_demo

ROOT = Path(__file__).resolve().parents[2]

REGISTER = [
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
]
UNREGISTER = [
    "app_unregistration_started",
    "app_rollback_started",
    "app_rollback_completed",
    "connection_shutdown",
    "app_unregistered",
]
STEP = re.compile(r"^\s*\d+ (shop|blog)\s+([a-z_]+)\s", re.MULTILINE)


def steps(output: str) -> list[tuple[str, str]]:
    return [(app, event) for app, event in STEP.findall(output)]


def test_demo_command_runs_both_lifecycles_with_the_bundled_plugins(tmp_path: Path) -> None:
    """The command prints every step in the documented order with the plugins' acks,
    the status and the shop's audit trail, and exits 0 within seconds."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rapid_objection.core._cli", "demo", "--directory", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert took < 30
    expected = (
        [("shop", event) for event in REGISTER]
        + [("blog", event) for event in REGISTER]
        + [("shop", "health_check"), ("blog", "health_check")]
        + [("blog", event) for event in UNREGISTER]
        + [("shop", "connection_shutdown")]
    )
    assert steps(proc.stdout) == expected
    assert "✓ audit" in proc.stdout
    assert "✓ backup" in proc.stdout
    assert "audit trail of 'shop' (7 events" in proc.stdout
    assert "every one acknowledged" in proc.stdout
    assert list((tmp_path / "backups").rglob("*")), "the backup plugin copied the databases"


@pytest.mark.anyio
async def test_the_audit_trail_holds_the_shops_events_in_order(tmp_path: Path) -> None:
    """In-process, on an embedded bus of its own, the audit table ends up with the
    shop's steps in publish order."""
    from rapid_objection.plugin_workers.plugins.audit import AuditStore

    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None)
    code = await run_demo(console, "memory://demo-test", "demo-test", tmp_path)
    assert code == 0
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        trail = store.query(app="shop", limit=None)
    assert [entry.type for entry in trail] == [
        *REGISTER,
        "health_check",
        "connection_shutdown",
    ]
    assert [entry.seq for entry in trail] == sorted(entry.seq for entry in trail)
