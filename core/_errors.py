"""Errors of the registry: the ``RegistryError`` branch of the tree drawn in
``rapid_objection._errors``.

No message carries a password (URLs are masked).
"""

from __future__ import annotations

from rapid_objection._errors import Error
from rapid_objection.bus import mask_url


class RegistryError(Error):
    """Root of every error the registry raises."""

    app: str | None = None


class ConfigError(RegistryError, ValueError):
    """A configuration that cannot be used; ``path`` is the dotted key (``database.url``)."""

    def __init__(self, message: str, *, path: str = "", file: str | None = None) -> None:
        self.path = path
        self.file = file
        self.reason = message
        where = f" in {file}" if file else ""
        at = f" at {path}" if path else ""
        super().__init__(f"invalid configuration{where}{at}: {message}")


class AppAlreadyRegistered(RegistryError):  # noqa: N818 - reads as the condition
    def __init__(self, app: str, owner: str | None = None) -> None:
        self.app = app
        self.owner = owner
        """The other live registry of the bus that holds the app, if it is another."""
        by = f" by registry {owner!r}" if owner else ""
        super().__init__(f"app {app!r} is already registered{by}")


class AppNotRegistered(RegistryError):  # noqa: N818 - reads as the condition
    def __init__(self, app: str) -> None:
        self.app = app
        super().__init__(f"app {app!r} is not registered")


class AppNotOwned(RegistryError):  # noqa: N818 - reads as the condition
    """This registry lost app ``app`` to another owner (its lease ran out: the process
    was paused or cut off for longer than ``ownership_ttl``); it no longer serves it and
    touches neither its database nor its events."""

    app: str

    def __init__(self, app: str, registry: str, owner: str | None = None) -> None:
        self.app = app
        self.registry = registry
        self.owner = owner
        """The registry that holds the app now, when one does."""
        now = f"registry {owner!r} owns it now" if owner else "another registry took it over"
        super().__init__(
            f"registry {registry!r} no longer owns app {app!r}: its ownership lease ran "
            f"out and {now}; nothing of the app was changed"
        )


class ConnectionFailed(RegistryError):  # noqa: N818 - reads as the condition
    def __init__(self, app: str, url: str, reason: str) -> None:
        self.app = app
        self.url = mask_url(url)
        self.reason = mask_url(reason)
        super().__init__(f"app {app!r} cannot connect to {self.url}: {self.reason}")


class MigrationFailed(RegistryError):  # noqa: N818 - reads as the condition
    def __init__(self, app: str, migration: str, reason: str) -> None:
        self.app = app
        self.migration = migration
        self.reason = mask_url(reason)
        super().__init__(f"migration {migration!r} of app {app!r} failed: {self.reason}")


class SeedFailed(RegistryError):  # noqa: N818 - reads as the condition
    def __init__(self, app: str, seed: str, reason: str) -> None:
        self.app = app
        self.seed = seed
        self.reason = mask_url(reason)
        super().__init__(f"seed {seed!r} of app {app!r} failed: {self.reason}")


class ModelLoadError(RegistryError):
    def __init__(self, app: str, source: str, reason: str) -> None:
        self.app = app
        self.source = source
        self.reason = reason
        super().__init__(f"models of app {app!r} from {source!r} cannot be loaded: {reason}")


class PluginVeto(RegistryError):  # noqa: N818 - reads as the condition
    """A required plugin with ``on_failure = "abort"`` failed or timed out on a step."""

    def __init__(
        self, app: str, event: str, plugin: str, consumer: str | None, reason: str
    ) -> None:
        self.app = app
        self.event = event
        self.plugin = plugin
        self.consumer = consumer
        self.reason = reason
        held = f" (consumer {consumer!r})" if consumer else " (no consumer)"
        super().__init__(f"plugin {plugin!r}{held} stopped {event} of app {app!r}: {reason}")


class ReplayError(RegistryError, ValueError):
    """A replay that cannot be done: an unreadable time, or a plugin nobody would serve."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
