"""Numbered files of migrations and seeds: ``NNN_name.py`` in one directory.

Files run in order of number (as an integer), then name. Each is loaded with importlib
from its path under a unique module name; nothing is added to ``sys.path``. Names
starting with ``_`` or ``.`` are helpers and skipped; any other ``.py`` file with another
name is a configuration error naming it.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

import sqlalchemy as sa

from ._errors import ConfigError

NUMBERED: Final = re.compile(r"^(?P<number>\d+)_(?P<label>\w+)\.py$")
"""A migration or seed file name: ``001_create_users.py``."""

_SQL_SHOWN: Final = 300
"""Characters of a failed statement shown in an error."""


@dataclass(frozen=True, slots=True)
class Script:
    """One loaded ``NNN_name.py`` file."""

    name: str
    """The file name, as the tracking table records it."""
    number: int
    path: Path
    module: ModuleType

    def function(self, attribute: str) -> Callable[..., object] | None:
        found = getattr(self.module, attribute, None)
        return found if callable(found) else None


def sort_key(name: str) -> tuple[int, str]:
    """Files in order of number, then name; a name without a number goes last."""
    match = NUMBERED.match(name)
    return (int(match["number"]), name) if match else (sys.maxsize, name)


_loads = itertools.count()
"""Numbers the loads: two threads loading one file get two module names."""


def _load(path: Path, kind: str, key: str) -> ModuleType:
    module_name = f"_rapid_objection_{kind}_{next(_loads)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError("cannot be loaded as a Python file", path=key, file=str(path))
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs (dataclasses and the like look their module up), then
    # forgotten: the file is loaded afresh on every discovery.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(
            f"cannot be loaded: {type(exc).__name__}: {exc}", path=key, file=str(path)
        ) from exc
    finally:
        sys.modules.pop(module_name, None)
    return module


def discover(
    directory: str | None,
    *,
    kind: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> list[Script]:
    """The ``NNN_name.py`` files of ``directory``, loaded and checked, in order.

    ``kind`` is the config section (``migrations``, ``seeds``); every error is a
    ``ConfigError`` naming the file and ``<kind>.directory``.
    """
    key = f"{kind}.directory"
    if directory is None:
        return []
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{directory} is not a directory", path=key)
    scripts: list[Script] = []
    for path in root.iterdir():
        if not path.is_file() or path.suffix != ".py" or path.name[:1] in ("_", "."):
            continue
        match = NUMBERED.match(path.name)
        if match is None:
            raise ConfigError(f"{path.name!r} is not named NNN_name.py", path=key, file=str(path))
        module = _load(path, kind, key)
        script = Script(path.name, int(match["number"]), path, module)
        for attribute in required:
            if script.function(attribute) is None:
                raise ConfigError(f"has no callable {attribute}()", path=key, file=str(path))
        for attribute in optional:
            if hasattr(module, attribute) and script.function(attribute) is None:
                raise ConfigError(f"{attribute} is not callable", path=key, file=str(path))
        scripts.append(script)
    scripts.sort(key=lambda script: sort_key(script.name))
    return scripts


def describe(exc: BaseException) -> str:
    """An exception as one line for an error: its type, message and failed statement."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip().splitlines()
        described = f"{type(exc.orig).__name__}: {text[0] if text else ''}"
        if exc.statement:
            statement = " ".join(exc.statement.split())
            described += f" [SQL: {statement[:_SQL_SHOWN]}]"
        return described
    return f"{type(exc).__name__}: {exc}"


_STUBS: Final = '''"""{title}"""

import sqlalchemy as sa  # noqa: F401 - for the columns of op.create_table, op.add_column


def upgrade(op):
    pass


def downgrade(op):
    pass
'''


def new_migration(directory: str | None, name: str) -> Path:
    """Write the next ``NNN_name.py`` of ``directory`` with ``upgrade(op)`` and
    ``downgrade(op)`` stubs: one past the highest number, at least three digits."""
    if directory is None:
        raise ConfigError("no migrations directory is set", path="migrations.directory")
    label = re.sub(r"\W+", "_", name.strip().lower()).strip("_")
    if not label:
        raise ConfigError(f"{name!r} makes no file name", path="migrations.directory")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    found = [NUMBERED.match(path.name) for path in root.glob("*.py")]
    numbers = [match["number"] for match in found if match is not None]
    width = max((len(number) for number in numbers), default=3)
    path = root / f"{max((int(n) for n in numbers), default=0) + 1:0{width}d}_{label}.py"
    with path.open("x") as file:  # never over a file that is there
        file.write(_STUBS.format(title=name.strip().rstrip(".") + "."))
    return path
