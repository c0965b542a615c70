"""An app's migrations and seeds as one registration handles them, under one app lock.

A registration takes the app lock (``_app_lock``) before its first batch and keeps it
until it has succeeded or has rolled back what it applied; an unregistration takes it
across its whole rollback (seeds, then migrations). Each runner undoes exactly the batch
its registration applied (``Runner``), so a retried unregistration never undoes an
older registration's batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from rapid_objection.bus import OperationResult

from ._app_lock import AppLock
from ._config import AppConfig, MigrationsConfig
from ._errors import MigrationFailed
from ._runners import Runner

log = logging.getLogger("rapid_objection.registry")

T = TypeVar("T")


class Undoable(Protocol):
    """A runner of migrations or seeds (``_runners.Runner``)."""

    applied: bool
    """Its ``apply()`` ran: its ``undo()`` undoes what that apply made, and only that."""

    @property
    def batch(self) -> int | None:
        """The newest batch its ``apply()`` made that no undo has undone yet."""
        ...

    def apply(self, *, atomic: bool = False) -> OperationResult: ...

    def undo(self) -> OperationResult: ...

    def rollback(self, steps: int) -> list[OperationResult]: ...

    def status(self) -> dict[str, Any]: ...


Fence = Callable[[sa.Engine], None]
"""Called under the app lock before anything changes (``Ownership.fence`` of the app):
raises to refuse the change."""


@dataclass(slots=True)
class Rollback:
    """What undoing a failed registration did."""

    undone: list[str] = field(default_factory=list)
    """The batches undone, as ``seeds batch 2 (002_second.py)``, in the order undone."""
    error: str | None = None
    """Why the rollback stopped and what stays applied; None when it undid everything."""


def _batch(label: str, batch: object, names: Sequence[str]) -> str:
    return f"{label} batch {batch} ({', '.join(names)})"


class AppChanges:
    """One registration's runners and the app lock over them."""

    def __init__(
        self,
        migrations: Undoable | None,
        seeds: Undoable | None,
        engine: sa.Engine,
        app: str,
        lock_timeout: float = MigrationsConfig().lock_timeout,
        *,
        fence: Fence | None = None,
    ) -> None:
        self.app = app
        self.fence = fence
        self.migrations = migrations
        self.seeds = seeds
        self.lock: AppLock | None = None
        if migrations is not None or seeds is not None:
            self.lock = AppLock(engine, app, lock_timeout)
        self.held = False

    @classmethod
    def of(
        cls, app: str, engine: sa.Engine, config: AppConfig, fence: Fence | None = None
    ) -> AppChanges:
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
        return cls(migrations, seeds, engine, app, config.migrations.lock_timeout, fence=fence)

    def acquire(self) -> None:
        """Take the app lock (when there is anything to run); ``MigrationFailed`` on
        timeout. Then the fence, which may refuse (``AppNotOwned``): nothing is held."""
        if self.lock is not None and not self.held:
            self.lock.acquire()
            try:
                if self.fence is not None:
                    self.fence(self.lock.engine)
            except BaseException:
                self.lock.release()
                raise
            self.held = True

    def release(self) -> None:
        if self.lock is not None and self.held:
            self.held = False
            self.lock.release()

    def roll_back(self) -> Rollback:
        """A failed registration: undo what it applied, seeds first, then release the lock.

        Never raises: a step that fails stops the rollback (what it left applied is named
        in ``Rollback.error``), and so does a lock that cannot be released.
        """
        rollback = Rollback()
        try:
            for label, runner in self._labelled():
                if runner is None or not runner.applied:
                    # Never applied in this registration: an undo would take the
                    # newest batch, an earlier registration's.
                    continue
                result = runner.undo()
                if not result.success:
                    rollback.error = self._stopped(label, result)
                    break
                if result.items:
                    rollback.undone.append(_batch(label, result.details.get("batch"), result.items))
        except Exception as exc:  # a bug in a runner must not hide the stage's own error
            rollback.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self.release()
            except Exception as exc:
                released = f"the app lock was not released: {type(exc).__name__}: {exc}"
                rollback.error = f"{rollback.error}; {released}" if rollback.error else released
        if rollback.error is not None:
            log.error("app %s: a failed registration not rolled back: %s", self.app, rollback.error)
        return rollback

    def _stopped(self, label: str, result: OperationResult) -> str:
        """Why the rollback stopped at ``label``, and which batches stay applied."""
        labelled = self._labelled()
        index = [name for name, _ in labelled].index(label)
        still: list[str] = []
        for name, runner in labelled[index:]:
            if runner is None or runner.batch is None:
                continue
            remaining = result.details.get("remaining") if name == label else None
            still.append(
                _batch(name, runner.batch, remaining)
                if remaining
                else f"{name} batch {runner.batch}"
            )
        text = f"{label}: {result.error}"
        return text + (f"; still applied: {', '.join(still)}" if still else "")

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
                # Every batch of this registration, the ones migrate() or seed() added
                # since included, newest first.
                while True:
                    result = runner.undo()
                    results.append(result)
                    if not result.success:
                        errors.append(f"{label}: {result.error}")
                        break
                    if not runner.applied or runner.batch is None:
                        break
                if errors and not force:
                    break
        finally:
            self.release()
        return results, errors

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` under the app lock and the fence (an operator's migrate, rollback,
        seed): the same lock and fence as a registration's."""
        self.acquire()
        try:
            return work()
        finally:
            self.release()

    def _labelled(self) -> tuple[tuple[str, Undoable | None], ...]:
        return (("seeds", self.seeds), ("migrations", self.migrations))
