"""Log output of the long-running commands: ``--log-level`` and ``--log-format text|json``.

``worker``, ``run`` and ``dashboard`` call ``add_log_options`` on their parser and
``configure(args)`` before they start. Both settings also come from the environment
(``RAPID_OBJECTION_LOG_LEVEL``, ``RAPID_OBJECTION_LOG_FORMAT``), and ``configure`` puts
the chosen ones there: the workers that a registry supervises inherit its environment,
so ``run --log-format json`` makes their lines JSON too.

Standard library only: a worker process imports this and stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import IO, Any, Final

ENV_LOG_LEVEL: Final = "RAPID_OBJECTION_LOG_LEVEL"
ENV_LOG_FORMAT: Final = "RAPID_OBJECTION_LOG_FORMAT"
LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, ``exception`` (the traceback text, when there is one) and
    every ``extra=`` field of the call (``plugin``, ``consumer``, ``event_id``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        # default=str: an extra that JSON cannot carry is still shown, never an error.
        return json.dumps(line, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``setup_logging`` installs; marked so a second call replaces it."""


def add_log_options(parser: argparse.ArgumentParser, default_level: str) -> None:
    """``--log-level`` (default ``default_level``, or the env's) and ``--log-format``."""
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        help=f"least severe level logged (env {ENV_LOG_LEVEL}; default {default_level};"
        " debug shows every hook call)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        help=f"text lines, or one JSON object per line (env {ENV_LOG_FORMAT}; default text)",
    )
    parser.set_defaults(default_log_level=default_level)


def setup_logging(
    level: str = "info", log_format: str = "text", stream: IO[str] | None = None
) -> None:
    """Log records of ``level`` and above to ``stream`` (stderr) as text or JSON lines.

    Replaces what an earlier call installed and leaves any other handler alone (a
    test's capture, an application's own)."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(stream or sys.stderr)
    text = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    root.addHandler(handler)
    root.setLevel(level.upper())


def configure(args: argparse.Namespace) -> None:
    """Set logging up from ``--log-level`` and ``--log-format`` (else the environment's,
    else the command's defaults), and hand the flags given to child processes."""
    from ._args import UsageError

    level = args.log_level or os.environ.get(ENV_LOG_LEVEL) or args.default_log_level
    log_format = args.log_format or os.environ.get(ENV_LOG_FORMAT) or "text"
    try:
        setup_logging(level.lower(), log_format.lower())
    except ValueError as exc:  # a bad value from the environment (argparse checks flags)
        raise UsageError(f"{exc} (env {ENV_LOG_LEVEL} / {ENV_LOG_FORMAT})") from None
    # Only what was asked for: a registry's quiet default must not silence its workers.
    if args.log_level:
        os.environ[ENV_LOG_LEVEL] = args.log_level
    if args.log_format:
        os.environ[ENV_LOG_FORMAT] = args.log_format
