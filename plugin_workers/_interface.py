"""The plugin contract: ``PluginInterface`` and its twelve lifecycle hooks.

A plugin subclasses ``PluginInterface`` and overrides the hooks it cares about; the
hooks it leaves alone are acknowledged as ``skipped`` without being called. Hooks may
be ``async def`` or plain ``def``. ``connection`` arguments are ``Connection`` values: a
``bus.ConnectionInfo`` (never a password) plus ``await connection.engine()``; result
arguments are the event's payload. A plugin may also define ``async def
prepare_batch(self, deliveries)``: called with a read batch's deliveries before their
hooks run, to do their I/O at once, and a class attribute ``read_batch`` (events its
worker reads at once; docs/writing-plugins.md, "Batches").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapid_objection.bus import (
    HOOK_METHODS,
    HOOK_TYPES,
    AppRollbackCompleted,
    AutoOperationsCompleted,
)

from ._errors import RemoteError

if TYPE_CHECKING:
    from ._connection import Connection
    from ._view import RegistryView


class PluginInterface:
    """Base class of plugins: identity, lifecycle and the lifecycle hooks."""

    def __init__(self, name: str, version: str = "0.0.0") -> None:
        self.name = name
        self.version = version
        self.config: dict[str, Any] = getattr(self, "config", {})
        self.registry: RegistryView | None = None

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        """Called once before the first hook; ``config`` is the plugin's configuration."""
        self.registry = registry
        self.config = {**self.config, **config}

    async def shutdown(self) -> None:
        """Called once after the last hook; release what ``initialize`` took."""

    def get_status(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    # -- app registration -----------------------------------------------------------------

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> Any:
        """Before the connection is made; ``config`` is the app's (redacted) configuration."""

    async def on_connection_created(self, app_name: str, connection: Connection) -> Any:
        """A connection was made or a shared one reused (``connection.reference_count``)."""

    async def on_auto_operations_started(
        self, app_name: str, connection: Connection, config: dict[str, Any]
    ) -> Any:
        """Migrations, seeds and models are about to run.

        Schema version 2 adds ``trigger``, ``action`` and ``options`` to the payload
        (``current_delivery().envelope.payload``): ``trigger`` is ``registration`` for
        a registration's auto-operations, and ``requested`` when an operator asked
        (``app.migrate()``, ``rapid-objection migrate APP up``); ``action`` then says
        which (``migrate``, ``rollback_migrations``, ``seed``, ``rollback_seeds``) and
        ``options`` holds ``steps`` of a rollback and ``requested_by``. A required
        plugin with ``on_failure = "abort"`` that fails this hook vetoes the request:
        nothing runs. A registration's event is still written as version 1 (the same
        bytes), which older workers read; a requested one is version 2, which they
        dead-letter instead of misreading it as a registration."""

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> Any:
        """Migrations, seeds and models ran; ``result.operations`` has one entry each.

        Schema version 2: ``result.trigger`` and ``result.action`` as in
        ``on_auto_operations_started``; a requested operation publishes this event
        whether it succeeded or not (``result.success``), a failure then followed by
        operation_failed naming the file."""

    async def on_app_registered(
        self, app_name: str, connection: Connection, config: dict[str, Any]
    ) -> Any:
        """The app is ready."""

    # -- app unregistration ---------------------------------------------------------------

    async def on_app_unregistration_started(self, app_name: str, options: dict[str, Any]) -> Any:
        """``unregister_app`` began; ``options`` has ``rollback`` and ``force``."""

    async def on_app_rollback_started(
        self, app_name: str, connection: Connection, options: dict[str, Any]
    ) -> Any:
        """Seeds and migrations are about to be rolled back."""

    async def on_app_rollback_completed(self, app_name: str, result: AppRollbackCompleted) -> Any:
        """Rollback ran; ``result.steps`` has one entry per step, in the order run."""

    async def on_connection_shutdown(
        self, app_name: str, connection: Connection, options: dict[str, Any]
    ) -> Any:
        """A connection is closing: ``options`` has shared, last_reference, registry_shutdown."""

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> Any:
        """The app is gone."""

    # -- errors and monitoring ------------------------------------------------------------

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> Any:
        """An operation of the registry failed; ``error.type`` and ``error.message`` say how."""

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        """A health check ran; the returned value joins the app's health, under
        ``health["plugins"][<plugin name>]``."""


def implemented_hooks(plugin: object) -> tuple[str, ...]:
    """The event types whose hook ``plugin`` really implements (overrides or defines)."""
    cls = type(plugin)
    found = []
    for event_type in HOOK_TYPES:
        method = HOOK_METHODS[event_type]
        own = getattr(cls, method, None)
        if callable(own) and own is not getattr(PluginInterface, method):
            found.append(event_type)
    return tuple(found)
