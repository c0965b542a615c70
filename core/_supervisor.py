"""Process mode: a registry starts and supervises the worker processes of a plugin."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskStatus

from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import ENV_KEYRING, RELOAD_CHECK, Keyring
from rapid_objection.bus._retry import RESTART, Backoff, Outage
from rapid_objection.plugin_workers._settings import ENV_PARENT_PID, ENV_WORKER_TABLE, WorkerTable

from ._cli._args import ENV_BUS_URL

log = logging.getLogger("rapid_objection.supervisor")

STABLE_AFTER = 30.0
"""Seconds a worker must run before a crash no longer counts towards the backoff."""


def exit_reason(code: int) -> str:
    """A process's return code in words (a negative one is the signal that killed it)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Keeps ``workers`` processes of one plugin running until ``stop()``.

    Each slot has a stable consumer name, so a restarted worker first drains what
    its predecessor left pending.
    """

    def __init__(
        self,
        plugin: str,
        module: str,
        *,
        workers: int,
        bus_url: str,
        namespace: str,
        table: WorkerTable,
        consumer_prefix: str,
        shutdown_timeout: float,
        keyring: Keyring | None = None,
    ) -> None:
        self.plugin = plugin
        self.keyring = keyring
        """The registry's whole ring: the workers get their plugin's export of it only."""
        self._export: Path | None = None
        self._exported: KeyFile | None = None
        self.module = module
        self.workers = workers
        self.bus_url = bus_url
        self.namespace = namespace
        self.table = table
        self.consumer_prefix = consumer_prefix
        self.shutdown_timeout = shutdown_timeout
        self.restarts = 0
        self.backoff: Backoff = RESTART
        self.last_exit_code: int | None = None
        self.last_exit_reason: str | None = None
        """How the last worker that ended on its own ended: "exited with status 3",
        "killed by SIGKILL"."""
        self._processes: dict[int, Process] = {}
        self._stopping = False
        self._stopped = anyio.Event()

    def consumer_name(self, slot: int) -> str:
        return f"{self.consumer_prefix}-{self.plugin}-{slot}"

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes.values()]

    def status(self) -> dict[str, Any]:
        """Live pids against the number wanted, restarts, and the last exit and its reason."""
        return {
            "pids": self.pids,
            "workers": self.workers,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_exit_reason": self.last_exit_reason,
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as group:
                if self.keyring is not None:
                    self._write_export(self.keyring)
                    group.start_soon(self._follow_keyring, self.keyring)
                for slot in range(self.workers):
                    group.start_soon(self._keep, slot)
                task_status.started()
        finally:
            if self._export is not None:
                shutil.rmtree(self._export.parent, ignore_errors=True)

    def _write_export(self, keyring: Keyring) -> None:
        """This plugin's export of the ring, in a directory only this user can read; the
        workers read it again when it changes (a rotation)."""
        keys = keyring.keys
        if keys is self._exported:
            return
        if self._export is None:
            self._export = Path(tempfile.mkdtemp(prefix="ro-keys-")) / f"{self.plugin}.json"
        keys.export(self.plugin).save(self._export)
        self._exported = keys

    async def _follow_keyring(self, keyring: Keyring) -> None:
        while not self._stopping:
            with anyio.move_on_after(RELOAD_CHECK):
                await self._stopped.wait()
            self._write_export(keyring)

    async def _keep(self, slot: int) -> None:
        crashes = Outage(self.backoff)
        while not self._stopping:
            started = anyio.current_time()
            process = await self._spawn(slot)
            self._processes[slot] = process
            if self._stopping:
                process.terminate()  # stop() came while it was being spawned
            try:
                code = await process.wait()
            finally:
                if process.returncode is None:
                    # Cancelled (the registry went away without stop()): no orphan.
                    with anyio.CancelScope(shield=True):
                        process.kill()
                        await process.wait()
            del self._processes[slot]
            if self._stopping:
                return
            self.last_exit_code = code
            self.last_exit_reason = exit_reason(code)
            if anyio.current_time() - started > STABLE_AFTER:
                crashes.over()
            crashes.backoff = self.backoff
            delay = crashes.next_delay()
            self.restarts += 1
            log.warning(
                "worker %s of plugin %s %s; restarting in %.1fs",
                self.consumer_name(slot),
                self.plugin,
                self.last_exit_reason,
                delay,
            )
            # stop() ends the pause at once: a crash-looping plugin stops without
            # waiting out its backoff.
            with anyio.move_on_after(delay):
                await self._stopped.wait()

    async def _spawn(self, slot: int) -> Process:
        command = [
            sys.executable,
            "-m",
            "rapid_objection.core._cli",
            "worker",
            self.module,
            "--namespace",
            self.namespace,
            "--consumer",
            self.consumer_name(slot),
        ]
        # The plugin's table (its config may hold secrets) and the bus URL (its password)
        # go by environment, not argv: any local user can read a process's argv. The
        # worker watches this process and stops when it is gone, however it died.
        env = {
            **os.environ,
            ENV_WORKER_TABLE: self.table.encode(),
            ENV_BUS_URL: self.bus_url,
            ENV_PARENT_PID: str(os.getpid()),
        }
        # Never the registry's own ring: its plugin's export, or no keyring at all.
        env.pop(ENV_KEYRING, None)
        if self._export is not None:
            env[ENV_KEYRING] = str(self._export)
        # A session of its own: a Ctrl-C at the registry's terminal is for the registry,
        # which then stops its workers itself (SIGTERM, drained), not a crash to restart.
        return await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            env=env,
            start_new_session=True,
        )

    def kill_all(self) -> None:
        """SIGKILL every worker at once, without waiting (the registry is exiting)."""
        self._stopping = True
        for process in self._processes.values():
            if process.returncode is None:
                process.kill()

    async def stop(self) -> None:
        """SIGTERM every worker (they drain in-flight hooks), SIGKILL what outlives the timeout."""
        self._stopping = True
        self._stopped.set()
        processes = list(self._processes.values())
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(self.shutdown_timeout, shield=True):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                log.warning(
                    "worker pid %s of %s did not stop; killing it", process.pid, self.plugin
                )
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()
