"""``rapid-objection status``: what operators see is true, and ``--check`` for healthchecks."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
from importlib.metadata import version
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistered,
    AppUnregistered,
    Bus,
    ConnectionInfo,
    Publisher,
    collect_status,
)
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker
from tests.e2e import CLI, REPO_ROOT, one_line_error, run_cli, subprocess_env

pytestmark = pytest.mark.anyio


class Gate(PluginInterface):
    """Implements one hook: every other event is acked as skipped, not handled."""

    def __init__(self) -> None:
        super().__init__("gate", "1.0.0")

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        return None


def cli(redis_url: str, namespace: str, *args: str) -> tuple[str, ...]:
    return ("status", "--bus-url", redis_url, "--namespace", namespace, *args)


class TestRequired:
    async def test_a_registry_policy_makes_a_plugin_required_in_status_and_check(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """A plugin that only a registry's configuration marks required shows as
        required by that registry, and ``--check`` fails, naming it, while it has no
        live consumer; it passes once a worker of it runs."""
        namespace = redis_bus.namespace
        policies = {"gate": PluginPolicy(required=True)}
        async with Publisher(redis_bus, "reg-status", policies=policies):
            report = await collect_status(redis_bus)
            [plugin] = [p for p in report.plugins if p.name == "gate"]
            assert (plugin.required, plugin.required_by) == (True, ("reg-status",))
            code, out, err = await run_cli(*cli(redis_url, namespace, "--check"))
            assert code == 1
            assert out == ""
            assert "required plugin 'gate' has no live consumer" in err
            async with running_worker(Gate(), redis_bus):
                code, out, err = await run_cli(*cli(redis_url, namespace, "--check"))
                assert (code, out, err) == (0, "", "")
                host = socket.gethostname()
                mine = ("--check", "--host", host, "--role", "registry")
                assert (await run_cli(*cli(redis_url, namespace, *mine)))[0] == 0
                elsewhere = ("--check", "--host", "elsewhere")
                code, _, err = await run_cli(*cli(redis_url, namespace, *elsewhere))
                assert code == 1
                assert "no live registry or consumer on host 'elsewhere'" in err


class TestHandled:
    async def test_skipped_events_are_not_counted_as_handled(self, redis_bus: Bus) -> None:
        """A worker counts as handled only the events whose hook it ran: three events of a
        hook it lacks (acked as skipped), then one of its own, make one handled."""
        info = ConnectionInfo(dialect="sqlite")
        policies = {"gate": PluginPolicy(required=True)}
        async with (
            running_worker(Gate(), redis_bus) as worker,
            Publisher(redis_bus, "reg-handled", policies=policies) as publisher,
        ):
            for _ in range(3):
                await publisher.publish(AppUnregistered(), app="shop")
            result = await publisher.emit(AppRegistered(connection=info, config={}), app="shop")
            assert result.ok, result
            assert worker.consumer.handled == 1


class TestNeverUsed:
    @pytest.mark.parametrize(
        "command",
        [("status",), ("dlq", "list"), ("replay",)],
        ids=["status", "dlq-list", "replay"],
    )
    async def test_a_namespace_never_used_is_one_line_and_exit_3(
        self, redis_url: str, namespace: str, command: tuple[str, ...]
    ) -> None:
        """Pointed at an empty namespace, a reading command says so instead of printing
        empty tables."""
        args = (*command, "--bus-url", redis_url, "--namespace", namespace)
        code, out, err = await run_cli(*args)
        assert code == 3
        assert out == ""
        assert f"namespace {namespace!r}" in err
        assert "has never been used" in err
        assert len(err.strip().splitlines()) == 1


ANSI_CONTROL = r"\x1b\[[0-9;?]*[A-Za-z]"
"""Terminal control sequences (colours, cursor moves), dropped before reading the screen."""


class TestWatch:
    async def test_redraws_every_second_until_ctrl_c(self, redis_bus: Bus, redis_url: str) -> None:
        """On a terminal, ``--watch`` redraws the tables in place with what changed since
        (a second event), and Ctrl-C (SIGINT) ends it with exit 0."""
        async with Publisher(redis_bus, "reg-watch") as publisher:
            await publisher.publish(AppUnregistered(), app="shop")
            controller, terminal = pty.openpty()
            env = {**subprocess_env(), "COLUMNS": "160", "LINES": "60", "TERM": "xterm"}
            process = await anyio.open_process(
                [CLI, *cli(redis_url, redis_bus.namespace, "--watch")],
                stdin=terminal,
                stdout=terminal,
                stderr=subprocess.PIPE,
                cwd=REPO_ROOT,
                env=env,
            )
            os.close(terminal)
            screen = ""

            async def read_until(text: str) -> None:
                """Read the terminal until a whole frame (its last table drawn) shows ``text``."""
                nonlocal screen
                with anyio.fail_after(20):
                    while True:
                        shown = re.sub(ANSI_CONTROL, "", screen)
                        if text in shown and "Recent failures" in shown.split(text)[-1]:
                            return
                        chunk = await anyio.to_thread.run_sync(os.read, controller, 65536)
                        screen += chunk.decode(errors="replace")

            try:
                await read_until("1 events in the stream")
                await publisher.publish(AppUnregistered(), app="shop")
                await read_until("2 events in the stream")
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(10):
                    code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
                os.close(controller)
        assert code == 0
        assert screen.count("Consumers") >= 2  # the tables were drawn again, whole
        assert "\x1b[1A\x1b[2K" in screen  # cursor up, erase line: redrawn in place

    async def test_json_is_one_object_a_second(self, redis_bus: Bus, redis_url: str) -> None:
        """``--watch --json`` prints one status object per line, each second, until SIGINT."""
        async with Publisher(redis_bus, "reg-watch") as publisher:
            await publisher.publish(AppUnregistered(), app="shop")
        command = [CLI, *cli(redis_url, redis_bus.namespace, "--watch", "--json")]
        env = subprocess_env()
        async with await anyio.open_process(command, cwd=REPO_ROOT, env=env) as process:
            assert process.stdout is not None
            out = b""
            with anyio.fail_after(20):
                while out.count(b"\n") < 2:
                    out += await process.stdout.receive()
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                assert await process.wait() == 0
        first, second = (json.loads(line) for line in out.splitlines()[:2])
        assert first["namespace"] == second["namespace"] == redis_bus.namespace
        assert second["time"] - first["time"] >= 0.9

    async def test_negative_failures_are_refused(self, redis_url: str, namespace: str) -> None:
        """``--failures -1`` is a usage error, not an empty list."""
        code, out, err = await run_cli(*cli(redis_url, namespace, "--failures", "-1"))
        assert code == 2
        assert "--failures must be at least 0, not -1" in one_line_error(code, out, err)

    async def test_check_is_refused(self, redis_url: str, namespace: str) -> None:
        """``--check`` answers once: with ``--watch`` it is a usage error."""
        code, _, err = await run_cli(*cli(redis_url, namespace, "--watch", "--check"))
        assert code == 2
        assert "--watch and --check" in err


async def test_version_is_the_installed_one() -> None:
    """``rapid-objection --version`` prints the version of the installed distribution."""
    code, out, _ = await run_cli("--version")
    assert code == 0
    assert out == f"rapid-objection {version('rapid-objection')}\n"


async def test_help_is_plain_text() -> None:
    """Help texts carry no reStructuredText literal marks."""
    for command in ("status", "replay", "dlq", "worker", "run"):
        code, out, _ = await run_cli(command, "--help")
        assert code == 0
        assert "``" not in out
