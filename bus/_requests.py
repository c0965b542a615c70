"""Operators' requests to the registry that owns an app, and its answers, over the bus.

``rapid-objection migrate shop up`` runs where no registry does: it asks the one that
owns ``shop`` (its lease, ``_owners``) to do the work, so that the work runs under that
registry's lease, fence, locks and plugins, exactly as ``app.migrate()`` would there.

* The asker writes a ``Request`` to ``ro:{ns}:requests:<registry>`` (one stream per
  registry: only the addressee reads it) and waits on ``ro:{ns}:answer:<id>`` with a
  blocking XREAD until its deadline.
* The registry reads its request stream with one background reader (from its end when it
  starts: a request sent while it was down is not run later), runs each request in a
  task of its own, and writes the ``Answer`` to the answer key, which expires after
  ``ANSWER_TTL_MS``. A request past its deadline, or read twice, is not run.
* With a keyring, a request and its answer carry a tag by the registries' key: a client
  without the whole ring (a plugin's worker holds an export) cannot make a registry
  migrate, and an asker never believes an answer nobody with that key wrote. A request
  that fails the check is answered ``unauthenticated`` (the answer, signed, says so).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from ._bus import Bus
from ._constants import (
    ANSWER_TTL_MS,
    READ_BATCH,
    READ_BLOCK_MS,
    RECORD_FIELD,
    REQUESTS_MAX_LEN,
    SIGNATURE_FIELD,
)
from ._contract import Answer, Request, decode_answer, decode_request, encode, new_event_id
from ._errors import BusError, BusUnavailable
from ._retry import Outage

log = logging.getLogger("rapid_objection.bus")

Handler = Callable[[Request], Awaitable[Answer]]

SEEN_KEPT = 10_000
"""Request ids a registry remembers having run (a re-added copy is not run again)."""


class NoAnswer(BusError):  # noqa: N818 - reads as the condition
    """The registry asked did not answer before the deadline."""

    def __init__(self, registry: str, app: str, timeout: float) -> None:
        self.registry = registry
        self.app = app
        super().__init__(
            f"registry {registry!r} did not answer the request for app {app!r} within "
            f"{timeout:g} s (it may still be running it: see `rapid-objection migrate {app} "
            "status`)"
        )


def sender() -> str:
    """Who asks: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Requests:
    """Requests and answers on ``bus``."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _fields(self, data: bytes) -> dict[bytes, bytes]:
        fields = {RECORD_FIELD: data}
        if self.bus.keyring is not None:
            fields[SIGNATURE_FIELD] = self.bus.keyring.seal_request(data)
        return fields

    def _genuine(self, fields: dict[bytes, bytes]) -> bool:
        keyring = self.bus.keyring
        data = fields.get(RECORD_FIELD, b"")
        return keyring is None or keyring.request_genuine(data, fields.get(SIGNATURE_FIELD))

    # -- the asker ------------------------------------------------------------------------

    async def ask(
        self, registry: str, app: str, action: str, steps: int = 1, *, timeout: float = 300.0
    ) -> Answer:
        """Send one request to ``registry`` and wait for its answer (``NoAnswer`` after
        ``timeout`` seconds)."""
        now = time.time()
        request = Request(
            id=new_event_id(now),
            registry=registry,
            app=app,
            action=action,
            steps=steps,
            sender=sender(),
            time=now,
            deadline=now + timeout,
        )
        keys, redis = self.bus.keys, self.bus.redis
        await redis.xadd(
            keys.requests(registry), self._fields(encode(request)), maxlen=REQUESTS_MAX_LEN
        )
        answer_key = keys.answer(request.id)
        position = "0-0"
        with anyio.move_on_after(timeout):
            while True:
                for entry_id, fields in await redis.xread(
                    answer_key, position, count=READ_BATCH, block_ms=READ_BLOCK_MS
                ):
                    position = entry_id
                    answer = self._answer(fields, request)
                    if answer is not None:
                        return answer
        raise NoAnswer(registry, app, timeout)

    def _answer(self, fields: dict[bytes, bytes], request: Request) -> Answer | None:
        if not self._genuine(fields):
            log.warning("ignored an answer to request %s that fails verification", request.id)
            return None
        try:
            answer = decode_answer(fields.get(RECORD_FIELD, b""))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return answer if answer.request == request.id else None

    # -- the registry ---------------------------------------------------------------------

    async def serve(
        self,
        registry: str,
        handle: Handler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read ``registry``'s requests and answer each with ``handle`` (in a task of its
        own), until cancelled."""
        key, redis = self.bus.keys.requests(registry), self.bus.redis
        newest = await redis.xrevrange(key, "+", "-", count=1)
        position = newest[0][0] if newest else "0-0"
        seen: dict[str, None] = {}
        outage = Outage()
        async with anyio.create_task_group() as group:
            task_status.started()
            while True:
                try:
                    entries = await redis.xread(
                        key, position, count=READ_BATCH, block_ms=READ_BLOCK_MS
                    )
                    outage.over()
                except BusUnavailable as exc:
                    log.warning("request reader of registry %s: %s", registry, exc)
                    await outage.pause()
                    continue
                for entry_id, fields in entries:
                    position = entry_id
                    request = self._request(registry, fields, seen)
                    if request is not None:
                        group.start_soon(self._answer_with, handle, request, fields)

    def _request(
        self, registry: str, fields: dict[bytes, bytes], seen: dict[str, None]
    ) -> Request | None:
        """The request of an entry, when it is one to run now."""
        try:
            request = decode_request(fields.get(RECORD_FIELD, b""))
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("registry %s skipped an undecodable request", registry)
            return None
        if request.registry != registry or request.id in seen:
            return None
        seen[request.id] = None
        if len(seen) > SEEN_KEPT:
            del seen[next(iter(seen))]
        if request.deadline and time.time() > request.deadline:
            log.warning("registry %s: request %s arrived past its deadline", registry, request.id)
            return None
        return request

    async def _answer_with(
        self, handle: Handler, request: Request, fields: dict[bytes, bytes]
    ) -> None:
        if self._genuine(fields):
            answer = await handle(request)
        else:
            log.warning(
                "registry %s refused a request from %s for app %r that fails verification",
                request.registry,
                request.sender,
                request.app,
            )
            answer = Answer(
                request=request.id,
                registry=request.registry,
                ok=False,
                error="the request fails verification: it is signed by no registry key "
                "of this keyring",
                error_type="unauthenticated",
            )
        key = self.bus.keys.answer(request.id)
        try:
            await (
                self.bus.redis.batch()
                .xadd(key, self._fields(encode(answer)))
                .pexpire(key, ANSWER_TTL_MS)
                .execute()
            )
        except BusUnavailable as exc:
            log.warning("answer to request %s not written: %s", request.id, exc)
