"""Finding a plugin class by ``module:Class`` or by entry-point name, and building it."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from ._errors import PluginLoadError

ENTRY_POINT_GROUP = "rapid_objection.plugins"


def load_plugin_class(target: str) -> type[Any]:
    """Resolve ``package.module:Class`` or an entry-point name of ``rapid_objection.plugins``."""
    if ":" not in target:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == target]
        if not found:
            raise PluginLoadError(
                target,
                f"Failed to import plugin module '{target}': not 'module:Class' and no entry "
                f"point of that name in group '{ENTRY_POINT_GROUP}'",
            )
        target = found[0].value
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginLoadError(
            target, f"Failed to import plugin module '{module_name}': {exc}"
        ) from exc
    plugin_class = getattr(module, attribute, None)
    if not inspect.isclass(plugin_class):
        raise PluginLoadError(
            target,
            f"Failed to import plugin module '{module_name}': it has no class '{attribute}'",
        )
    return plugin_class


REQUIRED_METHODS = ("initialize", "shutdown", "get_status")
"""The seed's plugin interface: a class without one of these is refused."""


def validate_interface(plugin_class: type[Any]) -> None:
    """The seed's interface check, the same for the registry and ``rapid-objection
    worker``: the lifecycle methods must be there."""
    for method in REQUIRED_METHODS:
        if not callable(getattr(plugin_class, method, None)):
            raise PluginLoadError(plugin_class.__name__, f"Plugin must implement {method}() method")


def build_plugin(plugin_class: type[Any], config: dict[str, Any]) -> Any:
    """Instantiate with the seed's constructor-config pattern when the class takes one."""
    parameters = [
        parameter
        for parameter in inspect.signature(plugin_class).parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    try:
        return plugin_class(config) if parameters else plugin_class()
    except Exception as exc:
        raise PluginLoadError(
            f"{plugin_class.__module__}:{plugin_class.__qualname__}",
            f"Plugin '{plugin_class.__qualname__}' failed to build: {type(exc).__name__}: {exc}",
            phase="build",
        ) from exc
