"""A hook's traceback as text that fits in an outcome, a failure record and a dead letter."""

from __future__ import annotations

import traceback

from ._constants import TRACEBACK_LIMIT
from ._redact import mask_url


def traceback_text(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """``exc``'s formatted traceback, URL passwords masked, at most ``limit`` bytes of
    UTF-8: when longer, the outer frames go and a first line says how much was cut
    (the innermost frames and the exception itself are what an operator reads)."""
    text = mask_url("".join(traceback.format_exception(exc)))
    return bounded(text, limit)


def bounded(text: str, limit: int = TRACEBACK_LIMIT) -> str:
    """``text`` whole when it fits in ``limit`` bytes, else its tail after a line that
    says how many bytes were cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note_room = 64  # "... 123456789 bytes of traceback cut ...\n" fits
    tail = data[len(data) - (limit - note_room) :].decode(errors="ignore")
    cut = len(data) - len(tail.encode())
    return f"... {cut} bytes of traceback cut ...\n{tail}"
