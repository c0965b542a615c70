"""Test helpers for plugin authors: call hooks without Redis, or run a worker in-process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from rapid_objection.bus import (
    SCHEMA_VERSIONS,
    Ack,
    Bus,
    Deferred,
    Delivery,
    Envelope,
    Payload,
    new_event_id,
)
from rapid_objection.bus._contract import payload_type

from ._connection import Engines
from ._dispatch import Dispatcher
from ._settings import WorkerSettings
from ._worker import Worker


def envelope_for(
    payload: Payload, *, app: str = "app", registry: str = "test-registry"
) -> Envelope:
    """An envelope as a registry would publish it, for feeding a hook directly."""
    event_type = payload_type(payload)
    now = time.time()
    return Envelope(
        id=new_event_id(now),
        type=event_type,
        version=SCHEMA_VERSIONS[event_type],
        registry=registry,
        app=app,
        time=now,
        seq=1,
        payload=payload,
    )


async def call_hook(
    plugin: object,
    payload: Payload,
    *,
    app: str = "app",
    timeout: float = 5.0,
    databases: Mapping[str, str] | None = None,
) -> Ack | Deferred:
    """Run ``plugin``'s hook for one event exactly as a worker would; no Redis involved.

    ``databases`` maps app names to URLs, as a worker's ``databases`` table: a hook's
    ``await connection.engine()`` then opens that database. Returns the Ack the worker
    would write, or ``Deferred`` when the hook raised ``RetryLater``."""
    name = getattr(plugin, "name", type(plugin).__name__)
    engines = Engines({"databases": dict(databases)}) if databases is not None else None
    dispatcher = Dispatcher(plugin, str(name), "test-consumer", timeout=timeout, engines=engines)
    try:
        return await dispatcher(Delivery("0-1", envelope_for(payload, app=app)))
    finally:
        if engines is not None:
            engines.dispose()


@asynccontextmanager
async def running_worker(plugin: object, bus: Bus, **options: Any) -> AsyncIterator[Worker]:
    """Run ``plugin`` as a worker on ``bus`` inside the test; stopped and drained on exit.

    ``options`` are ``Worker``'s keywords, and the ``WorkerSettings`` fields (``timeout=``,
    ``concurrency=``, ...) besides."""
    fields = set(WorkerSettings.__struct_fields__)
    given = {key: options.pop(key) for key in list(options) if key in fields}
    if given:
        options["settings"] = msgspec.convert(given, WorkerSettings)
    worker = Worker(plugin, bus, **options)
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()
