"""The registry's operations in flight: admitted while it is open, drained at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from rapid_objection.plugin_workers import current_delivery

from ._errors import RegistryError


def _hook_of_this_registry(registry_id: str) -> str | None:
    """The event type of the inline hook running in this task, when this registry
    published it (the hook's own ack is what this registry would wait for)."""
    try:
        envelope = current_delivery().envelope
    except LookupError:
        return None
    return envelope.type if envelope.registry == registry_id else None


class Gate:
    """Admits operations (register, unregister, load, unload) while the registry is open.

    ``close()`` refuses new ones with a clear error and cancels those in flight: each
    rolls back what it did (a batch already running in a worker thread finishes first:
    a thread cannot be interrupted) and raises ``RegistryError`` in its caller, saying
    what the operation said of its rollback (done, or failed too).
    """

    def __init__(self, registry_id: str) -> None:
        self.registry_id = registry_id
        self.closed = True
        self._running: dict[anyio.CancelScope, str] = {}
        self._idle = anyio.Event()
        self._idle.set()

    def open(self) -> None:
        self.closed = False

    @property
    def in_flight(self) -> list[str]:
        return sorted(self._running.values())

    @asynccontextmanager
    async def admit(self, operation: str) -> AsyncIterator[None]:
        """Run the body as one operation; raises ``RegistryError`` when the registry is
        not open, or when shutdown cancelled the operation."""
        hook = _hook_of_this_registry(self.registry_id)
        if hook is not None:
            # The registry awaits this hook's ack before it goes on: waiting here for an
            # operation that publishes and awaits again would hang until the hook timeout.
            raise RegistryError(
                f"{operation} refused: called from inside a {hook} hook of registry "
                f"{self.registry_id!r}, which waits for that hook to return"
            )
        if self.closed:
            raise RegistryError(
                f"registry {self.registry_id!r} is not running (not initialized, or "
                f"shutting down): {operation} refused"
            )
        scope = anyio.CancelScope()
        self._running[scope] = operation
        if self._idle.is_set():
            self._idle = anyio.Event()
        # What the cancelled operation said of its undoing (rolled back, or the rollback
        # failed too): the scope swallows the cancellation, so the notes are kept here.
        notes: list[str] = []
        try:
            with scope:
                try:
                    yield
                except anyio.get_cancelled_exc_class() as exc:
                    notes = list(getattr(exc, "__notes__", ()))
                    raise
        finally:
            del self._running[scope]
            if not self._running:
                self._idle.set()
        if scope.cancelled_caught:
            said = "".join(f"; {note}" for note in notes)
            raise RegistryError(
                f"registry {self.registry_id!r} is shutting down: {operation} was cancelled{said}"
            )

    async def close(self) -> None:
        """Refuse new operations, cancel those in flight, wait until they have rolled back."""
        self.closed = True
        for scope in list(self._running):
            scope.cancel()
        await self._idle.wait()
