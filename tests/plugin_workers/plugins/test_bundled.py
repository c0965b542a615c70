"""The bundled plugins as a set: entry points, light imports, the contract, their docs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rapid_objection.bus import HOOK_TYPES
from rapid_objection.plugin_workers import (
    ENTRY_POINT_GROUP,
    build_plugin,
    implemented_hooks,
    load_plugin_class,
)
from rapid_objection.plugin_workers.plugins import BUNDLED

DOCS = Path(__file__).parents[3] / "docs" / "plugins.md"
HEAVY = ["sqlalchemy", "prometheus_client"]
CONFIGS = {
    "audit": "rapid_objection.plugin_workers.plugins.audit:AuditConfig",
    "metrics": "rapid_objection.plugin_workers.plugins.metrics:MetricsConfig",
    "backup": "rapid_objection.plugin_workers.plugins.backup:BackupConfig",
}
HOOKS = {
    "audit": set(HOOK_TYPES),
    "metrics": set(HOOK_TYPES),
    "backup": {"app_registered", "app_rollback_started", "app_unregistered", "connection_shutdown"},
}


def loaded_after(statement: str) -> list[str]:
    """Which heavy packages and bundled plugin modules a fresh process has after ``statement``."""
    probe = (
        f"import json, sys\n{statement}\n"
        f"heavy = {{name for name in sys.modules if name.partition('.')[0] in {HEAVY!r}}}\n"
        "prefix = 'rapid_objection.plugin_workers.plugins.'\n"
        "mine = {name for name in sys.modules if name.startswith(prefix)}\n"
        "print(json.dumps(sorted({name.partition('.')[0] for name in heavy} | mine)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def documented_keys(plugin: str) -> dict[str, str]:
    """The ``| key | default | meaning |`` rows of a plugin's section in docs/plugins.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n## {plugin}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (`[^`]*`|\(unset\)) \|", section, re.MULTILINE)
    return dict(rows)


def default_of(field: msgspec.structs.FieldInfo) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return None if field.default is msgspec.NODEFAULT else field.default


def as_documented(default: Any) -> str:
    """A default as docs/plugins.md writes it (TOML spelling)."""
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple | list):
        return "`[]`" if not default else f"`{json.dumps(list(default))}`"
    if isinstance(default, dict):
        return "`{}`" if not default else f"`{json.dumps(default)}`"
    return f"`{default}`"


class TestDiscovery:
    def test_entry_points_match_the_bundled_table(self) -> None:
        """pyproject.toml's entry points are exactly ``BUNDLED``."""
        found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        assert {name: found.get(name) for name in BUNDLED} == BUNDLED

    @pytest.mark.parametrize("name", sorted(BUNDLED))
    def test_loaded_by_entry_point_name(self, name: str) -> None:
        """``module = "<name>"`` loads the class of ``BUNDLED``; its plugin has that name."""
        plugin_class = load_plugin_class(name)
        assert plugin_class is load_plugin_class(BUNDLED[name])
        plugin = build_plugin(plugin_class, {"directory": "x"})
        assert (plugin.name, plugin.version, plugin.config) == (name, "1.0.0", {"directory": "x"})

    @pytest.mark.parametrize("name", sorted(BUNDLED))
    def test_hooks(self, name: str) -> None:
        """Each plugin implements the hooks its documentation promises."""
        plugin = build_plugin(load_plugin_class(name), {})
        assert set(implemented_hooks(plugin)) == HOOKS[name]


class TestImportWeight:
    @pytest.mark.parametrize(
        "statement",
        ["import rapid_objection.plugin_workers", "import rapid_objection.plugin_workers.plugins"],
        ids=["plugin_workers", "plugin_workers.plugins"],
    )
    def test_no_plugin_and_no_heavy_package_is_imported(self, statement: str) -> None:
        """The SDK and the bundled package load neither the plugins nor their libraries."""
        assert loaded_after(statement) == []

    def test_the_probe_sees_a_loaded_plugin(self) -> None:
        """Importing a plugin module loads its libraries, so the check above can see them."""
        loaded = loaded_after("import rapid_objection.plugin_workers.plugins.metrics")
        assert "prometheus_client" in loaded
        assert "rapid_objection.plugin_workers.plugins.metrics" in loaded


class TestDocs:
    @pytest.mark.parametrize("name", sorted(CONFIGS))
    def test_every_config_key_is_documented_with_its_default(self, name: str) -> None:
        """docs/plugins.md lists each key of the plugin's config Struct and its default."""
        config_type = load_plugin_class(CONFIGS[name])
        expected = {
            field.encode_name: as_documented(default_of(field))
            for field in msgspec.structs.fields(config_type)
        }
        assert documented_keys(name) == expected

    def test_the_examples_load(self) -> None:
        """The page's TOML loads as a registry configuration of the three plugins, and its
        Python compiles."""
        from rapid_objection.core._config import load_registry_config

        blocks = re.findall(r"```(toml|python)\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
        assert sorted(language for language, _ in blocks) == ["python", "toml"]
        for language, text in blocks:
            if language == "toml":
                config = load_registry_config(tomllib.loads(text))
                assert {name: plugin.module for name, plugin in config.plugins.items()} == {
                    name: name for name in BUNDLED
                }
            else:
                compile(text, str(DOCS), "exec")
