"""The dependency direction (docs/architecture.md, "The parts"), from every module's
imports (``ast``); and the files a docstring, comment or page names exist.

``plugin_workers`` (all of it: the SDK, the runtime, the bundled plugins and the
examples) never imports the registry (``rapid_objection.core``); the bus imports neither
the registry nor ``plugin_workers``. Imports inside functions and under
``TYPE_CHECKING`` count as much as those at the top: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "bus", "plugin_workers", "src")
FORBIDDEN = {
    "plugin_workers": {"rapid_objection.core"},
    "bus": {"rapid_objection.core", "rapid_objection.plugin_workers"},
}
"""Package -> the packages none of its modules may import."""


def module_name(path: Path) -> str:
    """``bus/_redis.py`` -> ``rapid_objection.bus._redis``."""
    relative = path.relative_to(REPOSITORY)
    if relative.parts[0] == "src":
        relative = relative.relative_to("src")
    else:
        relative = Path("rapid_objection", *relative.parts)
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, name: str, *, is_package: bool = False) -> set[str]:
    """Every module that module ``name`` (of text ``source``) imports, anywhere in it, as
    absolute names."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # ``from rapid_objection import core`` imports the subpackage itself.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((REPOSITORY / package).rglob("*.py"))


def breaks(package: str) -> dict[str, list[str]]:
    """Module -> what it imports that ``package`` may not, for every module of it."""
    found = {}
    for path in modules_of(package):
        bad = sorted(
            name
            for name in imported(
                path.read_text(), module_name(path), is_package=path.name == "__init__.py"
            )
            for forbidden in FORBIDDEN[package]
            if name == forbidden or name.startswith(forbidden + ".")
        )
        if bad:
            found[module_name(path)] = bad
    return found


class TestLayering:
    @pytest.mark.parametrize("package", sorted(FORBIDDEN))
    def test_package_keeps_its_direction(self, package: str) -> None:
        """No module of the package imports what the layering forbids it, not even lazily."""
        assert breaks(package) == {}

    @pytest.mark.parametrize("package", sorted(FORBIDDEN))
    def test_every_module_is_read(self, package: str) -> None:
        """The check covers the package's modules, bundled plugins and examples included."""
        names = {module_name(path) for path in modules_of(package)}
        assert f"rapid_objection.{package}" in names
        if package == "plugin_workers":
            assert {
                "rapid_objection.plugin_workers.plugins.audit",
                "rapid_objection.plugin_workers.examples.backup",
                "rapid_objection.plugin_workers.testing",
            } <= names

    @pytest.mark.parametrize(
        ("source", "module", "expected"),
        [
            pytest.param(
                "from ..core import AppRegistry\n",
                "rapid_objection.plugin_workers._x",
                "rapid_objection.core",
                id="relative",
            ),
            pytest.param(
                "def f():\n    from rapid_objection.core._config import convert\n",
                "rapid_objection.plugin_workers.plugins._x",
                "rapid_objection.core._config",
                id="function-level",
            ),
            pytest.param(
                "from rapid_objection import core\n",
                "rapid_objection.bus._x",
                "rapid_objection.core",
                id="subpackage-by-name",
            ),
            pytest.param(
                "if TYPE_CHECKING:\n    import rapid_objection.plugin_workers\n",
                "rapid_objection.bus._x",
                "rapid_objection.plugin_workers",
                id="type-checking",
            ),
        ],
    )
    def test_every_form_of_import_is_seen(self, source: str, module: str, expected: str) -> None:
        """Relative, function-level, by-name and TYPE_CHECKING imports are all found."""
        assert expected in imported(source, module)


CONSTANTS_PER_MODULE = {"T", "S", "LAZY", "KIND", "LOCK_PURPOSE", "ROOT", "PREFIX", "VERSION"}
"""Module-level names that mean something of their own in each module that has one (a
TypeVar, a lazy-import table, a plugin's version)."""


def module_constants() -> dict[str, list[str]]:
    """UPPER_CASE module-level name (leading underscore dropped) -> the modules defining it."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in modules_of(package):
            for node in ast.parse(path.read_text()).body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign) and node.value is not None
                    else []
                )
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                        found.setdefault(target.id.lstrip("_"), []).append(module_name(path))
    return found


class TestOneDefinition:
    def test_each_constant_is_defined_once(self) -> None:
        """A constant lives in one module; the others import it."""
        twice = {
            name: modules
            for name, modules in module_constants().items()
            if len(modules) > 1 and name not in CONSTANTS_PER_MODULE
        }
        assert twice == {}


REFERENCE = re.compile(
    r"(?<![\w/.-])((?:core|bus|plugin_workers|src|tests|docs|docker|bench)/[\w./-]*\w)"
)
"""A path into the repository, as a docstring or comment names one (``bus/_retry.py``)."""
OUTSIDE = re.compile(r"\b(DESIGN|STYLE|REDIS-NOTES|PLUGIN_SYSTEM)\b")
"""The design notes the project was started from: they are not in the repository."""


def tracked_text_files() -> list[Path]:
    suffixes = {".py", ".md", ".toml", ".yaml", ".cfg"}
    found = [REPOSITORY / name for name in ("README.md", "pyproject.toml", "Makefile")]
    for folder in (*PACKAGES, "tests", "docs", "docker", "bench"):
        found.extend(
            path
            for path in (REPOSITORY / folder).rglob("*")
            if path.suffix in suffixes and "__pycache__" not in path.parts
        )
    return sorted(found)


class TestReferences:
    def test_named_paths_exist(self) -> None:
        """Every repository path a module, test or page names is in the repository."""
        missing = {
            f"{path.relative_to(REPOSITORY)}: {reference}"
            for path in tracked_text_files()
            for reference in REFERENCE.findall(path.read_text())
            if not (REPOSITORY / reference.rstrip(".")).exists()
        }
        assert missing == set()

    def test_no_reference_to_notes_outside_the_repository(self) -> None:
        """Nothing points a reader at the design notes, which are not in the repository."""
        found = {
            f"{path.relative_to(REPOSITORY)}: {match}"
            for path in tracked_text_files()
            if path != Path(__file__)
            for match in OUTSIDE.findall(path.read_text())
        }
        assert found == set()
