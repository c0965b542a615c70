"""The root of every error rapid-objection raises on purpose.

    Error                          rapid_objection.Error
    ├── RegistryError              rapid_objection.core: the registry
    │   ├── ConfigError            a configuration key, type or file that is wrong (.path, .file)
    │   ├── AppAlreadyRegistered   a name that is taken (.app, .owner)
    │   ├── AppNotRegistered       a name that is not registered (.app)
    │   ├── ConnectionFailed       a database URL that cannot be used or reached (.app, .url)
    │   ├── MigrationFailed        a migration that failed, or its lock (.app, .migration)
    │   ├── SeedFailed             a seed that failed (.app, .seed)
    │   ├── ModelLoadError         models that cannot be imported (.app, .source)
    │   ├── MissingExtra           an optional dependency that is not installed (.extra)
    │   ├── PluginVeto             a required plugin with on_failure="abort" failed
    │   │                          (.app, .plugin, .consumer)
    │   └── ReplayError            a replay request that cannot be served
    ├── BusError                   rapid_objection.bus: the transport
    │   ├── BusUrlError            an unsupported or malformed bus URL (.url)
    │   ├── NamespaceError         a namespace that cannot be a key part (.namespace)
    │   ├── BusUnavailable         the Redis server cannot be reached (.url, .reason)
    │   ├── EnvelopeError          bytes that are not a valid envelope (.entry_id)
    │   ├── GroupMissing           a consumer group that does not exist (.stream, .group)
    │   └── RedriveError           a dead letter that cannot be redriven
    └── PluginError                rapid_objection.plugin_workers: the plugin SDK
        ├── PluginLoadError        a plugin that cannot be imported or built (.plugin)
        └── RemoteError            a hook error as another process reported it

``except rapid_objection.Error`` catches all of them. Each error carries what it is
about as attributes, not only in its message, and no message carries a password.

Not errors, and so not under the root: the control-flow signals a hook raises to
ask the bus for something (``RetryLater``, ``PermanentError``).
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error rapid-objection raises on purpose."""
