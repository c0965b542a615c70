"""The audit plugin: every lifecycle event into a SQL table, for audit beyond the stream.

The event stream is the short-term history; its retention trims it. ``AuditPlugin``
keeps one row per event (unique on the event id, so a re-delivery adds nothing) in a
table of any database SQLAlchemy reaches, written before the event is acknowledged,
in a worker thread. ``AuditStore`` is the same table seen from a program. The columns
and every configuration key are described in ``docs/plugins.md``.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
import sqlalchemy as sa

from rapid_objection.bus import Delivery, mask_url
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery

from .audit_store import (
    DEFAULT_TABLE,
    DEFAULT_URL,
    TABLE_NAME,
    AuditEntry,
    AuditStore,
    audit_row,
    audit_table,
    event_columns,
)

if TYPE_CHECKING:
    from rapid_objection.bus import AppRollbackCompleted, AutoOperationsCompleted, ConnectionInfo
    from rapid_objection.plugin_workers import RemoteError

VERSION: Final = "1.0.0"

PREPARED_MEMORY: Final = 10_000
"""Answers of batch-written rows kept for hooks still to run (twenty of the plugin's
read batches of 500)."""

__all__ = [
    "DEFAULT_TABLE",
    "DEFAULT_URL",
    "AuditConfig",
    "AuditEntry",
    "AuditPlugin",
    "AuditStore",
    "audit_row",
    "audit_table",
    "event_columns",
    "parse_config",
]


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The audit plugin's ``config`` table; every key has a default."""

    url: str = DEFAULT_URL
    """SQLAlchemy URL of the audit store (a sync driver)."""
    table: str = DEFAULT_TABLE
    record_acks: bool = True
    """Write this plugin's own handling record into the ``acks`` column (else ``[]``)."""
    custom: tuple[str, ...] = ()
    """Names of custom events (``registry.emit(name, ...)``) to record as well."""
    batch: bool = True
    """Write a read batch's rows in one INSERT (``prepare_batch``); false: one per event."""


def parse_config(config: Mapping[str, Any]) -> AuditConfig:
    """The audit configuration, checked; raises ``ValueError`` naming the bad key."""
    try:
        parsed = msgspec.convert(dict(config), AuditConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"audit configuration: {exc}") from None
    if not TABLE_NAME.match(parsed.table):
        raise ValueError(
            f"audit configuration: table {parsed.table!r} is not a plain identifier "
            "(letters, digits and '_', at most 48)"
        )
    try:
        sa.make_url(parsed.url)
    except (sa.exc.ArgumentError, ValueError):
        raise ValueError("audit configuration: url is not a database URL") from None
    return parsed


class AuditPlugin(PluginInterface):
    """Writes every lifecycle event it receives (and chosen custom events) to ``ro_audit``."""

    read_batch: Final = 500
    """Entries its worker reads at once: one INSERT each (measured in ``bench/audit.py``:
    the fixed costs of a batch, the reads, the commit and the ack flush, are shared by
    five times as many rows as with the default 100)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("audit", VERSION)
        self.config = dict(config or {})
        self.store: AuditStore | None = None
        self.settings: AuditConfig | None = None
        self.consumer = ""
        self._looked_up = False
        self.recorded = 0
        self.duplicates = 0
        self.by_type: Counter[str] = Counter()
        self.last_event_id: str | None = None
        self._prepared: dict[str, tuple[str, bool]] = {}
        """Stream entry id -> (event id, inserted) of rows ``prepare_batch`` wrote."""

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        parse_config({**self.config, **config})
        return True

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        self.settings = parse_config(self.config)
        self.consumer = str(getattr(registry, "consumer", "") or "")
        store = AuditStore(self.settings.url, self.settings.table)
        try:
            await anyio.to_thread.run_sync(store.create)
        except BaseException:
            store.close()
            raise
        self.store = store
        for name in self.settings.custom:
            registry.on(name, self._record_custom)

    async def shutdown(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            if self.registry is not None and self.settings is not None:
                for name in self.settings.custom:
                    self.registry.off(name, self._record_custom)
            await anyio.to_thread.run_sync(store.close)

    def get_status(self) -> dict[str, Any]:
        settings = self.settings or AuditConfig()
        return {
            **super().get_status(),
            "running": self.store is not None,
            "store": self.store.url if self.store is not None else mask_url(settings.url),
            "table": settings.table,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "by_type": dict(sorted(self.by_type.items())),
            "last_event_id": self.last_event_id,
        }

    async def _record(self) -> dict[str, Any]:
        """Write the current event's row (unless ``prepare_batch`` did); the hook's answer
        says whether it was new."""
        store = self.store
        if store is None or self.settings is None:
            raise RuntimeError("the audit plugin is not initialized")
        delivery = current_delivery()
        prepared = self._prepared.pop(delivery.entry_id, None)
        if prepared is not None:
            event_id, inserted = prepared
        else:
            row = await self._row(delivery)
            event_id = row["event_id"]
            inserted = await anyio.to_thread.run_sync(store.record, row)
        self._count(delivery.envelope.type, inserted)
        self.last_event_id = event_id
        return {"event_id": event_id, "recorded": inserted}

    async def prepare_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Write the rows of a read batch in one INSERT, before their hooks run (each
        hook then answers from what this wrote); a failure here leaves each hook to
        write its own row, as without a batch. The dispatcher hands over only the
        deliveries a hook or handler runs for (a custom event: one of ``custom``)."""
        store, settings = self.store, self.settings
        if store is None or settings is None or not settings.batch:
            return
        rows = [await self._row(delivery) for delivery in deliveries]
        inserted = await anyio.to_thread.run_sync(store.record_many, rows)
        claimed: set[str] = set()
        for delivery, row in zip(deliveries, rows, strict=True):
            event_id = row["event_id"]
            # Of two deliveries of one event in a batch (a copy beside its original),
            # the first is the one that wrote the row.
            new = event_id in inserted and event_id not in claimed
            claimed.add(event_id)
            self._prepared[delivery.entry_id] = (event_id, new)
        while len(self._prepared) > PREPARED_MEMORY:
            # Hooks that never ran here (a stopping worker gave them back): forget.
            del self._prepared[next(iter(self._prepared))]

    async def _row(self, delivery: Delivery) -> dict[str, Any]:
        settings = self.settings
        assert settings is not None
        if not self.consumer and not self._looked_up:
            self._looked_up = True
            self.consumer = await self._find_consumer()
        return audit_row(
            delivery.envelope,
            consumer=self.consumer,
            attempt=delivery.attempt,
            plugin=self._plugin_name(),
            acks=settings.record_acks,
            data=delivery.data,
            signatures=delivery.signature,
        )

    def _count(self, event_type: str, inserted: bool) -> None:
        if inserted:
            self.recorded += 1
            self.by_type[event_type] += 1
        else:
            self.duplicates += 1

    def _plugin_name(self) -> str:
        """The name this plugin runs under (a registry may configure another than "audit")."""
        return self.registry.plugin if self.registry is not None else self.name

    async def _find_consumer(self) -> str:
        """This worker's consumer name, from the directory: the one worker of this plugin
        in this process (a RegistryView does not carry it); empty when not unique."""
        if self.registry is None:
            return ""
        host, pid = socket.gethostname(), os.getpid()
        mine = [
            worker.consumer
            for worker in await self.registry.bus.directory.workers(self._plugin_name())
            if worker.host == host and worker.pid == pid
        ]
        return mine[0] if len(mine) == 1 else ""

    async def _record_custom(self, data: Any) -> dict[str, Any]:
        return await self._record()

    # -- the twelve hooks: each records its event --------------------------------------

    async def on_app_registration_started(
        self, app_name: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_connection_created(
        self, app_name: str, connection: ConnectionInfo
    ) -> dict[str, Any]:
        return await self._record()

    async def on_auto_operations_started(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_unregistration_started(
        self, app_name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_rollback_completed(
        self, app_name: str, result: AppRollbackCompleted
    ) -> dict[str, Any]:
        return await self._record()

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> dict[str, Any]:
        return await self._record()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        # Recorded, but nothing is returned: the answer would be merged into the app's health.
        await self._record()
