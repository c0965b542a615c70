"""The dashboard's actions: re-drive a dead letter, replay events to one plugin.

Off unless the dashboard was started with ``--allow-actions`` (HTTP 403 otherwise), and
then only for a request carrying the token (``Authorization: Bearer <token>``; HTTP 401
without it). Each action takes two requests: the first, without ``confirm``, changes
nothing and answers what would be done and a ``confirm`` code; the second sends the same
request with that code and does it. The code is an HMAC, under a key of this process, of
exactly what the first answer showed (for a replay, the selection with its time window
fixed), so nothing else can be confirmed, and a replay publishes no event that arrived
after its dry run.

What an action publishes is in the history like any event (``replay`` shows it): a
re-drive is a new event for the letter's plugin alone that ``replaces`` the original,
a replay one copy per selected event (``replay`` set, for the plugin alone).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rapid_objection.bus import Bus, DeadLetters, RedriveError

from .._errors import ReplayError
from .._replay import Selection, as_row, redeliver
from ._api import RequestError, error, event_types, json_response, moment

log = logging.getLogger(__name__)

REPLAY_LIMIT: int = 1_000
"""The most events one replay may re-deliver: a bigger one is for ``rapid-objection
replay --to-plugin``, which streams its selection."""


_T = TypeVar("_T")


class RedriveRequest(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    confirm: str | None = None


class Window(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which events a replay takes, as ``replay`` selects them."""

    since: str | float | None = None
    until: str | float | None = None
    app: str | None = None
    types: tuple[str, ...] = ()
    limit: int | None = None


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    selection: Window = Window()
    confirm: str | None = None


class Actions:
    """``POST /api/actions/redrive`` and ``POST /api/actions/replay``."""

    def __init__(self, bus: Bus, token: str | None) -> None:
        self.bus = bus
        self.token = token
        """None: actions are off (the dashboard is read-only)."""
        self._key = secrets.token_bytes(32)

    def routes(self) -> list[Route]:
        return [
            Route("/api/actions/redrive", self.redrive, methods=["POST"]),
            Route("/api/actions/replay", self.replay, methods=["POST"]),
        ]

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            raise RequestError("actions are off: the dashboard runs without --allow-actions", 403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            log.warning(
                "dashboard: refused %s without the token from %s",
                request.url.path,
                client(request),
                extra={"client": client(request), "path": request.url.path},
            )
            raise RequestError("this action needs the dashboard's token", 401)

    def _code(self, action: str, what: Any) -> str:
        text = msgspec.json.encode([action, what], order="sorted")
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def _confirmed(self, given: str | None, action: str, what: Any) -> bool:
        """False for a first request (a dry run); True when ``given`` confirms ``what``."""
        if given is None:
            return False
        if not hmac.compare_digest(given, self._code(action, what)):
            raise RequestError("the confirm code does not match: dry-run the request again", 409)
        return True

    async def _body(self, request: Request, kind: type[_T]) -> _T:
        try:
            return msgspec.json.decode(await request.body(), type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RequestError(f"bad request body: {exc}") from None

    async def redrive(self, request: Request) -> Response:
        try:
            self._authorize(request)
            asked = await self._body(request, RedriveRequest)
            letters = DeadLetters(self.bus)
            entry = await letters.get(asked.id)
            if not self._confirmed(asked.confirm, "redrive", asked.id):
                return json_response(
                    {
                        "dry_run": True,
                        "letter": entry.row(),
                        "confirm": self._code("redrive", asked.id),
                    }
                )
            done = await letters.redrive(asked.id)
            log.info(
                "dashboard: re-drove dead letter %s to plugin %r as event %s (for %s)",
                done.letter_id,
                done.plugin,
                done.event_id,
                client(request),
                extra={"action": "redrive", "letter_id": done.letter_id, "plugin": done.plugin,
                       "event_id": done.event_id, "client": client(request)},
            )
        except RequestError as exc:
            return error(str(exc), exc.status)
        except RedriveError as exc:
            return error(str(exc), 404 if "no such entry" in str(exc) else 400)
        return json_response(
            {
                "dry_run": False,
                "letter_id": done.letter_id,
                "event_id": done.event_id,
                "entry_id": done.entry_id,
                "plugin": done.plugin,
            }
        )

    async def replay(self, request: Request) -> Response:
        try:
            self._authorize(request)
            asked = await self._body(request, ReplayRequest)
            window = fixed(asked.selection, time.time())
            execute = self._confirmed(asked.confirm, "replay", [asked.plugin, window])
            done = await redeliver(self.bus, asked.plugin, selection(window), execute=execute)
            if execute:
                log.info(
                    "dashboard: replayed %d events to plugin %r (for %s)",
                    len(done.redeliveries),
                    done.plugin,
                    client(request),
                    extra={"action": "replay", "plugin": done.plugin, "client": client(request),
                           "count": len(done.redeliveries)},
                )
        except RequestError as exc:
            return error(str(exc), exc.status)
        except ReplayError as exc:
            return error(str(exc), 404 if exc.plugin else 400)
        answer: dict[str, Any] = {
            "dry_run": not execute,
            "plugin": done.plugin,
            "selection": msgspec.to_builtins(window),
            "count": len(done.redeliveries),
            "skipped": len(done.skipped),
            "live_workers": done.live_workers,
        }
        if execute:
            answer["copies"] = [
                {"original": r.original.envelope.id, "copy": r.copy.id, "entry_id": r.entry_id}
                for r in done.redeliveries
            ]
        else:
            answer["events"] = [as_row(r.original) for r in done.redeliveries]
            answer["confirm"] = self._code("replay", [asked.plugin, window])
        return json_response(answer)


def client(request: Request) -> str:
    """The address a request came from, for the log."""
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def fixed(window: Window, now: float) -> Window:
    """The window with its times as numbers and its end fixed (now, when open): what a
    dry run showed is what its confirmation re-delivers."""
    since, until = _seconds(window.since, "since", now), _seconds(window.until, "until", now)
    limit = window.limit
    if limit is not None and not 1 <= limit <= REPLAY_LIMIT:
        raise RequestError(f"limit: must be from 1 to {REPLAY_LIMIT}, not {limit}")
    if since is not None and until is not None and since > until:
        raise RequestError("since is after until")
    return Window(
        since=since,
        until=now if until is None else until,
        app=window.app or None,
        types=event_types(list(window.types)),
        limit=REPLAY_LIMIT if limit is None else limit,
    )


def _seconds(value: str | float | None, name: str, now: float) -> float | None:
    """A window's bound as a number: as given, or read as ``replay`` reads it."""
    return value if isinstance(value, float | int) else moment(value, name, now)


def selection(window: Window) -> Selection:
    since, until = window.since, window.until
    # fixed() made them numbers
    assert not isinstance(since, str)
    assert not isinstance(until, str)
    return Selection(since, until, window.app, window.types, window.limit)
