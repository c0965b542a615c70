"""A loopback TCP proxy in front of the real Redis that can lose a reply or cut a pipeline.

It parses the RESP commands a client sends, forwards them one by one, and fires one rule
once: ``drop_reply("EXEC")`` lets the command reach the server but loses its reply (the
connection breaks after the server ran it); ``cut_before("XADD", 3)`` forwards the
commands before the third XADD and breaks the connection there, so that only the head
of a pipeline reaches the server. After its rule fired the proxy forwards plainly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import SocketStream, TaskGroup

SETTLE = 0.1
"""Seconds the proxy lets the server run what it got before it breaks the connection."""


@dataclass
class _Rule:
    command: bytes
    nth: int
    drop_reply: bool
    seen: int = 0


def _split_commands(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """Complete RESP commands at the head of ``buffer`` as (name, raw bytes); removed."""
    commands: list[tuple[bytes, bytes]] = []
    while buffer:
        end = _command_end(buffer)
        if end is None:
            break
        raw = bytes(buffer[:end])
        del buffer[:end]
        name = raw.split(b"\r\n")[2].upper()
        commands.append((name, raw))
    return commands


def _command_end(buffer: bytearray) -> int | None:
    """Where the first complete ``*n`` array command ends in ``buffer``, or None."""
    line_end = buffer.find(b"\r\n")
    if line_end < 0:
        return None
    count = int(buffer[1:line_end])
    position = line_end + 2
    for _ in range(count):
        length_end = buffer.find(b"\r\n", position)
        if length_end < 0:
            return None
        length = int(buffer[position + 1 : length_end])
        position = length_end + 2 + length + 2
        if position > len(buffer):
            return None
    return position


class Proxy:
    """One listening proxy; ``url`` is what a client connects to instead of Redis."""

    def __init__(self, group: TaskGroup, target: tuple[str, int], port: int, path: str) -> None:
        self._group = group
        self._target = target
        self.url = f"redis://127.0.0.1:{port}{path}"
        self._rule: _Rule | None = None
        self.fired = anyio.Event()

    def drop_reply(self, command: str, nth: int = 1) -> None:
        """The ``nth`` ``command`` reaches the server; its reply is lost with the connection."""
        self._rule = _Rule(command.upper().encode(), nth, drop_reply=True)

    def cut_before(self, command: str, nth: int = 1) -> None:
        """Everything before the ``nth`` ``command`` reaches the server; the rest is lost."""
        self._rule = _Rule(command.upper().encode(), nth, drop_reply=False)

    async def handle(self, client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(*self._target) as server:
            broken = anyio.Event()
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._replies, server, client, broken)
                await self._requests(client, server, broken)
                pumps.cancel_scope.cancel()

    async def _requests(
        self, client: SocketStream, server: SocketStream, broken: anyio.Event
    ) -> None:
        buffer = bytearray()
        try:
            async for chunk in client:
                buffer.extend(chunk)
                for name, raw in _split_commands(buffer):
                    rule = self._rule
                    if rule is not None and name == rule.command:
                        rule.seen += 1
                        if rule.seen == rule.nth:
                            self._rule = None
                            if rule.drop_reply:
                                await server.send(raw)
                            broken.set()  # no more replies reach the client
                            await anyio.sleep(SETTLE)
                            self.fired.set()
                            return
                    await server.send(raw)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return

    @staticmethod
    async def _replies(server: SocketStream, client: SocketStream, broken: anyio.Event) -> None:
        try:
            async for chunk in server:
                if broken.is_set():
                    continue  # lost on the way back
                await client.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


@asynccontextmanager
async def redis_proxy(redis_url: str) -> AsyncIterator[Proxy]:
    """A proxy to the Redis at ``redis_url``, listening on a free loopback port."""
    parts = urlsplit(redis_url)
    target = (parts.hostname or "127.0.0.1", parts.port or 6379)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
    async with listener, anyio.create_task_group() as group:
        proxy = Proxy(group, target, port, parts.path)
        group.start_soon(listener.serve, proxy.handle)
        try:
            yield proxy
        finally:
            group.cancel_scope.cancel()
