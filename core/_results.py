"""What the registry's operations return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from rapid_objection.bus import OperationResult


@dataclass(frozen=True, slots=True)
class FailedPluginInfo:
    name: str
    error: str
    phase: str


@dataclass(frozen=True, slots=True)
class InitializeResult:
    """``await registry.initialize()``: which plugins loaded, which failed and why."""

    plugin_count: int
    loaded_plugins: list[str]
    failed_plugins: list[FailedPluginInfo]
    duration: float

    @property
    def success(self) -> bool:
        return not self.failed_plugins


@dataclass(frozen=True, slots=True)
class ShutdownResult:
    success: bool
    duration: float
    apps_shut_down: list[str]
    plugins_shut_down: list[str]
    errors: list[str] = field(default_factory=list)
    finished: bool = True
    """False when something the registry started was still running as shutdown returned:
    a plugin's plain ``def`` hook blocked in its thread (a thread cannot be stopped). Its
    inline worker, and the bus, close once that thread returns."""


@dataclass(frozen=True, slots=True)
class UnregisterResult:
    app: str
    success: bool
    rolled_back: bool
    steps: list[OperationResult]
    connection_closed: bool
    duration: float
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "success": self.success,
            "rolled_back": self.rolled_back,
            "connection_closed": self.connection_closed,
            "duration": self.duration,
            "errors": self.errors,
        }


Action = Literal["migrate", "rollback_migrations", "seed", "rollback_seeds"]
"""What an operator may ask of a registered app's migrations and seeds."""

ACTIONS: tuple[Action, ...] = get_args(Action)


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """``await app.migrate()`` and its siblings: what ran, in which batches, how long.

    A failure is raised (``MigrationFailed``/``SeedFailed`` naming the file and the
    database's error), never returned: a result is a success.
    """

    app: str
    action: Action
    ran: tuple[str, ...]
    """The files (Alembic: revisions) applied or undone, in the order they ran."""
    batches: tuple[int, ...]
    """The batch made (up) or the batches undone (down), in that order."""
    skipped: tuple[str, ...]
    """Up: the files already applied, left alone. Down: the seeds undone without an
    ``unseed`` (only untracked)."""
    durations: dict[str, float]
    """Seconds per file."""
    duration: float
    operations: tuple[OperationResult, ...]
    """As published in ``auto_operations_completed``: one per batch."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "action": self.action,
            "ran": list(self.ran),
            "batches": list(self.batches),
            "skipped": list(self.skipped),
            "durations": dict(self.durations),
            "duration": self.duration,
        }


@dataclass(frozen=True, slots=True)
class FileState:
    """One migration or seed file: applied (in ``batch``, at ``at``) or pending."""

    name: str
    batch: int | None = None
    at: str | None = None
    """When it was applied (ISO 8601, UTC)."""

    @property
    def applied(self) -> bool:
        return self.batch is not None


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """``app.migration_status()``: every file applied or pending, for migrations and seeds.

    Alembic mode: ``revision`` and ``head`` are set, ``migrations`` lists the revisions
    (applied ones with the batch that applied them when this registry did)."""

    app: str
    mode: Literal["files", "alembic", "none"]
    migrations: tuple[FileState, ...] = ()
    seeds: tuple[FileState, ...] = ()
    missing: tuple[str, ...] = ()
    """Tracked as applied, but the file is gone from the directory."""
    revision: str | None = None
    head: str | None = None

    @property
    def batch(self) -> int | None:
        """The newest migration batch (None when nothing is applied)."""
        return max((f.batch for f in self.migrations if f.batch is not None), default=None)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.migrations if not f.applied)

    @property
    def pending_seeds(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.seeds if not f.applied)

    def as_dict(self) -> dict[str, Any]:
        def files(states: tuple[FileState, ...]) -> list[dict[str, Any]]:
            return [
                {
                    "name": f.name,
                    "state": "applied" if f.applied else "pending",
                    "batch": f.batch,
                    "at": f.at,
                }
                for f in states
            ]

        return {
            "app": self.app,
            "mode": self.mode,
            "batch": self.batch,
            "revision": self.revision,
            "head": self.head,
            "pending": list(self.pending),
            "pending_seeds": list(self.pending_seeds),
            "missing": list(self.missing),
            "migrations": files(self.migrations),
            "seeds": files(self.seeds),
        }
