"""The plugin SDK and worker runtime of rapid-objection.

Importing it never imports ``core`` or SQLAlchemy, so that a worker process stays light.
"""

from rapid_objection.bus import PermanentError, RetryLater

from ._connection import Connection, credentials_variable
from ._dispatch import Dispatcher, current_delivery, hook_arguments
from ._errors import (
    ConsumerTaken,
    EngineUnavailable,
    PluginError,
    PluginLoadError,
    RemoteError,
)
from ._interface import PluginInterface, implemented_hooks
from ._loader import ENTRY_POINT_GROUP, build_plugin, load_plugin_class
from ._once import run_once
from ._settings import WorkerSettings
from ._view import RegistryView
from ._worker import Worker

__all__ = [
    "ENTRY_POINT_GROUP",
    "Connection",
    "ConsumerTaken",
    "Dispatcher",
    "EngineUnavailable",
    "PermanentError",
    "PluginError",
    "PluginInterface",
    "PluginLoadError",
    "RegistryView",
    "RemoteError",
    "RetryLater",
    "Worker",
    "WorkerSettings",
    "build_plugin",
    "credentials_variable",
    "current_delivery",
    "hook_arguments",
    "implemented_hooks",
    "load_plugin_class",
    "run_once",
]
