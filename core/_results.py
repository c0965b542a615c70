"""What the registry's operations return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
