"""rapid-objection: a registry of SQLAlchemy apps whose lifecycle travels on Redis Streams.

One import name, three parts: ``rapid_objection.core`` (the registry),
``rapid_objection.bus`` (the wire contract and transport) and
``rapid_objection.plugin_workers`` (the plugin SDK and worker runtime). The names
below are imported on first use (PEP 562), so ``from rapid_objection import
PluginInterface`` in a worker never loads the registry or SQLAlchemy.
"""

from __future__ import annotations

import typing as _typing
from importlib import import_module as _import_module

from ._errors import Error, MissingExtra

if _typing.TYPE_CHECKING:
    from .bus import BusError
    from .core import (
        AppConfig,
        AppRegistry,
        PluginConfig,
        PluginManager,
        PluginVeto,
        RegistryConfig,
        RegistryError,
    )
    from .plugin_workers import PluginError, PluginInterface

_LAZY: _typing.Final = {
    "AppConfig": ".core",
    "AppRegistry": ".core",
    "BusError": ".bus",
    "PluginConfig": ".core",
    "PluginError": ".plugin_workers",
    "PluginInterface": ".plugin_workers",
    "PluginManager": ".core",
    "PluginVeto": ".core",
    "RegistryConfig": ".core",
    "RegistryError": ".core",
}

__all__ = [
    "AppConfig",
    "AppRegistry",
    "BusError",
    "Error",
    "MissingExtra",
    "PluginConfig",
    "PluginError",
    "PluginInterface",
    "PluginManager",
    "PluginVeto",
    "RegistryConfig",
    "RegistryError",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rapid_objection' has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), name)
    globals()[name] = value
    return value
