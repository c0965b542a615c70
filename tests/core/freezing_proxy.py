"""A loopback TCP proxy in front of a real database server that can freeze.

It forwards bytes both ways until ``freeze()``: from then on it reads nothing and sends
nothing, but keeps every socket open, as a server that stops answering without closing
its connections (a hung host, a dropped route) looks to a client. ``close()`` ends it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

_CHUNK = 65536


class FreezingProxy:
    """Listens on a free loopback port and forwards to ``target`` (host, port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        through = sa.make_url(url).set(host="127.0.0.1", port=self.port)
        return through.render_as_string(hide_password=False)

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.05)
        while not self._closed.is_set():
            if self._frozen.is_set():
                self._closed.wait(0.05)  # holds the connection, answers nothing
                continue
            try:
                data = source.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if self._frozen.is_set():
                continue  # swallowed: it arrived as the server froze
            try:
                sink.sendall(data)
            except OSError:
                return


@contextmanager
def freezing_proxy(url: str) -> Iterator[FreezingProxy]:
    """A proxy in front of ``url``'s server; closed afterwards."""
    parsed = sa.make_url(url)
    assert parsed.host is not None
    assert parsed.port is not None
    proxy = FreezingProxy((parsed.host, parsed.port))
    try:
        yield proxy
    finally:
        proxy.close()
