"""Names with control characters are refused before anything prints them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapid_objection.core import ConfigError
from rapid_objection.core._config import load_registry_config
from tests.e2e import run_cli


@pytest.mark.parametrize("section", ["apps", "plugins"])
def test_a_name_with_a_newline_is_refused_as_a_literal(section: str) -> None:
    """The error shows the name as a Python literal: the newline stays ``\\n``."""
    table = {"database": {"url": "sqlite://"}} if section == "apps" else {"module": "x:Y"}
    with pytest.raises(ConfigError) as caught:
        load_registry_config({section: {"shop\nevil": table}})
    assert "'shop\\nevil'" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.anyio
async def test_run_prints_nothing_of_a_bad_app_name(tmp_path: Path) -> None:
    """``rapid-objection run`` with such an app exits 2 with one line, stdout empty."""
    path = tmp_path / "registry.toml"
    path.write_text('[apps."shop\\nevil".database]\nurl = "sqlite://"\n')
    code, out, err = await run_cli("run", str(path))
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "'shop\\nevil'" in err
