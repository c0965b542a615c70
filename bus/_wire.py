"""Several commands in one round trip on a connection of the bus's own, replies raw.

redis-py's pipeline costs 40-90 µs of client CPU per round trip beyond the commands
themselves (measured on this machine, redis-py 8.1 + hiredis: a pipeline of ``ZADD`` and
``XPENDING`` 150-180 µs, the same two on a held connection 88): its connection pool's
lock, condition and observability hooks, a command stack of tuples and options, a
response callback per reply. The workers send one or two such round trips per read
batch and the publisher one per pipeline, so that machinery is paid on nearly every
event. ``Wires`` keeps a few connections of the pool's own kind (same address,
credentials, TLS, Sentinel lookup) and sends packed commands on one of them, reading
the replies as the server gives them; the caller parses them.

What redis-py does around a round trip is kept: the connection's retry policy (a lost
connection is retried on a fresh one, as redis-py's own commands are), error replies
as the exception classes that ``translate`` classifies, and a connection whose replies
were not all read (an error, a cancellation) is closed, never reused.

Only on a single server (or a Sentinel-watched primary): a cluster routes by slot and
the embedded bus has no socket, so there callers use redis-py's own paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from redis import exceptions as redis_errors

Command = tuple[Any, ...]
"""One command as its words: ``("XPENDING", key, group, "-", "+", 100)``."""

IDLE_KEPT: Final = 32
"""Connections kept between round trips; more may be open at once (a blocked read holds
one), and those beyond are closed when they come back."""


class Wires:
    """A few connections of a redis-py pool's kind, for raw multi-command round trips."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._idle: list[Any] = []
        self._closed = False

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write and read one reply each, in order. An error
        reply is returned in its place as the exception redis-py would raise for it;
        a lost connection raises (after the connection's own retries)."""
        connection = self._idle.pop() if self._idle else self._pool.make_connection()
        if connection.is_connected and await _stale(connection):
            await connection.disconnect()  # closed while idle (a restart, CLIENT KILL)
        packed = connection.pack_commands(commands)
        count = len(commands)

        async def round_trip() -> list[Any]:
            if not connection.is_connected:
                # ``connect``, not the one ``send_packed_command`` would make: a Sentinel's
                # connection asks there for the primary's address.
                await connection.connect()
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await connection.read_response(disconnect_on_error=True))
                except redis_errors.ResponseError as exc:
                    replies.append(exc)
            return replies

        async def on_failure(_error: BaseException) -> None:
            await connection.disconnect()

        try:
            replies: list[Any] = await connection.retry.call_with_retry(round_trip, on_failure)
        except BaseException:
            # Cancelled or failed between the write and the last reply: what is left on
            # the socket belongs to no one, so the connection goes.
            await connection.disconnect(nowait=True)
            raise
        if self._closed or len(self._idle) >= IDLE_KEPT:
            await connection.disconnect()
        else:
            self._idle.append(connection)
        return replies

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


async def _stale(connection: Any) -> bool:
    """Whether an idle connection was closed by the server (or has stray bytes): the
    check redis-py's pool makes before it hands a connection out."""
    try:
        return bool(await connection.can_read())
    except redis_errors.ConnectionError:
        return True


def stream_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """A RESP2 ``XREADGROUP``/``XREAD`` reply of one stream as (entry id, fields)."""
    if not reply:
        return []
    return [(text_of(entry_id), _pairs(words)) for entry_id, words in reply[0][1]]


def range_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """A RESP2 ``XRANGE`` reply as (entry id, fields)."""
    return [(text_of(entry_id), _pairs(words)) for entry_id, words in reply or ()]


def _pairs(words: Sequence[bytes] | None) -> dict[bytes, bytes]:
    if not words:
        return {}  # an entry deleted while pending reads back without fields
    return dict(zip(words[::2], words[1::2], strict=True))


def text_of(value: bytes | str) -> str:
    """A reply's bytes (or a string already) as text."""
    return value.decode() if isinstance(value, bytes) else value
