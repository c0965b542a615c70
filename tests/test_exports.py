"""Each package has one public face: a sorted, complete ``__all__`` and light imports."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import types

import pytest

PACKAGES = [
    "rapid_objection",
    "rapid_objection.bus",
    "rapid_objection.plugin_workers",
    "rapid_objection.core",
]
CORE, BUS, WORKERS = "rapid_objection.core", "rapid_objection.bus", "rapid_objection.plugin_workers"


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """Ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then the rest, naturally."""
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name) if part
    ]
    return kind, natural


def public_names(module: types.ModuleType) -> set[str]:
    """Module-level names that look public: no underscore, no submodule, no __future__ flag."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # ``from __future__ import annotations``
    }


class TestAll:
    @pytest.mark.parametrize("package", PACKAGES)
    def test_has_all(self, package: str) -> None:
        """Each package declares its public names in ``__all__``, a list of strings."""
        module = importlib.import_module(package)
        exported = getattr(module, "__all__", None)
        assert isinstance(exported, list)
        assert all(isinstance(name, str) for name in exported)
        assert len(set(exported)) == len(exported), "a name is exported twice"

    @pytest.mark.parametrize("package", PACKAGES)
    def test_every_name_is_importable(self, package: str) -> None:
        """``from package import name`` works for every name in ``__all__``."""
        module = importlib.import_module(package)
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == []
        namespace: dict[str, object] = {}
        exec(f"from {package} import *", namespace)  # noqa: S102 - the star import is the test
        assert set(module.__all__) <= set(namespace)

    @pytest.mark.parametrize("package", PACKAGES)
    def test_all_is_sorted(self, package: str) -> None:
        """``__all__`` is in ruff's isort-style order: constants, classes, then functions."""
        exported = importlib.import_module(package).__all__
        assert exported == sorted(exported, key=isort_key)

    @pytest.mark.parametrize("package", PACKAGES)
    def test_no_public_name_is_left_out(self, package: str) -> None:
        """Every public module-level name of the package's ``__init__`` is in ``__all__``."""
        module = importlib.import_module(package)
        assert public_names(module) - set(module.__all__) == set()

    @pytest.mark.parametrize(
        ("names", "expected"),
        [
            pytest.param(
                ["b", "A", "C_D", "a2", "a10", "Ab", "A1"],
                ["A1", "C_D", "A", "Ab", "a2", "a10", "b"],
                id="kinds-then-natural",
            ),
            pytest.param(["X", "XY", "Xy"], ["XY", "X", "Xy"], id="one-letter-is-a-class"),
        ],
    )
    def test_sort_key_agrees_with_ruff(self, names: list[str], expected: list[str]) -> None:
        """The order checked above is the one ``ruff check`` (RUF022) enforces."""
        assert sorted(names, key=isort_key) == expected


def loaded_after(statement: str, watched: list[str]) -> list[str]:
    """The watched packages found in ``sys.modules`` after ``statement``, in a fresh process."""
    probe = (
        f"import json, sys\n{statement}\n"
        f"watched = {watched!r}\n"
        "print(json.dumps(sorted({w for w in watched for name in sys.modules"
        " if name == w or name.startswith(w + '.')})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


class TestImportWeight:
    @pytest.mark.parametrize(
        ("statement", "watched"),
        [
            pytest.param(f"import {WORKERS}", [CORE, "sqlalchemy"], id="plugin_workers"),
            pytest.param(
                "from rapid_objection import PluginInterface", [CORE, "sqlalchemy"], id="sdk"
            ),
            pytest.param(f"import {BUS}", [WORKERS, CORE, "fakeredis"], id="bus"),
            pytest.param(
                f"import {BUS}.testing, {WORKERS}.testing",
                [CORE, "sqlalchemy", "fakeredis"],
                id="testing-helpers",
            ),
            pytest.param(
                f"import {BUS} as bus; bus.Bus.connect('redis://127.0.0.1:6379/0')",
                ["fakeredis"],
                id="bus-on-real-redis",
            ),
        ],
    )
    def test_import_stays_light(self, statement: str, watched: list[str]) -> None:
        """Importing a package, or opening a real-Redis bus, leaves the heavy packages unloaded."""
        assert loaded_after(statement, watched) == []

    def test_embedded_bus_loads_fakeredis(self) -> None:
        """fakeredis is loaded by a ``memory://`` bus, so the check above can see it."""
        statement = f"import {BUS} as bus; bus.Bus.connect('memory://probe')"
        assert loaded_after(statement, ["fakeredis"]) == ["fakeredis"]
