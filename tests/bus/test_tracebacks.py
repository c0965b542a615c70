"""Traceback text as outcomes, failure records and dead letters keep it: whole when it
fits, else its innermost end within the limit; URL passwords masked."""

from __future__ import annotations

import pytest

from rapid_objection.bus._constants import TRACEBACK_LIMIT
from rapid_objection.bus._tracebacks import bounded, traceback_text


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


class TestTracebackText:
    def test_a_short_traceback_is_kept_whole_with_passwords_masked(self) -> None:
        """The formatted traceback ends with the exception line, password masked."""
        text = traceback_text(raised(ConnectionError("postgresql://shop:hunter2@db/shop")))
        assert text.startswith("Traceback (most recent call last):\n")
        assert text.endswith("ConnectionError: postgresql://shop:***@db/shop\n")
        assert "hunter2" not in text

    @pytest.mark.parametrize("size", [100, 8 * 1024, 100_000], ids=["short", "at", "long"])
    def test_bounded_keeps_the_end_within_the_limit(self, size: int) -> None:
        """Text over the limit keeps its tail and says how many bytes went; the result
        never exceeds the limit, multi-byte characters included."""
        text = "é" * (size // 2) + "\nValueError: the end\n"
        kept = bounded(text)
        assert kept.endswith("ValueError: the end\n")
        if len(text.encode()) <= TRACEBACK_LIMIT:
            assert kept == text
            return
        assert len(kept.encode()) <= TRACEBACK_LIMIT
        note, tail = kept.split("\n", 1)
        assert note == f"... {len(text.encode()) - len(tail.encode())} bytes of traceback cut ..."
        assert text.endswith(tail)
