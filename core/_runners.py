"""One routine for migrations (plain or Alembic) and seeds: lock, apply or undo, record.

A ``Runner`` takes the batch lock of its app (``rapid_objection.core._locks``), runs its
``Changes`` forward (the pending files as one new batch) or backward (one batch in
reverse), and turns what happened into an ``OperationResult``. Only the changes differ:
``Migrations``, ``AlembicMigrations`` and ``Seeds`` implement the ``Changes`` protocol, and
the plain files of the first and the last share ``forward()`` and ``backward()`` here.

* ``apply()`` raises (registration stops at a failed migration or seed):
  ``MigrationFailed``/``SeedFailed`` naming the file and saying what stays applied.
* ``undo()`` returns a failed result instead of raising (``error`` names the file;
  ``details`` has ``failed``, ``remaining`` and ``error_type``), so that unregistration
  can report it and decide (``force``). A lock, a file or the database that fails gives
  a failed result too (``details["error_type"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import sqlalchemy as sa

from rapid_objection.bus import OperationResult

from ._errors import MigrationFailed, RegistryError, SeedFailed
from ._locks import Batch, LockNotTaken
from ._scripts import Script, describe
from ._tracking import NewerBatch, Tracker

NOT_TRANSACTIONAL: Final = (
    "this database commits DDL statement by statement (MySQL/MariaDB): statements of "
    "the failed file that ran before the error stay applied"
)


@dataclass(slots=True)
class Progress:
    """How far a batch (forward or backward) went; ``failed`` stops it."""

    batch: int | None = None
    done: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    failed: str | None = None
    error: BaseException | None = None
    remaining: list[str] = field(default_factory=list)
    """Backward: the names of the batch still applied after a failure."""
    reason: str | None = None
    """Forward: why it stopped and what stays applied (set by the changes on a failure)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the changes add to the result's details."""


@dataclass(frozen=True, slots=True)
class Kind:
    """The names of one kind of changes, as results, errors and logs show them."""

    operation: str
    """``migrations`` or ``seeds``: the ``OperationResult.operation``."""
    apply: str
    """``details["action"]`` of an apply (``latest``, ``run``)."""
    undo: str
    """``details["action"]`` of an undo (``rollback``, ``unseed``)."""
    failure: type[MigrationFailed] | type[SeedFailed]


class Changes(Protocol):
    """What differs between plain migrations, Alembic migrations and seeds."""

    @property
    def kind(self) -> Kind: ...

    @property
    def app(self) -> str: ...

    @property
    def tracker(self) -> Tracker: ...

    def details(self) -> dict[str, Any]:
        """Details every result of these changes carries (Alembic: its version table)."""
        ...

    def lock(self, *, atomic: bool = False) -> AbstractContextManager[Batch]: ...

    def forward(self, batch: Batch) -> Progress:
        """The pending ones as one new batch; stops at the first that fails."""
        ...

    def backward(self, batch: Batch, target: int | None) -> Progress:
        """Batch ``target`` (the newest when None) undone in reverse; stops at a failed step."""
        ...

    def status(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Changes)


class _Discarded(Exception):  # noqa: N818 - internal signal, never seen outside
    """Raised out of an atomic batch that failed, so that its transaction undoes it whole."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress


class Runner(Generic[S]):
    """Apply a batch of ``changes`` under their lock, and undo exactly that batch.

    A runner remembers the batches its ``apply()`` made: its ``undo()`` undoes the
    newest of them and nothing else (nothing at all when the applies found nothing
    pending), and once they are all undone, a further ``undo()`` does nothing. A runner
    that applied nothing yet undoes the newest batch (a maintenance ``undo()``);
    ``rollback()`` undoes the newest batches whoever made them (an operator's request).
    """

    def __init__(self, changes: S) -> None:
        self.changes = changes
        self.log = logging.getLogger(f"rapid_objection.{changes.kind.operation}")
        self.applied = False
        """``apply()`` ran (even if it failed): ``undo()`` undoes ``batches`` only."""
        self.batches: list[int] = []
        """The batches ``apply()`` made that no undo has undone yet, oldest first."""

    @property
    def batch(self) -> int | None:
        """The newest batch ``apply()`` made that no undo has undone yet."""
        return self.batches[-1] if self.batches else None

    def apply(self, *, atomic: bool = False) -> OperationResult:
        """Apply the pending changes as one batch; ``MigrationFailed``/``SeedFailed`` on error.

        ``atomic``: where DDL is transactional the batch is one transaction, and a
        failure leaves nothing of it (else the files before the failed one stay).
        """
        changes, kind = self.changes, self.changes.kind
        started = time.perf_counter()
        # Until a batch is known to be made, there is nothing of this one to undo.
        self.applied = True
        try:
            with changes.lock(atomic=atomic) as batch:
                progress = changes.forward(batch)
                if progress.failed is not None and progress.done and batch.atomic:
                    raise _Discarded(progress)
        except _Discarded as discarded:
            progress = discarded.progress
            progress.reason = (
                f"{describe(progress.error or RuntimeError('failed'))}; nothing of batch "
                f"{progress.batch} is applied (one transaction: {', '.join(progress.done)} "
                "undone with it)"
            )
            progress.done = []
        except LockNotTaken as exc:
            raise kind.failure(changes.app, exc.lock, str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:
            raise kind.failure(changes.app, changes.tracker.table.name, describe(exc)) from exc
        if progress.done and progress.batch is not None:
            self.batches.append(progress.batch)
        if progress.failed is not None:
            reason = progress.reason or failure_reason(progress, transactional_ddl=True)
            raise kind.failure(changes.app, progress.failed, reason) from progress.error
        for name in progress.done:
            self.log.info("app %r: %s %s (batch %s)", changes.app, kind.apply, name, progress.batch)
        return OperationResult(
            operation=kind.operation,
            success=True,
            items=tuple(progress.done),
            duration=time.perf_counter() - started,
            details={
                "action": kind.apply,
                "batch": progress.batch,
                **changes.details(),
                **progress.details,
            },
        )

    def undo(self) -> OperationResult:
        """Undo this runner's newest batch in reverse order; a failed result names the
        failed step."""
        if self.applied and self.batch is None:
            # This runner's batches are undone already, or its apply had nothing to do.
            started = time.perf_counter()
            return OperationResult(
                operation=self.changes.kind.operation,
                success=True,
                duration=time.perf_counter() - started,
                details={
                    "action": self.changes.kind.undo,
                    **self.changes.details(),
                    "batch": None,
                    "durations": {},
                },
            )
        return self._undo(self.batch, atomic=False)

    def rollback(self, steps: int) -> list[OperationResult]:
        """Undo the newest ``steps`` batches, newest first, each atomic where DDL is
        transactional (a failed one stays whole); stops at the first that fails or when
        none is left."""
        results: list[OperationResult] = []
        for _ in range(steps):
            result = self._undo(None, atomic=True)
            if result.success and result.details.get("batch") is None:
                break  # nothing left to undo
            results.append(result)
            if not result.success:
                break
        return results

    def _undo(self, target: int | None, *, atomic: bool) -> OperationResult:
        changes, kind = self.changes, self.changes.kind
        started = time.perf_counter()
        details = {"action": kind.undo, **changes.details()}
        try:
            try:
                with changes.lock(atomic=atomic) as batch:
                    progress = changes.backward(batch, target)
                    if progress.failed is not None and progress.done and batch.atomic:
                        raise _Discarded(progress)
            except _Discarded as discarded:
                progress = discarded.progress
                # Both lists are in the order of undoing: the whole batch is still there.
                progress.remaining = [*progress.done, *progress.remaining]
                progress.done = []
                progress.details.pop("untracked", None)
        except (RegistryError, LockNotTaken, NewerBatch, sa.exc.SQLAlchemyError) as exc:
            return OperationResult(
                operation=kind.operation,
                success=False,
                duration=time.perf_counter() - started,
                error=describe(exc) if isinstance(exc, sa.exc.SQLAlchemyError) else str(exc),
                details={**details, "error_type": type(exc).__name__},
            )
        for name in progress.done:
            self.log.info("app %r: %s %s", changes.app, kind.undo, name)
        shown: dict[str, Any] = {
            **details,
            **progress.details,
            "batch": progress.batch,
            "durations": progress.durations,
        }
        error: str | None = None
        if progress.failed is None:
            # The batch asked for is gone now (undone here, or before by someone else).
            self.batches = [b for b in self.batches if b not in (progress.batch, target)]
        else:
            error = f"{progress.failed}: {describe(progress.error or RuntimeError('failed'))}"
            shown |= {"failed": progress.failed, "remaining": progress.remaining}
            if progress.error is not None:
                shown["error_type"] = type(progress.error).__name__
        return OperationResult(
            operation=kind.operation,
            success=progress.failed is None,
            items=tuple(progress.done),
            duration=time.perf_counter() - started,
            error=error,
            details=shown,
        )

    def status(self) -> dict[str, Any]:
        return self.changes.status()


# --- numbered files (plain migrations and seeds) --------------------------------------


def forward(
    batch: Batch,
    tracker: Tracker,
    scripts: Sequence[Script],
    run: Callable[[sa.Connection, Script], object],
) -> Progress:
    """The pending scripts as one new batch, each with its row in one step, in order.

    Stops at the first script that fails; the ones before it stay applied and tracked.
    """
    connection = batch.connection
    applied = {row.name for row in tracker.rows(connection)}
    pending = [script for script in scripts if script.name not in applied]
    progress = Progress()
    if not pending:
        return progress
    progress.batch = tracker.next_batch(connection)
    for script in pending:
        started = time.perf_counter()
        try:
            with batch.step():
                run(connection, script)
                tracker.record(connection, script.name, progress.batch)
        except Exception as exc:
            progress.failed, progress.error = script.name, exc
            break
        finally:
            progress.durations[script.name] = time.perf_counter() - started
        progress.done.append(script.name)
    return progress


def backward(
    batch: Batch,
    tracker: Tracker,
    target: int | None,
    scripts: Mapping[str, Script],
    run: Callable[[sa.Connection, Script], object],
) -> Progress:
    """Batch ``target`` (the newest when None) undone in reverse order, each script with
    its row in one step.

    Stops at the first script that fails (or whose file is gone); the ones undone
    before it stay undone, it and the ones after it stay applied.
    """
    connection = batch.connection
    last = tracker.last_batch(connection, target)
    progress = Progress()
    if last is None:
        return progress
    progress.batch, names = last
    for index, name in enumerate(reversed(names)):
        started = time.perf_counter()
        try:
            script = scripts.get(name)
            if script is None:
                raise FileNotFoundError(f"{name} is tracked but no longer in the directory")
            with batch.step():
                run(connection, script)
                tracker.forget(connection, name)
        except Exception as exc:
            progress.failed, progress.error = name, exc
            progress.remaining = list(reversed(names))[index:]
            break
        finally:
            progress.durations[name] = time.perf_counter() - started
        progress.done.append(name)
    return progress


def applied_status(tracker: Tracker, engine: sa.Engine, names: Sequence[str]) -> dict[str, Any]:
    """``applied`` (name, batch, time) and ``pending`` names; ``missing``: tracked, no file."""
    with engine.connect() as connection:
        rows = tracker.rows(connection) if tracker.exists(connection) else []
    tracked = {row.name for row in rows}
    return {
        "applied": [
            {"name": row.name, "batch": row.batch, tracker.time_column: row.at.isoformat()}
            for row in rows
        ],
        "pending": [name for name in names if name not in tracked],
        "missing": [row.name for row in rows if row.name not in set(names)],
    }


def failure_reason(progress: Progress, transactional_ddl: bool) -> str:
    """Why a forward batch stopped, and what it left applied and tracked."""
    reason = describe(progress.error or RuntimeError("failed"))
    if progress.done:
        reason += f"; applied and tracked before it in batch {progress.batch}: " + ", ".join(
            progress.done
        )
    if not transactional_ddl:
        reason += f"; {NOT_TRANSACTIONAL}"
    return reason
