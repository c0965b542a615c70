"""An app's seeds: ``NNN_name.py`` files with ``seed(connection)`` and optional ``unseed``.

Tracked per app like migrations (``ro_seeds``: app, name, batch, seeded_at) and run
under the same kind of database lock (see ``rapid_objection.core._tracking``), a lock of their own.

* ``run()`` seeds the pending files, in order, as one new batch; each ``seed`` and its
  tracking row form one step (a transaction, or a SAVEPOINT on SQLite), so that a failed
  seed leaves nothing behind. A failure stops the batch and raises ``SeedFailed``
  naming the file; the seeds before it stay seeded and tracked.
* ``unseed()`` undoes the newest batch in reverse order, calling ``unseed`` where the
  file defines it; a seed without one is only untracked (``details["untracked"]``). It
  stops at the first step that fails and *returns* a failed result naming the file,
  like ``Migrations.rollback()``; it raises for nothing of its own.

The ``connection`` a seed receives is inside the step's transaction: a seed must not
commit or roll back itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from rapid_objection.bus import OperationResult

from ._config import MigrationsConfig, SeedsConfig
from ._errors import RegistryError, SeedFailed
from ._tracking import (
    Batch,
    LockNotTaken,
    Script,
    Tracker,
    applied_status,
    backward,
    describe,
    discover,
    exclusive,
    failed_result,
    failure_reason,
    forward,
    undo_result,
)

log = logging.getLogger("rapid_objection.seeds")

OPERATION: Final = "seeds"
LOCK_PURPOSE: Final = "seed"
LOCK_TIMEOUT: Final[float] = MigrationsConfig().lock_timeout
"""Seconds to wait for the seed lock while ``SeedsConfig`` has no ``lock_timeout``."""


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed file."""

    name: str
    number: int
    seed: Callable[[sa.Connection], object]
    unseed: Callable[[sa.Connection], object] | None


class Seeds:
    """The seeds of app ``app`` in ``config.directory`` on ``engine``."""

    def __init__(self, app: str, engine: sa.Engine, config: SeedsConfig) -> None:
        self.app = app
        self.engine = engine
        self.config = config
        self.tracker = Tracker(config.table, app=app, time_column="seeded_at")
        self.lock_timeout = float(getattr(config, "lock_timeout", LOCK_TIMEOUT))

    def _scripts(self) -> list[Script]:
        return discover(
            self.config.directory, kind="seeds", required=("seed",), optional=("unseed",)
        )

    def _lock(self) -> AbstractContextManager[Batch]:
        return exclusive(
            self.engine,
            self.tracker,
            purpose=LOCK_PURPOSE,
            what="seed",
            timeout=self.lock_timeout,
        )

    def discover(self) -> list[Seed]:
        """The seed files in order; a ``ConfigError`` names a malformed one."""
        return [_seed(script) for script in self._scripts()]

    def run(self) -> OperationResult:
        """Seed the pending files as one new batch; ``SeedFailed`` names a failed one."""
        started = time.perf_counter()
        scripts = self._scripts()
        try:
            with self._lock() as batch:
                progress = forward(batch, self.tracker, scripts, _run_seed)
        except LockNotTaken as exc:
            raise SeedFailed(self.app, exc.lock, str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:
            raise SeedFailed(self.app, self.config.table, describe(exc)) from exc
        if progress.failed is not None:
            # Seeds are DML: atomic with their row on every dialect.
            reason = failure_reason(progress, transactional_ddl=True)
            raise SeedFailed(self.app, progress.failed, reason) from progress.error
        for name in progress.done:
            log.info("app %r: seeded %s (batch %s)", self.app, name, progress.batch)
        return OperationResult(
            operation=OPERATION,
            success=True,
            items=tuple(progress.done),
            duration=time.perf_counter() - started,
            details={"action": "run", "batch": progress.batch, "durations": progress.durations},
        )

    def unseed(self) -> OperationResult:
        """Undo the newest batch in reverse order; a failed result names the failed file."""
        started = time.perf_counter()
        details: dict[str, Any] = {"action": "unseed"}
        try:
            scripts = {script.name: script for script in self._scripts()}
            with self._lock() as batch:
                progress = backward(batch, self.tracker, scripts, _run_unseed)
        except (RegistryError, LockNotTaken, sa.exc.SQLAlchemyError) as exc:
            return failed_result(OPERATION, exc, started, details)
        details["untracked"] = [
            name for name in progress.done if _seed(scripts[name]).unseed is None
        ]
        for name in progress.done:
            log.info("app %r: unseeded %s", self.app, name)
        return undo_result(OPERATION, progress, started, details)

    def status(self) -> dict[str, Any]:
        """``applied`` (name, batch, seeded_at), ``pending`` and ``missing`` file names."""
        names = [script.name for script in self._scripts()]
        return applied_status(self.tracker, self.engine, names)


def _seed(script: Script) -> Seed:
    seed = script.function("seed")
    assert seed is not None  # discover() checked it
    return Seed(script.name, script.number, seed, script.function("unseed"))


def _run_seed(connection: sa.Connection, script: Script) -> None:
    _seed(script).seed(connection)


def _run_unseed(connection: sa.Connection, script: Script) -> None:
    unseed = _seed(script).unseed
    if unseed is not None:
        unseed(connection)
