"""A plugin that records the auto-operations it sees, and vetoes the actions it is told to.

Used inline by the requested-migration tests, and by ``rapid-objection run`` in a
subprocess (``module = "tests.core.change_plugins:ChangeRecorder"``): each hook appends
one JSON line to ``config["journal"]`` when that is set, so a test reads what the
registry process published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rapid_objection.bus import AutoOperationsCompleted, AutoOperationsStarted
from rapid_objection.plugin_workers import (
    Connection,
    PermanentError,
    PluginInterface,
    current_delivery,
)


class ChangeRecorder(PluginInterface):
    """Records ``(event, trigger, action, success)``; refuses ``config["veto"]`` actions."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("change-recorder", "1.0.0")
        self.config = dict(config or {})
        self.seen: list[dict[str, Any]] = []

    def _note(self, entry: dict[str, Any]) -> None:
        self.seen.append(entry)
        journal = self.config.get("journal")
        if journal:
            with Path(journal).open("a") as file:
                file.write(json.dumps(entry) + "\n")

    async def on_auto_operations_started(
        self, app_name: str, connection: Connection, config: dict[str, Any]
    ) -> None:
        payload = current_delivery().envelope.payload
        assert isinstance(payload, AutoOperationsStarted)
        entry = {
            "event": "auto_operations_started",
            "app": app_name,
            "trigger": payload.trigger,
            "action": payload.action,
            "options": payload.options,
            "version": current_delivery().envelope.version,
        }
        self._note(entry)
        if payload.action and payload.action in self.config.get("veto", ()):
            raise PermanentError(f"{payload.action} of {app_name} is not allowed now")

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> None:
        self._note(
            {
                "event": "auto_operations_completed",
                "app": app_name,
                "trigger": result.trigger,
                "action": result.action,
                "success": result.success,
                "ran": [item for op in result.operations for item in op.items],
                "version": current_delivery().envelope.version,
            }
        )
