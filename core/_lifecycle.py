"""The app lifecycles in the documented order; every step published and awaited.

register: app_registration_started → connection (new or shared) → connection_created →
auto_operations_started → migrations → seeds → models → auto_operations_completed →
app_registered. All or nothing: on a failure at any stage what this registration
applied is rolled back (models, seeds, migrations), operation_failed names the stage
(and a rollback step that failed), the connection and the claim are released, and the
original error is raised with a note saying what was rolled back.

unregister: app_unregistration_started → app_rollback_started → seeds rollback →
migrations rollback → models cleared → app_rollback_completed → connection_shutdown
(only when the last reference goes) → app_unregistered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from rapid_objection.bus import (
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    BusError,
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    OperationFailed,
    OperationResult,
    mask_url,
)

from ._app_data import AppChanges, Undoable
from ._config import AppConfig, to_dict
from ._connections import ConnectionManager, Engines
from ._errors import AppNotOwned
from ._listeners import Listeners
from ._models import ModelSet, load_models
from ._ownership import Ownership
from ._results import UnregisterResult
from ._steps import Steps

log = logging.getLogger("rapid_objection.registry")


@dataclass(frozen=True, slots=True)
class AppContext:
    """What the app lifecycles use of an initialized registry."""

    registry_id: str
    engines: Engines
    ownership: Ownership
    """The leases of this registry's apps: claimed, confirmed before changes, released."""
    steps: Steps
    listeners: Listeners


@dataclass
class AppRecord:
    """A registered app: its connection manager and what it needs to be rolled back."""

    manager: ConnectionManager
    config: AppConfig
    reused: bool
    migrations: Undoable | None = None
    seeds: Undoable | None = None
    models: ModelSet | None = None
    health: dict[str, Any] | None = None
    registered_at: float = field(default_factory=time.time)
    operations: list[OperationResult] = field(default_factory=list)
    released: bool = False
    """Its connection reference was dropped (unregistration got past connection_shutdown)."""

    def status(self) -> dict[str, Any]:
        status = self.manager.status()
        status["health"] = self.health
        status["registered_at"] = self.registered_at
        return status


def changes_of(ctx: AppContext, name: str, record: AppRecord) -> AppChanges:
    """The runners of registered app ``name`` under its app lock, fenced by its lease."""
    return AppChanges(
        record.migrations,
        record.seeds,
        record.manager.engine,
        name,
        record.config.migrations.lock_timeout,
        fence=partial(ctx.ownership.fence, name),
    )


async def register(ctx: AppContext, name: str, config: AppConfig) -> AppRecord:
    """The registration lifecycle of one app."""
    engines = ctx.engines
    opened = False
    models: ModelSet | None = None
    changes: AppChanges | None = None
    stage = "app_registration_started"
    claimed = False
    try:
        # One owner per app on the bus: the registry that holds its lease keeps it.
        await ctx.ownership.claim(name)
        claimed = True
        await ctx.steps.step(AppRegistrationStarted(config=to_dict(config)), name)
        stage = "connection"
        lease = await anyio.to_thread.run_sync(
            engines.open, name, config.database, config.use_connection
        )
        opened = True
        info = engines.info(name)
        await ctx.listeners.emit(
            "connection-reused" if lease.reused else "connection-created",
            {
                "app": name,
                "url": info.url,
                "shared": info.shared,
                "reference_count": info.reference_count,
            },
        )
        stage = "connection_created"
        await ctx.steps.step(ConnectionCreated(connection=info, reused=lease.reused), name)
        stage = "auto_operations_started"
        await ctx.steps.step(AutoOperationsStarted(connection=info, config=to_dict(config)), name)
        manager = ConnectionManager(
            name,
            config,
            lease.engine,
            info_source=lambda: engines.info(name),
            reused=lease.reused,
        )
        changes = AppChanges.of(
            name, manager.engine, config, fence=partial(ctx.ownership.fence, name)
        )
        migrations, seeds = changes.migrations, changes.seeds
        # One app lock across the whole registration, its rollback included; a lock
        # that is not taken fails the first stage that needs it.
        stage = "migrations" if migrations is not None else "seeds"
        await anyio.to_thread.run_sync(changes.acquire)
        operations: list[OperationResult] = []
        if migrations is not None:
            stage = "migrations"
            operations.append(await anyio.to_thread.run_sync(migrations.apply))
        if seeds is not None:
            stage = "seeds"
            operations.append(await anyio.to_thread.run_sync(seeds.apply))
        if config.models.enabled and (config.models.module or config.models.classes):
            stage = "models"
            started = time.monotonic()
            models = await anyio.to_thread.run_sync(load_models, name, config.models)
            manager.models = models
            operations.append(
                OperationResult(
                    operation="models",
                    success=True,
                    items=tuple(sorted(models)),
                    duration=time.monotonic() - started,
                )
            )
        stage = "auto_operations_completed"
        await ctx.steps.step(
            AutoOperationsCompleted(operations=tuple(operations), success=True), name
        )
        stage = "app_registered"
        # Still the owner (a pause may have cost the lease): else this rolls back.
        await ctx.ownership.confirm(name)
        await ctx.steps.step(
            AppRegistered(connection=engines.info(name), config=to_dict(config)), name
        )
        await anyio.to_thread.run_sync(changes.release)
        return AppRecord(
            manager=manager,
            config=config,
            reused=lease.reused,
            migrations=migrations,
            seeds=seeds,
            models=models,
            operations=operations,
        )
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _undo_registration(
                ctx,
                name,
                stage,
                exc,
                models=models,
                changes=changes,
                opened=opened,
                claimed=claimed,
            )
        raise


async def _undo_registration(
    ctx: AppContext,
    name: str,
    stage: str,
    exc: BaseException,
    *,
    models: ModelSet | None,
    changes: AppChanges | None,
    opened: bool,
    claimed: bool,
) -> None:
    """A registration that failed (or was cancelled) at ``stage``: roll back what it
    applied (models, seeds, migrations), say so on ``exc`` and in operation_failed, and
    release what it took (the connection reference, the claim on the bus).

    The caller re-raises ``exc``; a rollback step that fails is not raised but added to
    it (a note naming both) and to operation_failed (``rollback_error``)."""
    # Cancelled: the caller wants to stop now, so the cleanup awaits no acks.
    wait = not isinstance(exc, anyio.get_cancelled_exc_class())
    undone: list[str] = []
    error: str | None = None
    if models is not None:
        if models:
            undone.append(f"models ({', '.join(sorted(models))})")
        models.clear()
    if changes is not None:
        rollback = await anyio.to_thread.run_sync(changes.roll_back)
        undone += rollback.undone
        error = rollback.error
    done = ", ".join(undone) or "nothing of it was applied"
    if error is None:
        exc.add_note(
            f"registration of app {name!r} failed at stage {stage} and was rolled back: {done}"
        )
    else:
        exc.add_note(
            f"registration of app {name!r} failed at stage {stage}, and rolling it back failed "
            f"too: {mask_url(error)} (undone: {done})"
        )
    context: dict[str, Any] = {"stage": stage, "rolled_back": undone}
    if error is not None:
        context["rollback_error"] = mask_url(error)
    await report_failure(ctx, name, "register_app", stage, exc, context=context)
    if error is not None:
        await ctx.listeners.emit(
            "error",
            {
                "component": "AppRegistry",
                "phase": "rollback",
                "app": name,
                "error": mask_url(error),
            },
        )
    if opened:
        await _release(ctx, name, None, registry_shutdown=False, wait=wait)
    if claimed:
        await _release_claim(ctx, name)


async def unregister(
    ctx: AppContext, name: str, record: AppRecord, *, rollback: bool, force: bool
) -> UnregisterResult:
    """The unregistration lifecycle of one app."""
    started = time.monotonic()
    options = {"rollback": rollback, "force": force}
    steps: list[OperationResult] = []
    errors: list[str] = []
    stage = "app_unregistration_started"
    try:
        await ctx.ownership.confirm(name)
        await ctx.steps.step(AppUnregistrationStarted(options=options), name)
        if rollback:
            stage = "app_rollback_started"
            info = ctx.engines.info(name)
            await ctx.steps.step(AppRollbackStarted(connection=info, options=options), name)
            stage = "seeds"
            changes = changes_of(ctx, name, record)
            # Abandoned on a timeout (unregister_app(timeout=...)): a frozen server must
            # not hold the caller; the thread ends when the driver gives up.
            results, failures = await anyio.to_thread.run_sync(
                partial(changes.undo, force=force), abandon_on_cancel=True
            )
            steps += results
            errors += failures
        if not errors or force:
            stage = "models"
            steps.append(_clear_models(record))
        if rollback:
            stage = "app_rollback_completed"
            # Never vetoed once something was rolled back: that cannot be undone.
            await ctx.steps.step(
                AppRollbackCompleted(steps=tuple(steps), success=not errors),
                name,
                veto=not steps,
            )
        if errors and not force:
            await report_failure(
                ctx, name, "unregister_app", "rollback", RuntimeError("; ".join(errors))
            )
            return UnregisterResult(
                name, False, rollback, steps, False, time.monotonic() - started, errors
            )
        stage = "connection_shutdown"
        closed = await _release(ctx, name, record, registry_shutdown=False)
        await ctx.ownership.release(name)
        stage = "app_unregistered"
        await ctx.steps.step(AppUnregistered(options=options), name, veto=False)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await report_failure(ctx, name, "unregister_app", stage, exc)
        raise
    return UnregisterResult(
        name, not errors, rollback, steps, closed, time.monotonic() - started, errors
    )


def _clear_models(record: AppRecord) -> OperationResult:
    started = time.monotonic()
    names: tuple[str, ...] = ()
    if record.models is not None:
        names = tuple(sorted(record.models))
        record.models.clear()
        record.models = None
    record.manager.models = {}
    return OperationResult(
        operation="models", success=True, items=names, duration=time.monotonic() - started
    )


async def close_connection(
    ctx: AppContext, name: str, record: AppRecord, *, registry_shutdown: bool
) -> None:
    """Registry shutdown: release an app's connection (no rollback), models cleared."""
    _clear_models(record)
    await _release(ctx, name, record, registry_shutdown=registry_shutdown)
    await _release_claim(ctx, name)


async def _release(
    ctx: AppContext,
    name: str,
    record: AppRecord | None,
    *,
    registry_shutdown: bool,
    wait: bool = True,
) -> bool:
    """Drop ``name``'s reference; publish connection_shutdown when it was the last one
    (or on registry shutdown, for every app). Returns whether the engine was closed."""
    info: ConnectionInfo = ctx.engines.info(name)
    released = await anyio.to_thread.run_sync(ctx.engines.release, name)
    if record is not None:
        # At once, not after the event: a timeout while plugins answer it must not
        # leave an app whose connection is gone looking registered.
        record.released = True
    if released.last_reference or registry_shutdown:
        payload = ConnectionShutdown(
            connection=info,
            shared=released.shared,
            last_reference=released.last_reference,
            registry_shutdown=registry_shutdown,
        )
        try:
            # Shown to step listeners like every step, but never vetoed: it is closed.
            await ctx.steps.step(payload, name, veto=False, wait=wait)
        except BusError as exc:
            log.warning("connection_shutdown of %s not published: %s", name, exc)
    return released.last_reference


async def _release_claim(ctx: AppContext, name: str) -> None:
    try:
        await ctx.ownership.release(name)
    except BusError as exc:
        log.warning("could not release app %s in the directory: %s", name, exc)


async def report_failure(
    ctx: AppContext,
    name: str,
    operation: str,
    stage: str,
    exc: BaseException,
    *,
    context: dict[str, Any] | None = None,
) -> None:
    """Publish operation_failed (best effort: a failure to report never hides the error)."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        message = "cancelled"
    else:
        message = mask_url(str(exc))
    payload = OperationFailed(
        operation=operation,
        error_type=type(exc).__name__,
        error_message=message,
        context={"stage": stage, **(context or {}), **_reason(exc)},
    )
    await ctx.listeners.emit(
        "error", {"component": "AppRegistry", "phase": stage, "app": name, "error": message}
    )
    try:
        wait = not isinstance(exc, anyio.get_cancelled_exc_class())
        await ctx.steps.step(payload, name, veto=False, wait=wait)
    except Exception as report_error:
        log.warning("operation_failed of %s not published: %s", name, report_error)


def _reason(exc: BaseException) -> dict[str, str]:
    """What operation_failed's context says of the cause, beyond the error itself."""
    return {"reason": "ownership_lost"} if isinstance(exc, AppNotOwned) else {}


async def ownership_lost(ctx: AppContext, error: AppNotOwned) -> None:
    """Say that this registry lost ``error.app`` (it no longer serves it): an ``error``
    listener event and operation_failed, ``reason`` ownership_lost."""
    await report_failure(ctx, error.app, "ownership", "lease", error)
