"""``rapid-objection keys init | export | rotate``: files of mode 0600, an export holds
one plugin's keys and nothing else, a rotation keeps the old keys until retired."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from rapid_objection.core._cli import main


def keys(*args: str) -> int:
    return main(["keys", *args])


def content(path: Path) -> dict[str, Any]:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    return data


class TestKeys:
    def test_init_export_rotate_retire(self, tmp_path: Path) -> None:
        """init makes a 0600 ring; export holds only the plugin's own secrets and the
        others' public keys; rotate puts a new key first and keeps the old; retire
        leaves only the newest."""
        ring, export = tmp_path / "ring.json", tmp_path / "audit.json"
        assert keys("init", str(ring), "--plugin", "audit", "--plugin", "backup") == 0
        made = content(ring)
        assert (made["kind"], sorted(made["plugins"])) == ("ring", ["audit", "backup"])
        assert keys("export", str(ring), "--plugin", "audit", "--out", str(export)) == 0
        exported = content(export)
        assert exported["registry"] == []
        assert set(exported["plugins"]["audit"][0]) == {"id", "secret", "signing", "public"}
        assert [set(key) for key in exported["plugins"]["backup"]] == [{"id", "public"}]
        assert keys("rotate", str(ring)) == 0
        rotated = content(ring)
        assert len(rotated["registry"]) == 2
        assert rotated["registry"][1] == made["registry"][0]
        assert keys("rotate", str(ring), "--retire") == 0
        retired = content(ring)
        assert retired["registry"] == rotated["registry"][:1]
        assert [len(v) for v in retired["plugins"].values()] == [1, 1]

    def test_init_adds_new_plugins_to_an_existing_ring(self, tmp_path: Path) -> None:
        """init on an existing ring keeps its keys and adds the plugins it lacks."""
        ring = tmp_path / "ring.json"
        keys("init", str(ring), "--plugin", "audit")
        before = content(ring)
        keys("init", str(ring), "--plugin", "audit", "--plugin", "metrics")
        after = content(ring)
        assert after["registry"] == before["registry"]
        assert after["plugins"]["audit"] == before["plugins"]["audit"]
        assert "metrics" in after["plugins"]

    def test_export_of_an_unknown_plugin_names_the_known_ones(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Exporting a plugin the ring has no keys of fails, naming the ones it has."""
        ring = tmp_path / "ring.json"
        keys("init", str(ring), "--plugin", "audit")
        with pytest.raises(SystemExit) as exit_info:
            keys("export", str(ring), "--plugin", "nope", "--out", str(tmp_path / "x.json"))
        assert exit_info.value.code == 1
        assert "no keys for plugin 'nope' (it has: audit)" in capsys.readouterr().err
        assert not (tmp_path / "x.json").exists()

    def test_an_export_cannot_be_rotated(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Only the whole ring rotates; an export says so."""
        ring, export = tmp_path / "ring.json", tmp_path / "audit.json"
        keys("init", str(ring), "--plugin", "audit")
        keys("export", str(ring), "--plugin", "audit", "--out", str(export))
        with pytest.raises(SystemExit):
            keys("rotate", str(export))
        assert "with an export of plugin 'audit'" in capsys.readouterr().err

    @pytest.mark.parametrize("command", ["init", "export"])
    def test_a_file_in_a_missing_directory_is_one_line_naming_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
    ) -> None:
        """Writing a ring or an export into a directory that does not exist fails with one
        line naming the file and the system's reason, as reading a missing one does."""
        ring, target = tmp_path / "ring.json", tmp_path / "missing" / "out.json"
        keys("init", str(ring), "--plugin", "audit")
        argv = {
            "init": ["init", str(target)],
            "export": ["export", str(ring), "--plugin", "audit", "--out", str(target)],
        }[command]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            keys(*argv)
        assert exit_info.value.code == 1
        expected = f"rapid-objection: cannot write keyring {target}: No such file or directory\n"
        assert capsys.readouterr() == ("", expected)
