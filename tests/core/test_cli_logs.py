"""``--log-level`` and ``--log-format``: the log output of the long-running commands."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from rapid_objection.core._cli._args import UsageError
from rapid_objection.core._cli._logs import (
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    add_log_options,
    configure,
    setup_logging,
)


@pytest.fixture
def restored_root() -> Iterator[logging.Logger]:
    """The root logger, with its level and handlers put back after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def parse(*argv: str, default_level: str = "info") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_log_options(parser, default_level)
    return parser.parse_args(argv)


class TestSetupLogging:
    def test_json_lines_carry_fields_and_traceback(self, restored_root: logging.Logger) -> None:
        """Each record is one JSON object on one line, with the extra fields and the
        traceback text of an exception."""
        stream = io.StringIO()
        setup_logging("debug", "json", stream)
        log = logging.getLogger("rapid_objection.test")
        log.debug("hook %s ran", "on_app_registered", extra={"plugin": "audit", "n": 2})
        try:
            raise ValueError("boom")
        except ValueError:
            log.warning("hook failed", exc_info=True, extra={"consumer": "c-1"})
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        assert first["level"] == "debug"
        assert first["logger"] == "rapid_objection.test"
        assert first["message"] == "hook on_app_registered ran"
        assert (first["plugin"], first["n"]) == ("audit", 2)
        assert first["time"].endswith("Z")
        assert second["consumer"] == "c-1"
        assert "ValueError: boom" in second["exception"]
        assert "Traceback" in second["exception"]

    def test_level_filters_and_a_second_call_replaces_the_first(
        self, restored_root: logging.Logger
    ) -> None:
        """Records below the level are dropped; setting up again does not log twice."""
        first, second = io.StringIO(), io.StringIO()
        setup_logging("debug", "text", first)
        setup_logging("warning", "text", second)
        log = logging.getLogger("rapid_objection.test")
        log.info("quiet")
        log.warning("loud")
        assert first.getvalue() == ""
        assert second.getvalue().count("\n") == 1
        assert "WARNING rapid_objection.test: loud" in second.getvalue()


class TestConfigure:
    def test_flags_win_and_are_handed_to_children(
        self, restored_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The flags given go to the environment, for the workers a registry starts."""
        monkeypatch.setenv(ENV_LOG_LEVEL, "error")
        monkeypatch.delenv(ENV_LOG_FORMAT, raising=False)
        configure(parse("--log-level", "debug", "--log-format", "json"))
        assert restored_root.level == logging.DEBUG
        assert os.environ[ENV_LOG_LEVEL] == "debug"
        assert os.environ[ENV_LOG_FORMAT] == "json"

    def test_defaults_come_from_env_then_command(
        self, restored_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without flags the environment decides, else the command's default level."""
        monkeypatch.delenv(ENV_LOG_LEVEL, raising=False)
        monkeypatch.delenv(ENV_LOG_FORMAT, raising=False)
        configure(parse(default_level="warning"))
        assert restored_root.level == logging.WARNING
        monkeypatch.setenv(ENV_LOG_LEVEL, "ERROR")
        configure(parse(default_level="warning"))
        assert restored_root.level == logging.ERROR

    def test_a_bad_environment_value_is_a_usage_error(
        self, restored_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A level the environment names wrongly is one clear line, naming the variable."""
        monkeypatch.setenv(ENV_LOG_LEVEL, "loud")
        with pytest.raises(UsageError, match=ENV_LOG_LEVEL):
            configure(parse())
