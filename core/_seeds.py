"""An app's seeds: ``NNN_name.py`` files with ``seed(connection)`` and optional ``unseed``.

Tracked per app like migrations (``ro_seeds``: app, name, batch, seeded_at) and run
under the same kind of database lock, a lock of their own, by the one routine of
``_runners``: ``Runner(Seeds(...))``.

* Applying seeds the pending files, in order, as one new batch; each ``seed`` and its
  tracking row form one step (a transaction, or a SAVEPOINT on SQLite), so that a failed
  seed leaves nothing behind. A failure stops the batch and raises ``SeedFailed``
  naming the file; the seeds before it stay seeded and tracked.
* Undoing calls ``unseed`` of the newest batch's files in reverse order where the file
  defines it; a seed without one is only untracked (``details["untracked"]``). It stops
  at the first step that fails.

The ``connection`` a seed receives is inside the step's transaction: a seed must not
commit or roll back itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from ._config import MigrationsConfig, SeedsConfig
from ._errors import SeedFailed
from ._locks import Batch, exclusive
from ._runners import Kind, Progress, applied_status, backward, forward
from ._scripts import Script, discover
from ._tracking import Tracker

KIND: Final = Kind("seeds", apply="run", undo="unseed", failure=SeedFailed)
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
    """The changes of app ``app``'s seeds in ``config.directory`` on ``engine``."""

    kind: Final = KIND

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

    def discover(self) -> list[Seed]:
        """The seed files in order; a ``ConfigError`` names a malformed one."""
        return [_seed(script) for script in self._scripts()]

    def details(self) -> dict[str, Any]:
        return {}

    def lock(self, *, atomic: bool = False) -> AbstractContextManager[Batch]:
        return exclusive(
            self.engine,
            self.tracker,
            purpose=LOCK_PURPOSE,
            what="seed",
            timeout=self.lock_timeout,
            atomic=atomic,
        )

    def forward(self, batch: Batch) -> Progress:
        # Seeds are DML: atomic with their row on every dialect (the default reason).
        progress = forward(batch, self.tracker, self._scripts(), _run_seed)
        progress.details = {"durations": progress.durations}
        return progress

    def backward(self, batch: Batch, target: int | None) -> Progress:
        scripts = {script.name: script for script in self._scripts()}
        progress = backward(batch, self.tracker, target, scripts, _run_unseed)
        progress.details = {
            "untracked": [name for name in progress.done if _seed(scripts[name]).unseed is None]
        }
        return progress

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
