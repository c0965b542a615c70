"""The root of every error rapid-objection raises on purpose, and the tree below it.

    Error                          rapid_objection.Error
    ├── MissingExtra               an optional dependency that is not installed
    │                              (.extra, .package; also an ImportError)
    ├── RegistryError              rapid_objection.core: the registry (.app when about one)
    │   ├── ConfigError            a configuration key, type or file that is wrong
    │   │                          (.path, .file; also a ValueError)
    │   ├── AppAlreadyRegistered   a name that is taken (.app, .owner)
    │   ├── AppNotRegistered       a name that is not registered (.app)
    │   ├── AppNotOwned            an app whose ownership lease this registry lost to
    │   │                          another registry (.app, .registry, .owner)
    │   ├── ConnectionFailed       a database URL that cannot be used or reached (.app, .url)
    │   ├── MigrationFailed        a migration that failed, or its lock (.app, .migration)
    │   ├── SeedFailed             a seed that failed (.app, .seed)
    │   ├── ModelLoadError         models that cannot be imported (.app, .source)
    │   ├── PluginVeto             a required plugin with on_failure="abort" failed a step
    │   │                          (.app, .event, .plugin, .consumer)
    │   └── ReplayError            a replay request that cannot be served (.plugin)
    ├── BusError                   rapid_objection.bus: the transport
    │   ├── BusUrlError            an unsupported or malformed bus URL (.url; a ValueError)
    │   ├── NamespaceError         a namespace that cannot be a key part (.namespace)
    │   ├── BusUnavailable         the Redis server cannot be reached, or refuses for a
    │   │                          while (.url, .reason; also a ConnectionError)
    │   ├── BusRefused             the server refuses our credentials or a command (ACL)
    │   │                          (.url, .command, .reason; also a PermissionError)
    │   ├── GroupMissing           a consumer group that does not exist (.stream, .group)
    │   ├── RegistryIdTaken        a registry id a live registry of another host or pid
    │   │                          holds (.registry, .holder)
    │   ├── RedriveError           a dead letter that cannot be redriven (.letter_id)
    │   └── KeyringError           a keyring file that cannot be read or lacks a key
    │                              (also a ValueError)
    └── PluginError                rapid_objection.plugin_workers: the plugin SDK
        ├── PluginLoadError        a plugin that cannot be imported, built, validated or
        │                          initialized (.target: module:Class, entry point or
        │                          name; .phase)
        ├── ConsumerTaken          a worker's consumer name that a live process uses
        │                          (.plugin, .consumer, .host, .pid)
        ├── EngineUnavailable      a hook's ``connection.engine()`` that has no engine to
        │                          give (.app; also a LookupError)
        └── RemoteError            an error of the registry as a plugin's
                                   ``on_operation_failed`` receives it (.type, .message)

``except rapid_objection.Error`` catches all of them. Each error carries what it is
about as attributes, not only in its message, and no message carries a password. Where
a standard exception says the same (a bad value, a lost connection, a missing module),
the error is that exception too, so ``except ValueError`` keeps working.

Not errors, and so not under the root: the control-flow signals a hook raises to ask
the bus for something (``RetryLater``, ``PermanentError``). An argument that breaks a
function's own contract (a negative count, a worker consumer name holding ``|``) is a
``ValueError`` of the caller's making, as in the standard library.
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error rapid-objection raises on purpose."""


class MissingExtra(Error, ImportError):  # noqa: N818 - reads as the condition
    """An optional dependency that is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, *, needed_for: str) -> None:
        self.package = package
        self.extra = extra
        self.needed_for = needed_for
        super().__init__(
            f"{needed_for} needs the {package!r} package, which is not installed: "
            f"pip install 'rapid-objection[{extra}]'",
            name=package,
        )
