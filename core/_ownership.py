"""The ownership of this registry's apps: one lease per app on the bus, with its token.

Registering an app claims its lease (``bus._owners``); a task of the registry renews
every lease each third of ``ownership_ttl``, whatever operation runs meanwhile (the
data work runs in threads); each change to an app confirms the lease first (a renewal
that answers whether this registry still holds it), and a change to its database also
records the lease's token in the database, under the app lock (``_fence``), which
refuses it when a newer owner recorded a higher one. A lease found lost, by the task or
by a change, is reported once to ``on_lost``, and the change raises ``AppNotOwned``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import sqlalchemy as sa
from anyio.abc import TaskStatus

from rapid_objection.bus import BusError
from rapid_objection.bus._owners import AppLease, AppOwners

from . import _fence
from ._errors import AppAlreadyRegistered, AppNotOwned

log = logging.getLogger("rapid_objection.registry")

OnLost = Callable[[AppNotOwned], Awaitable[None]]
"""Told once per lease found lost: the app stops being served."""


class Ownership:
    """The leases that registry ``registry`` holds, each kept for ``ttl`` seconds."""

    def __init__(self, owners: AppOwners, registry: str, ttl: float, on_lost: OnLost) -> None:
        self._owners = owners
        self.registry = registry
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._on_lost = on_lost
        self._leases: dict[str, AppLease] = {}
        self._lock = anyio.Lock()
        """One renewal at a time: a renewal with an old token would find the lease lost."""

    def holds(self, app: str) -> bool:
        return app in self._leases

    async def claim(self, app: str) -> None:
        """Take ``app``'s lease; ``AppAlreadyRegistered`` when another registry holds it."""
        async with self._lock:
            lease = await self._owners.claim(app, self.registry, self._ttl_ms)
            if lease.owner != self.registry:
                raise AppAlreadyRegistered(app, owner=lease.owner)
            self._leases[app] = lease

    async def release(self, app: str) -> None:
        """Let go of ``app`` (when still held): another registry may take it at once."""
        async with self._lock:
            if self._leases.pop(app, None) is not None:
                await self._owners.release(app, self.registry)

    async def confirm(self, app: str, *, floor: int = 0) -> AppLease:
        """Renew ``app``'s lease now: its lease when this registry still holds it, else
        ``AppNotOwned`` (after telling ``on_lost``). With ``floor``, the token moves past
        it (see ``AppOwners.renew``)."""
        async with self._lock:
            lease = self._leases.get(app)
            renewed = None if lease is None else await self._renew(lease, floor)
        if renewed is not None:
            return renewed
        error = await self._not_owned(app)
        if lease is not None:  # lost just now: said once
            await self._on_lost(error)
        raise error

    async def _renew(self, lease: AppLease, floor: int = 0) -> AppLease | None:
        renewed = await self._owners.renew(lease, self._ttl_ms, floor=floor)
        if renewed is None:
            self._leases.pop(lease.app, None)
        else:
            self._leases[lease.app] = renewed
        return renewed

    async def _not_owned(self, app: str) -> AppNotOwned:
        try:
            holder = await self._owners.holder(app)
        except BusError:
            holder = None
        return AppNotOwned(app, self.registry, None if holder is None else holder.owner)

    def fence(self, app: str, engine: sa.Engine) -> None:
        """In a worker thread, under the app lock, before the app's database changes:
        confirm the lease and record its token in the database; ``AppNotOwned`` when
        either refuses. A database that recorded a higher token than a lease this
        registry still holds knew a Redis that lost its data since: the token moves
        past it."""
        lease = anyio.from_thread.run(self.confirm, app)
        before = _fence.record(engine, app, lease.token, self.registry)
        if before > lease.token:
            lease = anyio.from_thread.run(partial(self.confirm, app, floor=before))
            _fence.record(engine, app, lease.token, self.registry)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew every lease each third of the ttl until cancelled (the registry stops)."""
        task_status.started()
        while True:
            await anyio.sleep(self.ttl / 3)
            for app in list(self._leases):
                async with self._lock:
                    lease = self._leases.get(app)
                    try:
                        renewed = None if lease is None else await self._renew(lease)
                    except BusError as exc:
                        # Kept while Redis is away; lost if another owner came meanwhile.
                        log.warning("lease of app %s not renewed: %s", app, exc)
                        continue
                if lease is not None and renewed is None:
                    await self._on_lost(await self._not_owned(app))
