"""Health monitoring (off by default): per app, per interval, a real check, a
health_check event, and the plugins' returned dicts merged into the app's health."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from rapid_objection.bus import BusError, HealthCheck

from ._connections import answer_timeout
from ._errors import AppNotOwned
from ._health import check_within
from ._lifecycle import AppRecord
from ._steps import Steps

log = logging.getLogger("rapid_objection.health")

AppRecords = Callable[[], Mapping[str, AppRecord]]
"""The apps registered now (a fresh mapping on each call)."""

Confirm = Callable[[str], Awaitable[object]]
"""Confirms that this registry still owns an app (``Ownership.confirm``): raises
``AppNotOwned`` when it does not, before anything of the app is written."""


async def check_app(
    steps: Steps, confirm: Confirm, name: str, record: AppRecord, apps: AppRecords | None = None
) -> dict[str, Any]:
    """Check one app now; its health (with every answering plugin's dict) is returned
    and kept as the app's latest health. With ``apps``, an app that left meanwhile (it
    was unregistered during the check) gets no health_check event."""
    timeout = answer_timeout(record.config.database)
    health = await check_within(name, record.manager.engine, timeout)
    if apps is not None and apps().get(name) is not record:
        return health
    await confirm(name)  # the health_check event and the app's health are the owner's
    # Every plugin that implements the hook is awaited (not only required ones): the
    # point of the event is to collect what they return.
    result = await steps.step(
        HealthCheck(health=health), name, veto=False, required=steps.implementers("health_check")
    )
    health = {**health, "plugins": result.results()}
    failed = {o.plugin: o.error for o in (*result.failed, *result.timed_out)}
    if failed:
        health["plugin_errors"] = failed
    record.health = health
    return health


class HealthMonitor:
    """Checks every registered app each ``interval`` seconds until stopped."""

    def __init__(self, steps: Steps, confirm: Confirm, apps: AppRecords, interval: float) -> None:
        self.steps = steps
        self.confirm = confirm
        self.apps = apps
        self.interval = interval
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._started = False

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Stop, cancel a check under way, and return once the monitor has ended: no
        health_check follows what shutdown publishes next."""
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()
        if self._started:
            await self._done.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._started = True
        task_status.started()
        try:
            with anyio.CancelScope() as self._scope:
                await self._loop()
        finally:
            self._done.set()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with anyio.move_on_after(self.interval):
                await self._stop.wait()
            if self._stop.is_set():
                return
            # Looked up again before each app: one unregistered during this round is
            # not checked (its last event was app_unregistered).
            for name in list(self.apps()):
                record = self.apps().get(name)
                if record is None or self._stop.is_set():
                    continue
                try:
                    await check_app(self.steps, self.confirm, name, record, self.apps)
                except BusError as exc:
                    log.warning("health check of %s not published: %s", name, exc)
                except AppNotOwned:
                    continue  # lost to another registry: reported as it was found
