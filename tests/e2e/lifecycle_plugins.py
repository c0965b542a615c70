"""A plugin for worker processes that logs every hook it handles into a Redis list."""

from __future__ import annotations

from typing import Any

from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery


def order_key(view: RegistryView) -> str:
    return f"{view.bus.keys.prefix}e2e:hook-order"


class HookOrder(PluginInterface):
    """Implements all twelve hooks; each appends ``type:app`` to a list of the namespace."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("hook-order", "1.0.0")

    async def _log(self) -> None:
        view = self.registry
        assert isinstance(view, RegistryView), "initialize() runs before any hook"
        envelope = current_delivery().envelope
        raw = view.bus.redis
        await raw.xadd(order_key(view), {b"e": f"{envelope.type}:{envelope.app}".encode()})

    async def on_app_registration_started(self, app_name: str, config: Any) -> None:
        await self._log()

    async def on_connection_created(self, app_name: str, connection: Any) -> None:
        await self._log()

    async def on_auto_operations_started(self, app_name: str, connection: Any, config: Any) -> None:
        await self._log()

    async def on_auto_operations_completed(self, app_name: str, result: Any) -> None:
        await self._log()

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        await self._log()

    async def on_app_unregistration_started(self, app_name: str, options: Any) -> None:
        await self._log()

    async def on_app_rollback_started(self, app_name: str, connection: Any, options: Any) -> None:
        await self._log()

    async def on_app_rollback_completed(self, app_name: str, result: Any) -> None:
        await self._log()

    async def on_connection_shutdown(self, app_name: str, connection: Any, options: Any) -> None:
        await self._log()

    async def on_app_unregistered(self, app_name: str, options: Any) -> None:
        await self._log()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: Any, context: Any
    ) -> None:
        await self._log()

    async def on_health_check(self, app_name: str, health_status: Any) -> dict[str, str]:
        await self._log()
        return {"seen_by": "hook-order"}
