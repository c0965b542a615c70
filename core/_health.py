"""Health checks of an app's database: a real ``SELECT 1``, timed, with the pool's figures.

``check_within`` bounds a check: a server that stops answering (a frozen peer keeps its
connections open) makes it ``unhealthy`` after the timeout instead of hanging; the
worker thread it leaves behind ends when the driver gives up (TCP keepalives, read
timeouts: see ``_connections``).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import sqlalchemy as sa

from rapid_objection.bus import mask_url

from ._connections import pool_figures


def _error(exc: BaseException, url: sa.URL) -> str:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    text = (str(cause).strip().splitlines() or [""])[0]
    if url.password:
        text = text.replace(str(url.password), "***")
    return mask_url(f"{type(cause).__name__}: {text}" if text else type(cause).__name__)


def check(app: str, engine: sa.Engine) -> dict[str, Any]:
    """The health of ``app``'s database; never raises (a failure is ``"unhealthy"``)."""
    started = time.perf_counter()
    error: str | None = None
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1")).scalar()
    except Exception as exc:  # a health check reports any failure instead of raising it
        error = _error(exc, engine.url)
    health: dict[str, Any] = {
        "app": app,
        "status": "healthy" if error is None else "unhealthy",
        "response_time_ms": round((time.perf_counter() - started) * 1000, 3),
        "pool": pool_figures(engine),
        "checked_at": time.time(),
    }
    if error is not None:
        health["error"] = error
    return health


async def check_within(app: str, engine: sa.Engine, timeout: float) -> dict[str, Any]:
    """``check``, answering within ``timeout`` seconds (``unhealthy`` if the database did not)."""
    started = time.perf_counter()
    with anyio.move_on_after(timeout):
        return await anyio.to_thread.run_sync(check, app, engine, abandon_on_cancel=True)
    return {
        "app": app,
        "status": "unhealthy",
        "response_time_ms": round((time.perf_counter() - started) * 1000, 3),
        "pool": pool_figures(engine),
        "checked_at": time.time(),
        "error": f"TimeoutError: the database did not answer within {timeout:g} s",
    }
