"""Building and closing redis-py clients for a bus URL's topology (with ``_redis``, the
adapter: the only modules that talk to ``redis.asyncio``).

One client per bus for commands (a server's, a cluster's or a Sentinel-watched
primary's). Two needs take plain clients of their own:

* on a Redis Cluster, batches (pipelines and MULTI/EXEC) go to the master of their
  namespace's slot over a plain client: every key of a batch is of one namespace, so
  of one slot, and redis-py's asyncio cluster pipeline runs each queued command of a
  transaction through ``asyncio.run`` in a thread of its own (redis-py 8.1), which is
  slow and breaks when the cluster's map must be refreshed meanwhile;
* with ``min_replicas``, writes that must reach replicas go over one connection per
  server, followed by WAIT on that same connection (WAIT counts what *its* connection
  wrote).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis

from ._redis_failures import set_up
from ._topology import Topology

KEEPALIVE_IDLE: Final = 10
"""Seconds of silence on a connection before TCP keepalive probes start."""


def _keepalive_options() -> dict[int, int]:
    """Probe after 10 s idle, every 5 s, give up after 3: a dead peer in about 25 s."""
    import socket

    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


MAX_CONNECTIONS: Final = 64
"""Connections per client; blocked readers hold one each, the rest serve commands."""

CLUSTER_CONNECTIONS: Final = 1024
"""Connections per cluster node: redis-py's cluster client fails past its limit instead
of queueing, and every blocked reader holds one."""


def build(topology: Topology, *, cluster: bool, connections: int = MAX_CONNECTIONS) -> Any:
    """A redis-py client for a real server, cluster or Sentinel-watched primary.

    No per-command socket timeout: redis-py wraps every read in a timer for it, which
    costs the round trip about a third (measured), and a BLOCK read must not be cut
    short anyway (redis-py #3138). A server that vanishes without closing a TCP socket
    is found by keepalive probes instead, within about half a minute; a Unix socket
    has no such probes (nor needs them). RESP2 keeps reply shapes stable. A connection
    whose SELECT is refused raises ``SetupRefused`` (see ``set_up``); a cluster has no
    database to select.
    """
    options: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": None,
        "socket_connect_timeout": 5.0,
    }
    if topology.scheme != "unix":
        options |= {"socket_keepalive": True, "socket_keepalive_options": _keepalive_options()}
    if not cluster:
        options["redis_connect_func"] = set_up
    if topology.sentinel:
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(topology.sentinels), sentinel_kwargs={"socket_connect_timeout": 5.0}
        )
        return sentinel.master_for(
            topology.service,
            redis_class=aioredis.Redis,
            db=topology.db,
            username=topology.username,
            password=topology.password,
            max_connections=connections if connections == 1 else CLUSTER_CONNECTIONS,
            **options,
        )
    if cluster:
        # No ``redis_connect_func``: the cluster client takes none (it sets its own).
        return aioredis.RedisCluster.from_url(
            topology.client_url,
            max_connections=connections if connections == 1 else CLUSTER_CONNECTIONS,
            **options,
        )
    # A blocking pool: many concurrent emits queue for a connection instead of failing
    # with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        topology.client_url, max_connections=connections, timeout=None, **options
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


async def close(client: Any) -> None:
    """Close a client, and the clients of the Sentinels it asks, if any."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
        await sentinel.aclose()


@dataclass(eq=False)
class NodeClients:
    """Plain clients to the masters of a cluster, one per master, made on first use."""

    topology: Topology
    connections: int
    nodes: dict[str, Any] = field(default_factory=dict)

    def client_for(self, cluster: Any, key: str) -> Any:
        """The client of the master that holds ``key``'s slot, by the cluster's map."""
        node = cluster.get_node_from_key(key)
        address = f"{node.host}:{node.port}"
        if address not in self.nodes:
            parts = urlsplit(self.topology.client_url)
            credentials = parts.netloc.rpartition("@")[0]
            netloc = f"{credentials}@{address}" if credentials else address
            url = urlunsplit(parts._replace(netloc=netloc))
            self.nodes[address] = build(
                replace(self.topology, client_url=url), cluster=False, connections=self.connections
            )
        return self.nodes[address]

    async def close(self) -> None:
        clients, self.nodes = list(self.nodes.values()), {}
        for client in clients:
            await close(client)


@dataclass(eq=False)
class Durable:
    """The connections that carry writes which must reach replicas: one per server, used
    by one task at a time (the lock), each write followed by WAIT on it."""

    single: Any | None
    """The client of a single server or Sentinel-watched primary; None on a cluster."""
    nodes: NodeClients | None
    """On a cluster, a client of one connection per master."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def client_for(self, cluster: Any, key: str) -> Any:
        if self.nodes is not None:
            return self.nodes.client_for(cluster, key)
        return self.single

    async def close(self) -> None:
        if self.nodes is not None:
            await self.nodes.close()
        if self.single is not None:
            await close(self.single)
