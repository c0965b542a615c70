"""The seed's plugin examples, in Python: backup, monitoring and plugin communication.

Each runs inline or as a worker process::

    rapid-objection worker rapid_objection.plugin_workers.examples.backup:BackupPlugin \
        --config backup.toml
    rapid-objection worker rapid_objection.plugin_workers.examples.monitoring:MonitoringPlugin
    rapid-objection worker rapid_objection.plugin_workers.examples.communication:PluginB

Nothing is imported until a name is asked for (``from rapid_objection.plugin_workers.examples import
BackupPlugin``), so that a worker of one example never loads the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backup import BackupPlugin
    from .communication import PluginA, PluginB
    from .monitoring import MonitoringPlugin

__all__ = ["BackupPlugin", "MonitoringPlugin", "PluginA", "PluginB"]

_MODULES = {
    "BackupPlugin": "backup",
    "MonitoringPlugin": "monitoring",
    "PluginA": "communication",
    "PluginB": "communication",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
