"""One face for migrations (plain or Alembic) and seeds: apply a batch, undo the last.

Applying raises (registration stops at a failed migration or seed); undoing returns a
failed result instead, so that unregistration can report it and decide (``force``).
"""

from __future__ import annotations

from typing import Any, Protocol

from rapid_objection.bus import OperationResult

from ._errors import RegistryError


class _Migrations(Protocol):
    def latest(self) -> OperationResult: ...

    def rollback(self) -> OperationResult: ...

    def status(self) -> dict[str, Any]: ...


class _Seeds(Protocol):
    def run(self) -> OperationResult: ...

    def unseed(self) -> OperationResult: ...

    def status(self) -> dict[str, Any]: ...


def _failed(operation: str, exc: RegistryError) -> OperationResult:
    return OperationResult(operation=operation, success=False, error=str(exc))


class MigrationRunner:
    def __init__(self, migrations: _Migrations) -> None:
        self.migrations = migrations

    def apply(self) -> OperationResult:
        return self.migrations.latest()

    def undo(self) -> OperationResult:
        try:
            return self.migrations.rollback()
        except RegistryError as exc:
            return _failed("migrations", exc)

    def status(self) -> dict[str, Any]:
        return self.migrations.status()


class SeedRunner:
    def __init__(self, seeds: _Seeds) -> None:
        self.seeds = seeds

    def apply(self) -> OperationResult:
        return self.seeds.run()

    def undo(self) -> OperationResult:
        try:
            return self.seeds.unseed()
        except RegistryError as exc:
            return _failed("seeds", exc)

    def status(self) -> dict[str, Any]:
        return self.seeds.status()
