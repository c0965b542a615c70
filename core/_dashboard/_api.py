"""The dashboard's read-only JSON API (docs/dashboard.md): what the page is built on.

Every answer is JSON; a bad query parameter is HTTP 400 with ``{"error": "..."}``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rapid_objection.bus import (
    EVENT_TYPES,
    RECORDED_STATUSES,
    Bus,
    DeadLetters,
    collect_status,
)
from rapid_objection.bus._directory import is_alive

from .._errors import ReplayError
from .._replay import Selection, answered, as_row, parse_time

HISTORY_LIMIT: int = 100
"""Events one ``GET /api/history`` returns unless ``limit`` says otherwise."""

MAX_LIMIT: int = 1_000
"""The most events or dead letters one request may ask for."""


class RequestError(Exception):
    """A request the dashboard does not take (a bad parameter, a refused action): the
    HTTP status and why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(data: Any, status: int = 200) -> Response:
    body = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return Response(body, status, media_type="application/json")


def error(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def number(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"{name}: not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise RequestError(f"{name}: must be from 1 to {MAX_LIMIT}, not {value}")
    return value


def moment(text: str | None, name: str, now: float) -> float | None:
    """A ``since``/``until`` value: ISO 8601 or relative (``-15m``), as ``replay`` reads."""
    if not text:
        return None
    try:
        return parse_time(text, now=now)
    except ReplayError as exc:
        raise RequestError(f"{name}: {exc}") from None


def checked(values: list[str], known: Sequence[str], name: str) -> tuple[str, ...]:
    """Repeated ``name`` parameters, each one of ``known``."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RequestError(f"{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return tuple(values)


def event_types(values: list[str]) -> tuple[str, ...]:
    return checked(values, EVENT_TYPES, "type")


def order(text: str | None) -> bool:
    """``order``: ``oldest`` (the default) or ``newest`` first; True for newest."""
    if text not in (None, "", "oldest", "newest"):
        raise RequestError(f"order: oldest or newest, not {text!r}")
    return text == "newest"


class Api:
    """``GET /api/...``: status, apps, history, dead letters and the dashboard's settings."""

    def __init__(self, bus: Bus, *, actions: bool, recent_failures: int = 20) -> None:
        self.bus = bus
        self.actions = actions
        self.recent_failures = recent_failures

    def routes(self) -> list[Route]:
        return [
            Route("/api/config", self.config),
            Route("/api/status", self.status),
            Route("/api/apps", self.apps),
            Route("/api/history", self.history),
            Route("/api/dead-letters", self.dead_letters),
        ]

    async def config(self, request: Request) -> Response:
        """What the page needs to know of this dashboard."""
        return json_response(
            {
                "namespace": self.bus.namespace,
                "url": self.bus.url,
                "actions": self.actions,
                "event_types": list(EVENT_TYPES),
                "statuses": list(RECORDED_STATUSES),
            }
        )

    async def status(self, request: Request) -> Response:
        """Exactly what ``rapid-objection status --json`` prints (``failures`` as its
        ``--failures``)."""
        try:
            recent = number(request, "failures", self.recent_failures)
        except RequestError as exc:
            return error(str(exc), exc.status)
        report = await collect_status(self.bus, recent=recent)
        return json_response(report.json())

    async def apps(self, request: Request) -> Response:
        """Each app that a registry holds (its lease), with the owner and whether the
        owner's heartbeat is alive."""
        owners = await self.bus.directory.apps()
        registries = {info.id: info for info in await self.bus.directory.registries()}
        now = time.time()
        rows = []
        for app, owner in sorted(owners.items()):
            info = registries.get(owner)
            rows.append(
                {
                    "app": app,
                    "owner": owner,
                    "owner_alive": info is not None and is_alive(info.seen, now),
                    "host": info.host if info else None,
                }
            )
        return json_response(rows)

    async def history(self, request: Request) -> Response:
        """The history as ``replay --outcomes`` selects it: ``since``, ``until``, ``app``,
        ``type`` (repeatable); by outcome ``plugin``, ``consumer``, ``status``
        (repeatable); ``limit`` events, oldest first, or with ``order=newest`` the newest
        first (``--last``). Each event with its outcomes (those the filters keep)."""
        query = request.query_params
        now = time.time()
        try:
            limit = number(request, "limit", HISTORY_LIMIT)
            selection = Selection(
                since=moment(query.get("since"), "since", now),
                until=moment(query.get("until"), "until", now),
                app=query.get("app") or None,
                types=event_types(query.getlist("type")),
                limit=limit + 1,  # one more says whether more match
                plugin=query.get("plugin") or None,
                consumer=query.get("consumer") or None,
                statuses=checked(query.getlist("status"), RECORDED_STATUSES, "status"),
                newest_first=order(query.get("order")),
            )
        except RequestError as exc:
            return error(str(exc), exc.status)
        found = [item async for item in answered(self.bus, selection)]
        events = [
            as_row(item.entry) | {"outcomes": msgspec.to_builtins(item.outcomes)}
            for item in found[:limit]
        ]
        return json_response({"events": events, "more": len(found) > limit})

    async def dead_letters(self, request: Request) -> Response:
        """The dead letters, oldest first, as ``dlq list --json`` prints them."""
        try:
            count = number(request, "count", 100)
        except RequestError as exc:
            return error(str(exc), exc.status)
        entries = await DeadLetters(self.bus).list(count=count)
        return json_response([entry.row() for entry in entries])
