"""What ``register_app`` returns can migrate, roll back, seed and unseed its app.

``ConnectionManager`` inherits these methods; the registry attaches what does the work
(``_requested``) when the app is registered, so that the manager needs no registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._errors import RegistryError
from ._results import Action, ChangeResult, MigrationStatus

Operate = Callable[[Action, int], Awaitable[ChangeResult]]
"""Runs one action (with its ``steps``) through the registry that owns the app."""


class Operable:
    """``await app.migrate()``, ``rollback_migrations``, ``seed``, ``rollback_seeds``
    and ``app.migration_status()`` on a registered app."""

    name: str
    _operate: Operate | None = None
    _status: Callable[[], MigrationStatus] | None = None

    def attach(self, operate: Operate | None, status: Callable[[], MigrationStatus]) -> None:
        """Done by the registry: ``operate`` None once the app is no longer registered."""
        self._operate, self._status = operate, status

    async def migrate(self) -> ChangeResult:
        """Apply the pending migrations as one new batch (atomic where DDL is
        transactional); ``MigrationFailed`` names the file and the database's error."""
        return await self._run("migrate", 1)

    async def rollback_migrations(self, steps: int = 1) -> ChangeResult:
        """Undo the newest ``steps`` migration batches, newest first."""
        return await self._run("rollback_migrations", steps)

    async def seed(self) -> ChangeResult:
        """Run the pending seeds as one new batch."""
        return await self._run("seed", 1)

    async def rollback_seeds(self, steps: int = 1) -> ChangeResult:
        """Undo the newest ``steps`` seed batches (``unseed`` where a file has one)."""
        return await self._run("rollback_seeds", steps)

    def migration_status(self) -> MigrationStatus:
        """Each migration and seed applied (batch, time) or pending; Alembic mode: the
        current revision and the pending ones. Reads the database (blocking)."""
        if self._status is None:
            raise RegistryError(f"app {self.name!r} was not registered by a registry")
        return self._status()

    async def _run(self, action: Action, steps: int) -> ChangeResult:
        if self._operate is None:
            raise RegistryError(f"app {self.name!r} is not registered (any more)")
        return await self._operate(action, steps)
