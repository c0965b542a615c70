"""Models: each app's SQLAlchemy declarative classes, in a registry of its own.

``[models] module = "shop.models"`` is imported once per app under a name of the app's
own (``rapid_objection_models.<app>.shop.models``), so each app gets its own classes,
declarative base, registry and metadata: two apps loading one module do not share a
table or a mapper. Relative imports inside the module (``from .base import Base``) are
per-app copies too; absolute imports (``from shop.base import Base``) are the normal,
process-wide modules. So the module defines its declarative base itself or imports it
relatively; a non-shared class on a base every app would share is refused.

Sharing is explicit:

* a class with ``__shared__ = True`` (inherited like any class attribute) is taken from
  the normally imported module, so every app that loads it uses the same class; its
  per-app copy is only the side effect of running the module;
* a class imported absolutely into the module is part of the app's models only when
  marked ``__shared__``;
* ``classes = ["shop.models:User", ...]`` are imported normally and are shared by
  nature: one class per process, whichever apps list it.

A shared class lives in another registry than the app's own classes, so a session does
not order inserts by a foreign key between the two (flush the shared rows first), and a
``relationship()`` from an app's class reaches the app's copy of a shared class, not the
shared class itself.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, registry

from ._config import ModelsConfig
from ._errors import ModelLoadError

ROOT: Final = "rapid_objection_models"
"""The package under which each app's copies of its model modules live."""

_prefix_lock = threading.Lock()
_prefixes: set[str] = set()


class ModelSet(Mapping[str, type[Any]]):
    """One app's models: class name -> declarative class, with their registries."""

    def __init__(
        self,
        app: str,
        classes: Mapping[str, type[Any]],
        *,
        shared: frozenset[str] = frozenset(),
        own: tuple[registry, ...] = (),
        prefix: str | None = None,
    ) -> None:
        self.app = app
        self._classes = dict(classes)
        self.shared = shared
        """Names of the classes this app shares with others (``__shared__`` or ``classes``)."""
        self._own = own
        self._prefix = prefix

    def __getitem__(self, name: str) -> type[Any]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"<ModelSet {self.app!r} {sorted(self._classes)}>"

    @property
    def registries(self) -> list[registry]:
        """The app's own registries first, then those of its shared classes."""
        found: dict[int, registry] = {id(reg): reg for reg in self._own}
        for cls in self._classes.values():
            reg = sa.inspect(cls).registry
            found.setdefault(id(reg), reg)
        return list(found.values())

    @property
    def metadata(self) -> list[sa.MetaData]:
        """The metadata of the app's registries (own first), for ``create_all`` and Alembic."""
        found: dict[int, sa.MetaData] = {}
        for reg in self.registries:
            found.setdefault(id(reg.metadata), reg.metadata)
        return list(found.values())

    def create_all(self, bind: sa.Engine | sa.Connection) -> None:
        """Create the tables of every metadata that are missing."""
        for metadata in self.metadata:
            metadata.create_all(bind)

    def drop_all(self, bind: sa.Engine | sa.Connection) -> None:
        for metadata in reversed(self.metadata):
            metadata.drop_all(bind)

    def clear(self) -> None:
        """Forget the app's models: dispose its own registries and drop its module copies.

        Shared classes and their registries are left alone; other apps use them.
        """
        for reg in reversed(self._own):
            reg.dispose()
        self._own = ()
        self._classes.clear()
        if self._prefix is not None:
            _drop_modules(self._prefix)
            self._prefix = None


def load_models(app: str, config: ModelsConfig) -> ModelSet:
    """The models of ``app`` from ``config.module`` and ``config.classes``."""
    if not config.enabled or (config.module is None and not config.classes):
        return ModelSet(app, {})
    classes: dict[str, type[Any]] = {}
    shared: set[str] = set()
    own: tuple[registry, ...] = ()
    prefix: str | None = None
    try:
        if config.module is not None:
            prefix = _reserve(app)
            own = _load_module(app, config.module, prefix, classes, shared)
        for source in config.classes:
            cls = _import_class(app, source)
            _add(app, source, classes, cls)
            shared.add(cls.__name__)
    except BaseException:
        for reg in reversed(own):
            reg.dispose()
        if prefix is not None:
            _drop_modules(prefix)
        raise
    return ModelSet(app, classes, shared=frozenset(shared), own=own, prefix=prefix)


# --- the module, per app -----------------------------------------------------------------


def _reserve(app: str) -> str:
    """A module prefix of the app's own, unique in the process.

    Two registries in one process may each have an app of that name.
    """
    safe = re.sub(r"\W", "_", app)
    base = f"{ROOT}.{safe}"
    with _prefix_lock:
        prefix, n = base, 1
        while prefix in _prefixes or prefix in sys.modules:
            n += 1
            prefix = f"{base}__{n}"
        _prefixes.add(prefix)
        return prefix


def _drop_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(f"{prefix}.")]:
        del sys.modules[name]
    with _prefix_lock:
        _prefixes.discard(prefix)


def _package(name: str, path: list[str]) -> None:
    """Put an empty package ``name`` searching ``path`` in sys.modules."""
    package = types.ModuleType(name)
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = list(path)
    package.__spec__ = spec
    package.__path__ = list(path)
    package.__package__ = name
    sys.modules[name] = package


def _fail(app: str, source: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(app, source, f"{type(exc).__name__}: {exc}")


def _import_copy(app: str, module: str, prefix: str) -> types.ModuleType:
    """Import ``module`` afresh as ``<prefix>.<module>``; its parent packages are mirrored
    under the prefix with their real search paths, so relative imports are copies too."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception as exc:  # a parent package that fails to import: any error
        raise _fail(app, module, exc) from exc
    if spec is None:
        raise ModelLoadError(app, module, "no such module")
    if not spec.has_location or spec.origin is None:
        raise ModelLoadError(app, module, "not a module loaded from a file")
    parent, _, _ = module.rpartition(".")
    if parent:
        _package(prefix, [])
        parts = parent.split(".")
        for depth in range(1, len(parts) + 1):
            real = sys.modules[".".join(parts[:depth])]
            _package(f"{prefix}.{real.__name__}", list(getattr(real, "__path__", [])))
    else:
        origin = Path(spec.origin)
        location = origin.parent.parent if spec.submodule_search_locations else origin.parent
        _package(prefix, [str(location)])
    try:
        return importlib.import_module(f"{prefix}.{module}")
    except Exception as exc:  # the models module's own code: any error it raises
        raise _fail(app, module, exc) from exc


def _is_mapped(value: Any) -> bool:
    return isinstance(value, type) and isinstance(sa.inspect(value, raiseerr=False), Mapper)


def _base_of(cls: type[Any]) -> type[Any] | None:
    """The declarative base of a mapped class: the unmapped class that holds its registry."""
    for klass in cls.__mro__:
        if "registry" in vars(klass) and "__mapper__" not in vars(klass):
            return klass
    return None


def _is_per_app(reg: registry, cls: type[Any], prefix: str) -> bool:
    """Whether ``reg`` (the registry of per-app class ``cls``) was made by the app's copy."""
    base = _base_of(cls)
    if base is not None and not base.__module__.startswith("sqlalchemy."):
        return base.__module__.startswith(f"{prefix}.")
    # registry.mapped or a generated base: the registry object is one of a copy's globals
    return any(
        value is reg
        for name, loaded in list(sys.modules.items())
        if name.startswith(f"{prefix}.")
        for value in vars(loaded).values()
    )


def _load_module(
    app: str, module: str, prefix: str, classes: dict[str, type[Any]], shared: set[str]
) -> tuple[registry, ...]:
    """Fill ``classes`` from the app's copy of ``module``; the app's own registries."""
    copy = _import_copy(app, module, prefix)
    own: dict[int, registry] = {}
    for value in list(vars(copy).values()):
        if not _is_mapped(value):
            continue
        cls: type[Any] = value
        is_copy = cls.__module__.startswith(f"{prefix}.")
        marked = getattr(cls, "__shared__", False) is True
        if not is_copy and not marked:
            continue  # imported for use in the module, not one of the app's models
        if is_copy:
            reg = sa.inspect(cls).registry
            if _is_per_app(reg, cls, prefix):
                own.setdefault(id(reg), reg)
            elif not marked:
                base = _base_of(cls)
                where = f"{base.__module__}.{base.__qualname__}" if base else "its registry"
                raise ModelLoadError(
                    app,
                    module,
                    f"class {cls.__name__} is mapped by {where}, which every app would share;"
                    " define the declarative base in the models module (or import it"
                    " relatively), or mark the class __shared__ = True",
                )
        if marked:
            if is_copy:
                cls = _shared_original(app, module, prefix, cls)
            shared.add(cls.__name__)
        _add(app, module, classes, cls)
    regs = tuple(own.values())
    for reg in regs:
        try:
            reg.configure()
        except Exception as exc:  # a broken relationship: SQLAlchemy raises several types
            raise _fail(app, module, exc) from exc
    return regs


def _shared_original(app: str, source: str, prefix: str, copy: type[Any]) -> type[Any]:
    """The normally imported class a per-app copy of a ``__shared__`` class stands for."""
    real_module = copy.__module__[len(prefix) + 1 :]
    try:
        found: Any = importlib.import_module(real_module)
        for part in copy.__qualname__.split("."):
            found = getattr(found, part)
    except Exception as exc:  # the normal import of the module: any error it raises
        raise _fail(app, source, exc) from exc
    if not _is_mapped(found):
        raise ModelLoadError(app, source, f"{real_module}.{copy.__qualname__} is not mapped")
    original: type[Any] = found
    return original


def _import_class(app: str, source: str) -> type[Any]:
    """A ``package.module:Class`` of ``models.classes``, imported normally."""
    module, colon, qualname = source.partition(":")
    if not colon or not module or not qualname:
        raise ModelLoadError(app, source, "expected 'package.module:Class'")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as exc:  # the module's own code: any error it raises
        raise _fail(app, source, exc) from exc
    if not _is_mapped(found):
        raise ModelLoadError(app, source, "not a mapped (declarative) class")
    cls: type[Any] = found
    return cls


def _add(app: str, source: str, classes: dict[str, type[Any]], cls: type[Any]) -> None:
    name = cls.__name__
    if name in classes and classes[name] is not cls:
        raise ModelLoadError(app, source, f"two model classes are named {name!r}")
    classes[name] = cls
