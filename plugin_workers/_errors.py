"""Errors of the plugin SDK: the ``PluginError`` branch of the tree drawn in
``rapid_objection._errors``."""

from __future__ import annotations

from rapid_objection._errors import Error


class PluginError(Error):
    """Root of every error the plugin SDK and worker runtime raise."""


class PluginLoadError(PluginError):
    """A plugin that cannot be imported or built; the message is the seed's text."""

    def __init__(self, target: str, message: str, phase: str = "import") -> None:
        super().__init__(message)
        self.target = target
        self.phase = phase
        """import, build, validate or initialize: where loading stopped."""


class ConsumerTaken(PluginError):  # noqa: N818 - reads as the condition
    """A worker started under a consumer name that a live process already uses: two
    processes under one name would take each other's pending events."""

    def __init__(self, plugin: str, consumer: str, host: str, pid: int) -> None:
        super().__init__(
            f"consumer {consumer!r} of plugin {plugin!r} is already in use by process {pid}"
            f" on {host}: give this worker another --consumer"
        )
        self.plugin = plugin
        self.consumer = consumer
        self.host = host
        self.pid = pid


class EngineUnavailable(PluginError, LookupError):  # noqa: N818 - reads as the condition
    """``await connection.engine()`` with no engine to give: no live engine and no URL."""

    def __init__(self, app: str, message: str) -> None:
        super().__init__(message)
        self.app = app


class RemoteError(PluginError):
    """An error that happened in the registry, as a plugin's ``on_operation_failed`` sees it."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type = type_name
        self.message = message
