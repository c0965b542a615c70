"""The built wheel: one top-level import name, and it works without the repository.

The wheel is built from this checkout (``pip wheel --no-deps``) and installed with
``pip install --target`` into a folder of its own. Probes run there with ``python -S -P``
in an empty folder: no ``site`` (so the dev venv's editable-install ``.pth`` does not
apply), no current folder on the path; the dependencies come from the dev venv's
site-packages, after the installed wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
PRODUCT_FOLDERS = ("core", "bus", "plugin_workers")
DIST_INFO = "rapid_objection-0.1.0.dist-info"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once for the module."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), "."],
        cwd=REPOSITORY,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = folder.glob("rapid_objection-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the wheel installed, and nothing else."""
    target = tmp_path_factory.mktemp("installed")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
    subprocess.run(
        [*command, str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def probe(installed: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where only the installed wheel (and the dependencies) can be imported."""
    dependencies = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [sys.executable, "-S", "-P", "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{installed}:{dependencies}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


class TestWheel:
    def test_one_top_level_name(self, wheel: Path) -> None:
        """The wheel installs one import name, ``rapid_objection``, beside its metadata."""
        names = zipfile.ZipFile(wheel).namelist()
        assert {name.split("/")[0] for name in names} == {"rapid_objection", DIST_INFO}

    def test_every_module_is_shipped(self, wheel: Path) -> None:
        """Each module of ``core/``, ``bus/`` and ``plugin_workers/`` is in the wheel, under
        ``rapid_objection/``, with the ``py.typed`` marker; no compiled file comes along."""
        names = set(zipfile.ZipFile(wheel).namelist())
        expected = {
            f"rapid_objection/{path.relative_to(REPOSITORY).as_posix()}"
            for folder in PRODUCT_FOLDERS
            for path in (REPOSITORY / folder).rglob("*.py")
        }
        assert expected - names == set()
        assert "rapid_objection/py.typed" in names
        assert [name for name in names if name.endswith(".pyc")] == []

    def test_the_dashboard_page_is_shipped(self, wheel: Path) -> None:
        """The dashboard's static files (its whole page: no build step) are in the wheel."""
        names = set(zipfile.ZipFile(wheel).namelist())
        static = REPOSITORY / "core" / "_dashboard" / "static"
        files = {f"rapid_objection/core/_dashboard/static/{path.name}" for path in static.iterdir()}
        assert {name.rpartition("/")[2] for name in files} >= {"index.html", "app.js"}
        assert files - names == set()

    def test_entry_points(self, wheel: Path) -> None:
        """The metadata names the console script and the bundled plugins by the one name."""
        text = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/entry_points.txt").decode()
        assert "rapid-objection = rapid_objection.core._cli:main" in text
        assert "audit = rapid_objection.plugin_workers.plugins.audit:AuditPlugin" in text


class TestInstalled:
    @pytest.mark.parametrize("name", ["core", "bus", "plugin_workers"])
    def test_folder_names_are_not_importable(
        self, installed: Path, tmp_path: Path, name: str
    ) -> None:
        """``import core`` (or bus, plugin_workers) fails: no top-level name to shadow an
        application's own."""
        done = probe(installed, f"import {name}", tmp_path)
        assert done.returncode == 1
        assert f"No module named '{name}'" in done.stderr

    def test_public_names_import(self, installed: Path, tmp_path: Path) -> None:
        """``from rapid_objection import AppRegistry, PluginInterface`` works from the
        installed wheel, not from the checkout."""
        code = (
            "import rapid_objection\n"
            "from rapid_objection import AppRegistry, PluginInterface\n"
            "from rapid_objection.plugin_workers import load_plugin_class\n"
            "print(rapid_objection.__file__)\n"
            "print(load_plugin_class('audit').__name__)\n"
        )
        done = probe(installed, code, tmp_path)
        assert done.returncode == 0, done.stderr
        location, audit = done.stdout.split()
        assert Path(location).is_relative_to(installed)
        assert audit == "AuditPlugin"

    def test_plugin_sdk_stays_light(self, installed: Path, tmp_path: Path) -> None:
        """``import rapid_objection.plugin_workers`` loads neither the registry nor SQLAlchemy."""
        code = (
            "import json, sys\n"
            "import rapid_objection.plugin_workers\n"
            "print(json.dumps(sorted({n.split('.')[0] if n.startswith('sqlalchemy') else n\n"
            "    for n in sys.modules if n.startswith(('sqlalchemy', 'rapid_objection.core'))})))"
        )
        done = probe(installed, code, tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []
