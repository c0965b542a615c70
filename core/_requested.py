"""Migrations and seeds on request: migrate, roll back, seed and unseed a registered app.

A registration runs its app's migrations and seeds once; an operator adds a file
later and asks for it (``await app.migrate()``, ``rapid-objection migrate APP up``).
Such a request takes what a registration takes (``_app_data``): the app lock, the
fence (a registry that no longer owns the app refuses, touching nothing) and the
batch lock of the runner (``_runners``), and is published like a registration's
auto-operations: ``auto_operations_started`` (awaited: a required plugin with
``on_failure = "abort"`` vetoes it, and nothing runs) and ``auto_operations_completed``
(success or not), both with ``trigger = "requested"`` and the ``action``; a failure
also publishes operation_failed.

* Up (``migrate``, ``seed``): the pending files as one new batch, atomic where DDL is
  transactional (PostgreSQL, SQLite): a failure leaves nothing of the batch. On
  MySQL/MariaDB the files before the failed one stay applied and tracked.
* Down (``rollback_migrations``, ``rollback_seeds``): the newest ``steps`` batches,
  newest first, each atomic likewise; a failed batch stays whole and stops the rest.

A failure raises ``MigrationFailed``/``SeedFailed`` naming the file and the database's
error. ``direct()`` does the same on the database alone (no registry, no events).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio

from rapid_objection._errors import Error
from rapid_objection.bus import (
    Answer,
    AppSchema,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    OperationResult,
    Request,
    mask_url,
)

from ._app_data import AppChanges, Undoable
from ._config import AppConfig, to_dict
from ._connections import Engines
from ._errors import ConfigError, MigrationFailed, RegistryError, SeedFailed
from ._lifecycle import AppContext, AppRecord, changes_of, report_failure
from ._operable import Operable
from ._results import ACTIONS, Action, ChangeResult, FileState, MigrationStatus
from ._steps import Steps

log = logging.getLogger("rapid_objection.registry")


def _kind(action: Action) -> str:
    return "migrations" if action in ("migrate", "rollback_migrations") else "seeds"


def check_action(action: str, steps: int) -> Action:
    """``action`` as an ``Action``; ``ConfigError`` for an unknown one or ``steps`` < 1."""
    for known in ACTIONS:
        if known == action:
            if steps < 1:
                raise ConfigError(f"steps must be at least 1, not {steps}", path="steps")
            return known
    raise ConfigError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}", path="action")


def runner_of(app: str, changes: AppChanges, action: Action) -> Undoable:
    """The runner ``action`` works on; ``ConfigError`` when the app has none."""
    kind = _kind(action)
    runner = changes.migrations if kind == "migrations" else changes.seeds
    if runner is None:
        raise ConfigError(
            f"app {app!r} has no {kind} (set {kind}.directory"
            + (" or migrations.alembic" if kind == "migrations" else "")
            + " and keep it enabled)",
            path=f"{kind}.directory",
        )
    return runner


@dataclass(slots=True)
class Done:
    """What ``perform`` did: its results, and the error that stopped it."""

    operations: list[OperationResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: RegistryError | None = None


def perform(changes: AppChanges, action: Action, steps: int) -> Done:
    """In a worker thread: ``action`` under the app lock and the fence. A failed file
    is returned in ``Done.error``; a lock or a fence that refuses is raised."""
    runner = runner_of(changes.app, changes, action)
    done = Done()
    if action in ("migrate", "seed"):

        def up() -> None:
            # Read under the app lock: another process's batch is whole by now.
            done.skipped = _applied(runner.status())
            try:
                done.operations.append(runner.apply(atomic=True))
            except (MigrationFailed, SeedFailed) as exc:
                done.operations.append(_failed(_kind(action), exc))
                done.error = exc

        changes.run(up)
        return done
    done.operations = changes.run(partial(runner.rollback, steps))
    for result in done.operations:
        done.skipped += result.details.get("untracked", [])
    failed = next((r for r in done.operations if not r.success), None)
    if failed is not None:
        error = MigrationFailed if _kind(action) == "migrations" else SeedFailed
        undone = [r for r in done.operations if r.success and r.items]
        reason = (failed.error or "failed").partition(": ")[2] or (failed.error or "failed")
        reason += f"; batch {failed.details.get('batch')} stays applied"
        if undone:
            reason += "; undone before it: " + ", ".join(
                f"batch {r.details.get('batch')}" for r in undone
            )
        done.error = error(changes.app, str(failed.details.get("failed", "lock")), reason)
    return done


def _applied(status: dict[str, Any]) -> list[str]:
    """The names already applied: files, or Alembic revisions."""
    applied = status.get("applied", [])
    return [item["name"] if isinstance(item, dict) else str(item) for item in applied]


def _failed(kind: str, exc: MigrationFailed | SeedFailed) -> OperationResult:
    failed = exc.migration if isinstance(exc, MigrationFailed) else exc.seed
    return OperationResult(
        operation=kind,
        success=False,
        error=str(exc),
        details={"failed": failed, "error_type": type(exc).__name__},
    )


def result_of(app: str, action: Action, done: Done, duration: float) -> ChangeResult:
    ran: list[str] = []
    batches: list[int] = []
    durations: dict[str, float] = {}
    for result in done.operations:
        ran += result.items
        if result.items and isinstance(result.details.get("batch"), int):
            batches.append(result.details["batch"])
        durations |= result.details.get("durations") or {}
    return ChangeResult(
        app=app,
        action=action,
        ran=tuple(ran),
        batches=tuple(batches),
        skipped=tuple(done.skipped),
        durations=durations,
        duration=duration,
        operations=tuple(done.operations),
    )


async def requested(
    ctx: AppContext,
    name: str,
    record: AppRecord,
    action: Action,
    steps: int = 1,
    *,
    requested_by: str = "",
) -> ChangeResult:
    """``action`` on registered app ``name``, published and awaited like a registration's
    auto-operations; raises the failure after publishing it."""
    started = time.monotonic()
    changes = changes_of(ctx, name, record)
    runner_of(name, changes, action)  # no such runner: refused before any event
    options: dict[str, Any] = {"steps": steps} if action.startswith("rollback") else {}
    if requested_by:
        options["requested_by"] = requested_by
    stage = "auto_operations_started"
    try:
        await ctx.ownership.confirm(name)
        await ctx.steps.step(
            AutoOperationsStarted(
                connection=ctx.engines.info(name),
                config=to_dict(record.config),
                trigger="requested",
                action=action,
                options=options,
            ),
            name,
        )
        stage = _kind(action)
        done = await anyio.to_thread.run_sync(perform, changes, action, steps)
        record.operations += done.operations
        stage = "auto_operations_completed"
        # Never vetoed: what ran cannot be taken back by an answer to it.
        await ctx.steps.step(
            AutoOperationsCompleted(
                operations=tuple(done.operations),
                success=done.error is None,
                trigger="requested",
                action=action,
            ),
            name,
            veto=False,
        )
        if done.error is not None:
            stage = _kind(action)
            raise done.error
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await report_failure(ctx, name, action, stage, exc)
        raise
    return result_of(name, action, done, time.monotonic() - started)


class Changer(Protocol):
    """What answering a request uses of the registry."""

    id: str

    async def change(
        self, name: str, action: str, steps: int = 1, *, requested_by: str = ""
    ) -> ChangeResult: ...

    def get_app(self, name: str) -> Operable: ...


async def answer(registry: Changer, request: Request) -> Answer:
    """A registry's answer to an operator's request from the bus (``bus._requests``):
    the change's result, or its error as the exception would say it."""
    try:
        if request.action == "status":
            app = registry.get_app(request.app)
            status = await anyio.to_thread.run_sync(app.migration_status)
            result = status.as_dict()
        else:
            changed = await registry.change(
                request.app, request.action, request.steps, requested_by=request.sender
            )
            result = changed.as_dict()
    except Error as exc:
        error = mask_url(str(exc))
        # The operator who asked gets the answer; the registry's own log says it too.
        log.warning(
            "app %s: %s requested by %s failed: %s",
            request.app,
            request.action,
            request.sender or "?",
            error,
        )
        return Answer(
            request=request.id,
            registry=registry.id,
            ok=False,
            error=error,
            error_type=type(exc).__name__,
        )
    if request.action != "status":
        ran = ", ".join(result.get("ran", ())) or "nothing to do"
        log.info("app %s: %s requested by %s: %s", request.app, request.action, request.sender, ran)
    return Answer(request=request.id, registry=registry.id, ok=True, result=result)


def direct(name: str, config: AppConfig, action: Action, steps: int = 1) -> ChangeResult:
    """``action`` on app ``name``'s database alone, no registry running: the same app lock
    and batch locks (so it waits for, and is waited for by, a registry's operations),
    no events and no fence."""
    started = time.monotonic()
    engines = Engines()
    try:
        lease = engines.open(name, config.database, None)
        changes = AppChanges.of(name, lease.engine, config)
        done = perform(changes, action, steps)
    finally:
        engines.close_all()
    if done.error is not None:
        raise done.error
    return result_of(name, action, done, time.monotonic() - started)


def status_of(app: str, migrations: Undoable | None, seeds: Undoable | None) -> MigrationStatus:
    """Every migration and seed of ``app``, applied or pending (reads the database)."""
    mode: Any = "none"
    files: tuple[FileState, ...] = ()
    missing: tuple[str, ...] = ()
    revision = head = None
    if migrations is not None:
        found = migrations.status()
        if "version_table" in found:
            mode, revision, head = "alembic", found["current"], found["head"]
            # The tracking rows say which batch applied each revision (``alembic:+rev``).
            batch_of = {row["name"]: row for row in found["batches"]}
            files = tuple(
                FileState(name, *_alembic_row(batch_of.get(f"alembic:+{name}")))
                for name in found["applied"]
            ) + tuple(FileState(name) for name in found["pending"])
        else:
            mode, files, missing = "files", _states(found, "migrated_at"), tuple(found["missing"])
    seed_files = _states(seeds.status(), "seeded_at") if seeds is not None else ()
    return MigrationStatus(app, mode, files, seed_files, missing, revision, head)


def _alembic_row(row: dict[str, Any] | None) -> tuple[int, str | None]:
    """Batch and time of a revision; batch 0 when applied outside the registry."""
    return (row["batch"], row["migrated_at"]) if row else (0, None)


def _states(found: dict[str, Any], at: str) -> tuple[FileState, ...]:
    applied = tuple(FileState(row["name"], row["batch"], row[at]) for row in found["applied"])
    return applied + tuple(FileState(name) for name in found["pending"])


async def track_schema(steps: Steps, name: str, record: AppRecord) -> None:
    """Put where ``name``'s migrations stand in the registry's heartbeat (best effort: a
    status display never fails an operation)."""
    if record.migrations is None and record.seeds is None:
        return
    try:
        status = await anyio.to_thread.run_sync(status_of, name, record.migrations, record.seeds)
    except Exception as exc:
        log.warning("app %s: migration state not read: %s", name, exc)
        return
    steps.track_schema(name, schema_of(status))


def schema_of(status: MigrationStatus) -> AppSchema:
    """What a registry's heartbeat says of an app's migrations (``status`` shows it)."""
    return AppSchema(
        batch=status.batch if status.mode == "files" else None,
        revision=(status.revision or "base") if status.mode == "alembic" else None,
        pending=len(status.pending),
        pending_seeds=len(status.pending_seeds),
    )
