"""What ``run`` can tell of its file before it starts anything: a plugin table without
a module, an app's database URL that cannot work, migration or seed directories that
are not there. Loading and registering would fail on them too, but only after the bus
was joined (and an app's first events were published, a plugin's group was made);
here they are a configuration error naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._args import UsageError

if TYPE_CHECKING:
    from .._config import AppConfig, RegistryConfig


def check_file(config: RegistryConfig, file: Path) -> None:
    """Raise ``UsageError`` (exit 2) for the first plugin or app whose configuration
    cannot work."""
    from .._connections import build_url
    from .._errors import ConfigError, ConnectionFailed

    for name, plugin in config.plugins.items():
        if plugin.enabled and not plugin.module:
            raise UsageError(
                f"invalid configuration in {file} at plugins.{name}.module: required "
                "(package.module:Class, or the name of an installed plugin)"
            )
    for name, app in config.apps.items():
        try:
            build_url(name, app.database)
        except ConfigError as exc:
            raise UsageError(
                f"invalid configuration in {file} at {exc.path}: {exc.reason}"
            ) from None
        except (ConnectionFailed, ImportError):
            pass  # a driver not installed here: that app's registration reports it
        for key, directory in _directories(app):
            if not Path(directory).is_dir():
                raise UsageError(
                    f"invalid configuration in {file} at apps.{name}.{key}: "
                    f"{directory} is not a directory"
                )


def _directories(app: AppConfig) -> list[tuple[str, str]]:
    """The directories an app's enabled migrations and seeds read, by their key."""
    found: list[tuple[str, str]] = []
    if app.migrations.enabled:
        for key in ("directory", "alembic"):
            directory = getattr(app.migrations, key)
            if directory is not None:
                found.append((f"migrations.{key}", directory))
    if app.seeds.enabled and app.seeds.directory is not None:
        found.append(("seeds.directory", app.seeds.directory))
    return found
