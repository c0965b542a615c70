"""Configuration: typed msgspec Structs with defaults, from a dict or a TOML file.

Every key has a default, so ``{"database": {"url": "sqlite:///shop.db"}}`` is a whole
app configuration. An unknown key or a wrong type is rejected with its dotted path
(``apps.shop.database.pool_size``) and the file it came from. Timeouts are seconds.
Directories are relative to the configuration file (or to the working directory for a
dict).
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from rapid_objection.bus._constants import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_NAMESPACE,
    DLQ_MAX_AGE,
    DLQ_MAX_LEN,
    DLQ_PAYLOAD_PREFIX,
)
from rapid_objection.bus._dlq_bounds import DeadLetterBounds
from rapid_objection.bus._topology import with_options
from rapid_objection.plugin_workers._settings import WorkerSettings

from ._errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of config sections: keyword-only, unknown keys rejected."""


class DatabaseConfig(_Section):
    """``[database]``: a URL, or its parts; pool settings pass through to SQLAlchemy."""

    url: str | None = None
    dialect: str | None = None
    """With the parts: ``postgresql+psycopg``, ``mysql+pymysql``, ``sqlite``."""
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = None
    query: dict[str, str] = {}
    shared: bool = False
    """True: other apps may reuse this connection (``use_connection``)."""
    pool_size: int | None = None
    max_overflow: int | None = None
    pool_timeout: float | None = None
    pool_recycle: float | None = None
    pool_pre_ping: bool = False
    echo: bool = False
    connect_args: dict[str, Any] = {}


class MigrationsConfig(_Section):
    enabled: bool = True
    directory: str | None = None
    """``NNN_name.py`` files with ``upgrade(op)`` and ``downgrade(op)``."""
    alembic: str | None = None
    """An existing Alembic script directory, used instead of ``directory``."""
    table: str = "ro_migrations"
    lock_timeout: float = 60.0


class SeedsConfig(_Section):
    enabled: bool = True
    directory: str | None = None
    """``NNN_name.py`` files with ``seed(connection)`` and optional ``unseed(connection)``."""
    table: str = "ro_seeds"
    lock_timeout: float = 60.0


class ModelsConfig(_Section):
    enabled: bool = True
    module: str | None = None
    classes: list[str] = []
    """``package.module:Class`` names, instead of (or besides) a module."""


class AppConfig(_Section):
    """One app: its database, migrations, seeds and models."""

    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    migrations: MigrationsConfig = msgspec.field(default_factory=MigrationsConfig)
    seeds: SeedsConfig = msgspec.field(default_factory=SeedsConfig)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    use_connection: str | bool | None = None
    """The app whose shared connection to reuse; True: the newest shared one."""


class RegistrySection(_Section):
    id: str | None = None
    """Unique per live registry; default: host and pid."""
    shutdown_timeout: float = 30.0
    enable_health_monitoring: bool = False
    health_check_interval: float = 30.0
    ownership_ttl: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Seconds an app's ownership lease outlives its last renewal (renewed every third
    of it): a registry paused or cut off longer loses its apps to another registry."""


class BusSection(_Section):
    url: str = "memory://"
    namespace: str = DEFAULT_NAMESPACE
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    cluster: bool | None = None
    """True: a Redis Cluster through any node; False: never; None: ask the server."""
    min_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Replicas every protocol write waits for (WAIT) before it counts."""
    retention_max_age: float | None = None
    retention_max_len: int | None = None
    dlq_max_len: Annotated[int, msgspec.Meta(ge=1)] = DLQ_MAX_LEN
    """Dead letters kept at most; the oldest go first."""
    dlq_max_age: Annotated[float, msgspec.Meta(gt=0)] = DLQ_MAX_AGE
    """Seconds a dead letter is kept."""
    dlq_payload_prefix: Annotated[int, msgspec.Meta(ge=0)] = DLQ_PAYLOAD_PREFIX
    """Bytes kept of an entry that was no envelope at all (with its size and SHA-256)."""

    @property
    def dead_letters(self) -> DeadLetterBounds:
        """The ``dlq_*`` keys, as this registry and the workers it supervises apply them."""
        return DeadLetterBounds(
            max_len=self.dlq_max_len,
            max_age=self.dlq_max_age,
            payload_prefix=self.dlq_payload_prefix,
        )

    keyring: str | None = None
    """The keyring file (``rapid-objection keys init``); default: env
    ``RAPID_OBJECTION_KEYRING``; none: the bus is unauthenticated (docs/security.md)."""

    @property
    def connect_url(self) -> str:
        """The URL with ``cluster`` and ``min_replicas`` in it, as every process of this
        registry (its supervised workers included) connects."""
        return with_options(self.url, cluster=self.cluster, min_replicas=self.min_replicas or None)


class PluginManagerSection(_Section):
    load_timeout: float = 30.0
    """A configured plugin gets twice this for import plus initialize."""
    shutdown_timeout: float = 15.0
    batch_size: int = 3


class PluginConfig(WorkerSettings, kw_only=True, forbid_unknown_fields=True):
    """``[plugins.<name>]``: the registry's policy for a plugin, and its worker settings
    (``timeout``, ``max_deliveries``, ``claim_idle``, ``concurrency``: the fields of
    ``WorkerSettings``, which its workers get as they are)."""

    enabled: bool = True
    module: str | None = None
    """``package.module:Class`` or an entry-point name of ``rapid_objection.plugins``."""
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    required: bool = False
    on_failure: Literal["continue", "abort"] = "continue"
    mode: Literal["inline", "process", "external"] = "inline"
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1


class RegistryConfig(_Section):
    registry: RegistrySection = msgspec.field(default_factory=RegistrySection)
    bus: BusSection = msgspec.field(default_factory=BusSection)
    plugin_manager: PluginManagerSection = msgspec.field(default_factory=PluginManagerSection)
    plugins: dict[str, PluginConfig] = {}
    apps: dict[str, AppConfig] = {}


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`")


def _dotted(error: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """(dotted path, message) from msgspec's "... - at `$.a.b`" text."""
    text = str(error)
    match = _AT.search(text)
    path = match.group("path") if match else ""
    message = text[: match.start()] if match else text
    unknown = _UNKNOWN.match(message)
    if unknown:
        path = f"{path}.{unknown.group('field')}"
        message = "unknown key"
    path = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    return ".".join(part for part in (prefix, path) if part), message


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    expanded: dict[str, Any] = expand_environment(data, file=str(path))
    return expanded


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_environment(value: Any, *, file: str | None = None, path: str = "") -> Any:
    """``value`` with every ``${NAME}`` in its strings replaced by the environment
    variable ``NAME`` (``$$`` for a literal ``$``), so that a configuration file need not
    hold passwords; a variable that is not set is a ``ConfigError`` naming the key."""
    if isinstance(value, str):

        def variable(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            if name not in os.environ:
                raise ConfigError(
                    f"the environment variable {name} is not set", path=path, file=file
                )
            return os.environ[name]

        return _VARIABLE.sub(variable, value) if "$" in value else value
    if isinstance(value, dict):
        return {
            key: expand_environment(item, file=file, path=f"{path}.{key}".lstrip("."))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            expand_environment(item, file=file, path=f"{path}.{index}")
            for index, item in enumerate(value)
        ]
    return value


def convert(data: Any, kind: type[T], *, prefix: str = "", file: str | None = None) -> T:
    """Decode a mapping into a config Struct, or raise ``ConfigError`` naming the key."""
    if isinstance(data, kind):
        return data
    try:
        return msgspec.convert(data, kind, str_keys=True)
    except msgspec.ValidationError as exc:
        path, message = _dotted(exc, prefix)
        if message.startswith("Invalid enum value"):
            choices = _choices(kind, path.removeprefix(prefix).strip(".").split("."))
            if choices:
                message += f" (one of {', '.join(repr(c) for c in choices)})"
        raise ConfigError(message, path=path, file=file) from None


def _choices(kind: Any, keys: list[str]) -> tuple[Any, ...]:
    """The values a ``Literal`` field at ``keys`` of Struct ``kind`` allows (or none)."""
    for key in keys:
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            return ()
        kind = typing.get_type_hints(kind).get(key)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def _resolve_dirs(app: AppConfig, base: Path) -> AppConfig:
    """Make an app's directories absolute, relative to ``base``."""

    def absolute(directory: str | None) -> str | None:
        return None if directory is None else str((base / directory).resolve())

    migrations = msgspec.structs.replace(
        app.migrations,
        directory=absolute(app.migrations.directory),
        alembic=absolute(app.migrations.alembic),
    )
    seeds = msgspec.structs.replace(app.seeds, directory=absolute(app.seeds.directory))
    return msgspec.structs.replace(app, migrations=migrations, seeds=seeds)


def _read_source(source: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str | None, Path]:
    """(data, file name or None, the directory relative paths start from)."""
    if isinstance(source, str | Path):
        path = Path(source)
        return _read_toml(path), str(path), path.resolve().parent
    return dict(source), None, Path.cwd()


APP_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
"""What an app name may be: it becomes part of keys, table rows and file names."""


def check_app_name(name: object, *, file: str | None = None) -> None:
    """Raise ``ConfigError`` for a name that is not an app name; the name is shown as a
    Python literal, so that a newline or another control character is never echoed raw."""
    if not isinstance(name, str) or not APP_NAME.match(name):
        raise ConfigError(
            "an app name is 1-64 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit; got {name!r}",
            path="apps",
            file=file,
        )


def _check_plugin_name(name: str, file: str | None) -> None:
    if not name or not name.isprintable() or any(char.isspace() for char in name):
        raise ConfigError(
            f"a plugin name is printable and without spaces; got {name!r}",
            path="plugins",
            file=file,
        )


def load_registry_config(
    source: RegistryConfig | Mapping[str, Any] | str | Path | None,
) -> RegistryConfig:
    """A registry configuration from a Struct, a dict, or a TOML file path."""
    if source is None:
        return RegistryConfig()
    if isinstance(source, RegistryConfig):
        return source
    data, file, base = _read_source(source)
    # Apps and plugins are decoded one by one, so that an error names the app or the
    # plugin (msgspec would say ``apps[...]``).
    tables: dict[str, dict[str, Any]] = {}
    for section in ("apps", "plugins"):
        table = data.pop(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"expected a table, got {type(table).__name__}", path=section, file=file
            )
        tables[section] = dict(table)
    config = convert(data, RegistryConfig, file=file)
    # Checked before anything prints them: ``run`` says "app <name>: registering".
    for name in tables["apps"]:
        check_app_name(name, file=file)
    for name in tables["plugins"]:
        _check_plugin_name(name, file)
    apps = {
        name: _resolve_dirs(convert(app, AppConfig, prefix=f"apps.{name}", file=file), base)
        for name, app in tables["apps"].items()
    }
    plugins = {
        name: convert(plugin, PluginConfig, prefix=f"plugins.{name}", file=file)
        for name, plugin in tables["plugins"].items()
    }
    return msgspec.structs.replace(config, apps=apps, plugins=plugins)


def load_app_config(
    app: str, source: AppConfig | Mapping[str, Any] | str | Path | None
) -> AppConfig:
    """An app configuration from a Struct, a dict, or a TOML file path."""
    if source is None:
        return AppConfig()
    if isinstance(source, AppConfig):
        return source
    data, file, base = _read_source(source)
    return _resolve_dirs(convert(data, AppConfig, prefix=f"apps.{app}", file=file), base)


def to_dict(config: msgspec.Struct) -> dict[str, Any]:
    """A config Struct as plain data (for events; redacted by the bus before publishing)."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    return data
