"""``${NAME}`` in a configuration file is taken from the environment, so that the file
need not hold passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapid_objection.core import ConfigError
from rapid_objection.core._config import load_registry_config
from tests.e2e import run_cli

PASSWORD = "pw-from-env"  # noqa: S105 - made up, set in the test's environment


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


class TestExpansion:
    def test_a_variable_fills_in_the_value(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``${RO_TEST_PW}`` in the bus URL becomes the variable's value, and the other
        strings of the file are left as they are, ``$$`` being one ``$``."""
        monkeypatch.setenv("RO_TEST_PW", PASSWORD)
        path = write(
            tmp_path,
            '[bus]\nurl = "redis://:${RO_TEST_PW}@cache:6379/0"\nnamespace = "cost$$-2"\n',
        )
        config = load_registry_config(path)
        assert config.bus.url == f"redis://:{PASSWORD}@cache:6379/0"
        assert config.bus.namespace == "cost$-2"

    def test_a_missing_variable_names_the_key_the_variable_and_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unset variable is a ConfigError at the key that names it."""
        monkeypatch.delenv("RO_TEST_UNSET", raising=False)
        path = write(tmp_path, '[plugins.audit.config]\ndsn = "${RO_TEST_UNSET}"\n')
        with pytest.raises(ConfigError) as caught:
            load_registry_config(path)
        assert caught.value.path == "plugins.audit.config.dsn"
        assert caught.value.file == str(path)
        assert "RO_TEST_UNSET is not set" in str(caught.value)


@pytest.mark.anyio
async def test_the_worker_command_expands_its_config_file_too(tmp_path: Path) -> None:
    """``rapid-objection worker --config`` reads ``${NAME}`` the same way: an unset one
    is a one-line usage error naming it."""
    path = write(
        tmp_path, '[plugins.audit]\nmodule = "x:Y"\n[plugins.audit.config]\nk = "${RO_NOPE}"\n'
    )
    code, _, err = await run_cli(
        "worker",
        "tests.core.demo_plugins:AuditLogPlugin",
        "--config",
        str(path),
        "--bus-url",
        "redis://127.0.0.1:1/0",
    )
    assert code == 2, err
    assert "RO_NOPE is not set" in err
    assert len(err.strip().splitlines()) == 1
