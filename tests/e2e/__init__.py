"""End-to-end scenarios: real worker processes on a real Redis.

Also how every test launches the command line in a subprocess: the console script of
this interpreter's environment, run from the repository root with the root on
``PYTHONPATH`` (so that ``tests.e2e.plugins:PluginA`` imports) and without the
``RAPID_OBJECTION_*`` variables of the caller's shell.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("rapid-objection"))
"""The ``rapid-objection`` console script installed next to this interpreter."""


def subprocess_env(*first: Path) -> dict[str, str]:
    """This environment for a child process: ``first`` and the repository importable
    (for ``tests.e2e.plugins``), output unbuffered, no ``RAPID_OBJECTION_*`` of the
    caller's shell."""
    env = {
        name: value for name, value in os.environ.items() if not name.startswith("RAPID_OBJECTION_")
    }
    inherited = filter(None, env.get("PYTHONPATH", "").split(os.pathsep))
    paths = [*map(str, first), str(REPO_ROOT), *inherited]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def one_line_error(code: int, out: str, err: str, *, quiet: bool = True) -> str:
    """Check the shape every expected failure of the command line has (non-zero exit,
    one line on stderr naming the program, no traceback; with ``quiet``, nothing on
    stdout) and return its line."""
    assert code != 0
    assert "Traceback" not in out + err
    if quiet:
        assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rapid-objection")
    return lines[0]


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run ``rapid-objection *args`` to its end: (exit code, stdout, stderr)."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            [CLI, *args], check=False, cwd=REPO_ROOT, env=subprocess_env()
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()
