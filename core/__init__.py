"""The registry of rapid-objection: apps, connections, migrations, plugins, CLI.

Names are imported on first use (PEP 562), so that ``rapid-objection worker``, which
enters through ``core``'s CLI, never loads SQLAlchemy.
"""

from __future__ import annotations

import typing as _typing
from importlib import import_module as _import_module

from rapid_objection.plugin_workers import PluginInterface

if _typing.TYPE_CHECKING:
    from ._config import AppConfig, PluginConfig, RegistryConfig
    from ._connections import ConnectionManager
    from ._errors import (
        AppAlreadyRegistered,
        AppNotOwned,
        AppNotRegistered,
        ConfigError,
        ConnectionFailed,
        MigrationFailed,
        ModelLoadError,
        PluginVeto,
        RegistryError,
        SeedFailed,
    )
    from ._plugins import PluginManager
    from ._registry import AppRegistry
    from ._results import (
        ChangeResult,
        FileState,
        InitializeResult,
        MigrationStatus,
        ShutdownResult,
        UnregisterResult,
    )

_LAZY = {
    "AppAlreadyRegistered": "._errors",
    "AppConfig": "._config",
    "AppNotOwned": "._errors",
    "AppNotRegistered": "._errors",
    "AppRegistry": "._registry",
    "ChangeResult": "._results",
    "ConfigError": "._errors",
    "ConnectionFailed": "._errors",
    "ConnectionManager": "._connections",
    "FileState": "._results",
    "InitializeResult": "._results",
    "MigrationFailed": "._errors",
    "MigrationStatus": "._results",
    "ModelLoadError": "._errors",
    "PluginConfig": "._config",
    "PluginManager": "._plugins",
    "PluginVeto": "._errors",
    "RegistryConfig": "._config",
    "RegistryError": "._errors",
    "SeedFailed": "._errors",
    "ShutdownResult": "._results",
    "UnregisterResult": "._results",
}

__all__ = [
    "AppAlreadyRegistered",
    "AppConfig",
    "AppNotOwned",
    "AppNotRegistered",
    "AppRegistry",
    "ChangeResult",
    "ConfigError",
    "ConnectionFailed",
    "ConnectionManager",
    "FileState",
    "InitializeResult",
    "MigrationFailed",
    "MigrationStatus",
    "ModelLoadError",
    "PluginConfig",
    "PluginInterface",
    "PluginManager",
    "PluginVeto",
    "RegistryConfig",
    "RegistryError",
    "SeedFailed",
    "ShutdownResult",
    "UnregisterResult",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), name)
    globals()[name] = value
    return value
