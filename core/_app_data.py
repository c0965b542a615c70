"""An app's migrations and seeds as one registration handles them, under one app lock.

A registration takes the app lock (``_app_lock``) before its first batch and keeps it
until it has succeeded or has rolled back what it applied; an unregistration takes it
across its whole rollback (seeds, then migrations). Each runner undoes exactly the batch
its registration applied (``Runner``), so a retried unregistration never undoes an
older registration's batches.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import sqlalchemy as sa

from rapid_objection.bus import OperationResult

from ._app_lock import AppLock
from ._config import AppConfig, MigrationsConfig
from ._errors import MigrationFailed
from ._runners import Runner

log = logging.getLogger("rapid_objection.registry")


class Undoable(Protocol):
    """A runner of migrations or seeds (``_runners.Runner``)."""

    applied: bool
    """Its ``apply()`` ran: its ``undo()`` undoes what that apply made, and only that."""

    def apply(self) -> OperationResult: ...

    def undo(self) -> OperationResult: ...

    def status(self) -> dict[str, Any]: ...


class AppChanges:
    """One registration's runners and the app lock over them."""

    def __init__(
        self,
        migrations: Undoable | None,
        seeds: Undoable | None,
        engine: sa.Engine,
        app: str,
        lock_timeout: float = MigrationsConfig().lock_timeout,
    ) -> None:
        self.app = app
        self.migrations = migrations
        self.seeds = seeds
        self.lock: AppLock | None = None
        if migrations is not None or seeds is not None:
            self.lock = AppLock(engine, app, lock_timeout)
        self.held = False

    @classmethod
    def of(cls, app: str, engine: sa.Engine, config: AppConfig) -> AppChanges:
        """The runners ``config`` asks for: plain or Alembic migrations, seeds."""
        from ._alembic import AlembicMigrations  # imports Alembic's command machinery
        from ._migrations import Migrations
        from ._seeds import Seeds

        migrations: Undoable | None = None
        if config.migrations.enabled and config.migrations.alembic:
            migrations = Runner(AlembicMigrations(app, engine, config.migrations))
        elif config.migrations.enabled and config.migrations.directory:
            migrations = Runner(Migrations(app, engine, config.migrations))
        seeds: Undoable | None = None
        if config.seeds.enabled and config.seeds.directory:
            seeds = Runner(Seeds(app, engine, config.seeds))
        return cls(migrations, seeds, engine, app, config.migrations.lock_timeout)

    def acquire(self) -> None:
        """Take the app lock (when there is anything to run); ``MigrationFailed`` on timeout."""
        if self.lock is not None and not self.held:
            self.lock.acquire()
            self.held = True

    def release(self) -> None:
        if self.lock is not None and self.held:
            self.held = False
            self.lock.release()

    def roll_back(self) -> None:
        """A failed registration: undo what it applied, seeds first, then release the lock."""
        try:
            for runner in (self.seeds, self.migrations):
                if runner is None or not runner.applied:
                    # Never applied in this registration: an undo would take the
                    # newest batch, an earlier registration's.
                    continue
                result = runner.undo()
                if not result.success:
                    log.warning(
                        "app %s: a failed registration not rolled back: %s", self.app, result.error
                    )
                    return
        finally:
            self.release()

    def undo(self, *, force: bool) -> tuple[list[OperationResult], list[str]]:
        """An unregistration's rollback, seeds then migrations: the results and the errors.

        Stops at the first failure unless ``force``; the lock is held across both.
        """
        results: list[OperationResult] = []
        errors: list[str] = []
        runners = [(label, runner) for label, runner in self._labelled() if runner is not None]
        if not runners:
            return results, errors
        try:
            self.acquire()
        except MigrationFailed as exc:
            return results, [f"{runners[0][0]}: {exc}"]
        try:
            for label, runner in runners:
                result = runner.undo()
                results.append(result)
                if not result.success:
                    errors.append(f"{label}: {result.error}")
                    if not force:
                        break
        finally:
            self.release()
        return results, errors

    def _labelled(self) -> tuple[tuple[str, Undoable | None], ...]:
        return (("seeds", self.seeds), ("migrations", self.migrations))
