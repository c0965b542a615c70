"""The dashboard's ASGI application: the page, its JSON API, the live feed, the actions.

The caller opens the bus (and closes it); the application's lifespan runs the one feed
reader that every open page shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rapid_objection.bus import Bus

from ._actions import Actions
from ._api import Api
from ._stream import Feed

STATIC = Path(__file__).with_name("static")
"""The page: plain HTML, CSS and JavaScript, served as they are (no build step)."""

PAGE_HEADERS = {
    # Everything the page loads comes from here; no inline script can run, so an event's
    # text, however it was crafted, never executes.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """The dashboard of ``bus`` (already open): its ASGI ``app``, and ``close`` to end the
    live feeds of open pages when the server stops.

    ``token``: actions are on and need it; None: read-only. ``allowed_hosts``: the Host
    headers answered (a page of another site that a DNS trick points at this address is
    refused); None: any.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        token: str | None = None,
        interval: float = 1.0,
        recent_failures: int = 20,
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        feed = Feed(bus, interval=interval, recent_failures=recent_failures)
        api = Api(bus, actions=token is not None, recent_failures=recent_failures)
        actions = Actions(bus, token)
        self.close = feed.close

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with anyio.create_task_group() as tasks:
                await tasks.start(feed.run)
                yield
                tasks.cancel_scope.cancel()

        middleware = []
        if allowed_hosts is not None:
            middleware.append(
                Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
            )
        self.app = Starlette(
            routes=[
                Route("/", page),
                *api.routes(),
                *feed.routes(),
                *actions.routes(),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ],
            middleware=middleware,
            lifespan=lifespan,
        )


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)
