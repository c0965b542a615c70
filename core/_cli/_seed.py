"""``rapid-objection seed APP [status|up|down]``: ``migrate``'s twin for seeds."""

from __future__ import annotations

from typing import Any

from . import _migrate


def add_parser(commands: Any) -> None:
    _migrate.add_parser(commands, "seed")
