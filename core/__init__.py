"""The registry of rapid-objection: apps, connections, migrations, plugins, CLI."""

from plugin_workers import PluginInterface

__all__ = ["PluginInterface"]
