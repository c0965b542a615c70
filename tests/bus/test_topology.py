"""Bus URLs name the topology: a single server, a Redis Cluster, Sentinel, and durability."""

from __future__ import annotations

from typing import Any

import pytest

from rapid_objection.bus import Bus, BusUnavailable, BusUrlError
from rapid_objection.bus._topology import (
    DEFAULT_REPLICA_TIMEOUT,
    Topology,
    parse,
    with_options,
)
from rapid_objection.core._config import load_registry_config
from tests.topologies import Cluster

pytestmark = pytest.mark.anyio


class TestParse:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            pytest.param(
                "redis://127.0.0.1:6379/0",
                Topology("redis", "redis://127.0.0.1:6379/0"),
                id="single-detect",
            ),
            pytest.param(
                "redis://h:7000/0?cluster=true&health_check_interval=5",
                Topology("redis", "redis://h:7000/0?health_check_interval=5", cluster=True),
                id="cluster-keeps-redis-py-options",
            ),
            pytest.param(
                "rediss://h:6380/0?cluster=false&min_replicas=2&replica_timeout=0.5",
                Topology(
                    "rediss",
                    "rediss://h:6380/0",
                    cluster=False,
                    min_replicas=2,
                    replica_timeout=0.5,
                ),
                id="durable",
            ),
            pytest.param(
                "unix:///run/redis.sock",
                Topology("unix", "unix:///run/redis.sock", cluster=False),
                id="unix-is-never-a-cluster",
            ),
            pytest.param(
                "redis+sentinel://ro:p%40ss@s1:26380,s2/shop-primary/3?min_replicas=1",
                Topology(
                    "redis+sentinel",
                    "redis+sentinel://ro:p%40ss@s1:26380,s2/shop-primary/3?min_replicas=1",
                    cluster=False,
                    min_replicas=1,
                    sentinels=(("s1", 26380), ("s2", 26379)),
                    service="shop-primary",
                    db=3,
                    username="ro",
                    password="p@ss",  # noqa: S106 - a made-up one, parsed back
                ),
                id="sentinel",
            ),
        ],
    )
    def test_reads_what_the_url_asks_for(self, url: str, expected: Topology) -> None:
        """Our options are read and removed; redis-py's own stay in the client URL."""
        assert parse(url) == expected

    def test_durability_defaults(self) -> None:
        """Without options a write waits for no replica."""
        topology = parse("redis://h/0")
        assert (topology.min_replicas, topology.replica_timeout) == (0, DEFAULT_REPLICA_TIMEOUT)

    @pytest.mark.parametrize(
        ("url", "words"),
        [
            pytest.param("redis://h/0?cluster=maybe", "use true or false", id="cluster-flag"),
            pytest.param("redis://h/0?min_replicas=-1", "min_replicas", id="negative"),
            pytest.param("redis://h/0?min_replicas=one", "numbers", id="not-a-number"),
            pytest.param("redis://h/0?replica_timeout=0", "replica_timeout", id="zero-wait"),
            pytest.param("unix:///r.sock?cluster=true", "not a Unix socket", id="unix-cluster"),
            pytest.param("redis+sentinel:///svc", "no Sentinel host", id="no-sentinel"),
            pytest.param("redis+sentinel://s1", "/SERVICE", id="no-service"),
            pytest.param("redis+sentinel://s1/svc/x", "not a number", id="bad-db"),
            pytest.param("redis+sentinel://s1:x/svc", "port", id="bad-port"),
            pytest.param("redis+sentinel://s1/svc?cluster=true", "not a Redis Cluster", id="both"),
        ],
    )
    def test_a_wrong_url_is_refused_saying_why(self, url: str, words: str) -> None:
        """A wrong option or Sentinel address raises BusUrlError before any I/O."""
        with pytest.raises(BusUrlError, match=words):
            Bus.connect(url)

    def test_a_sentinel_password_is_masked(self) -> None:
        """The URL a Sentinel bus shows has its password masked."""
        bus = Bus.connect("redis+sentinel://ro:hunter2@s1,s2/svc")
        assert "hunter2" not in bus.url


@pytest.mark.redis_server
class TestCluster:
    async def test_any_node_leads_to_every_namespace(
        self, redis_cluster: Cluster, namespace: str
    ) -> None:
        """Through each node's URL the bus finds it is a cluster and reaches a namespace
        whose slot lives on another master."""
        for port in redis_cluster.ports:
            async with Bus.connect(f"redis://127.0.0.1:{port}/0", namespace) as bus:
                assert bus.redis.cluster
                await bus.redis.xadd(bus.keys.events, {b"port": str(port).encode()})
                assert await bus.redis.xlen(bus.keys.events) == redis_cluster.ports.index(port) + 1
                if port == redis_cluster.ports[-1]:
                    await bus.redis.delete(bus.keys.events)

    async def test_cluster_false_on_a_cluster_node_says_so(self, redis_cluster: Cluster) -> None:
        """With ``cluster=false`` a key on another node fails with one clear error, not a
        raw MOVED reply."""
        elsewhere = next(
            name
            for name in (f"ns-{number}" for number in range(100))
            if redis_cluster.master_of(f"ro:{{{name}}}:events") != redis_cluster.ports[0]
        )
        async with Bus.connect(f"{redis_cluster.url}?cluster=false", elsewhere) as bus:
            assert not bus.redis.cluster
            with pytest.raises(BusUrlError, match="Redis Cluster node"):
                await bus.redis.xlen(bus.keys.events)


class TestOptions:
    @pytest.mark.parametrize(
        ("url", "options", "expected"),
        [
            pytest.param("redis://h/0", {}, "redis://h/0", id="nothing-given"),
            pytest.param(
                "redis://h/0", {"cluster": True}, "redis://h/0?cluster=true", id="cluster"
            ),
            pytest.param(
                "redis://h/0?min_replicas=2&client_name=x",
                {"min_replicas": 1},
                "redis://h/0?client_name=x&min_replicas=1",
                id="a-flag-wins-over-the-url",
            ),
            pytest.param("memory://x", {"min_replicas": 1}, "memory://x", id="embedded"),
        ],
    )
    def test_settings_go_into_the_url(
        self, url: str, options: dict[str, Any], expected: str
    ) -> None:
        """``[bus] cluster``/``min_replicas`` and the CLI flags travel in the URL."""
        assert with_options(url, **options) == expected

    def test_the_registry_setting_reaches_every_write(self) -> None:
        """``[bus] min_replicas`` is in the URL the registry and its workers connect with."""
        config = load_registry_config(
            {"bus": {"url": "redis://h:6379/0", "min_replicas": 2, "cluster": False}}
        )
        assert parse(config.bus.connect_url) == Topology(
            "redis", "redis://h:6379/0", cluster=False, min_replicas=2
        )


@pytest.mark.redis_server
class TestDurability:
    async def test_a_write_without_its_replicas_is_an_outage(
        self, redis_url: str, namespace: str
    ) -> None:
        """With min_replicas=1 on a server without replicas, a publish waits
        ``replica_timeout`` and fails with BusUnavailable saying how many answered."""
        url = f"{redis_url}?replica_timeout=0.2"
        async with Bus.connect(url, namespace, min_replicas=1) as bus:
            with pytest.raises(BusUnavailable, match="only 0 of 1 replicas"):
                await bus.redis.xadd(bus.keys.events, {b"k": b"v"})
            # The write itself landed on the primary: WAIT cannot take it back.
            assert await bus.redis.xlen(bus.keys.events) == 1
            await bus.redis.delete(bus.keys.events)
