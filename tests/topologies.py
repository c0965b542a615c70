"""Redis topologies of a test's own on loopback: a 3-master cluster with a replica each,
and a primary with a replica watched by three Sentinels.

Each server is a ``redis-server`` process on a free port, keeping nothing on disk
(``--save '' --appendonly no``), stopped (SIGKILL is enough: nothing to flush) when the
topology is closed.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis

START_TIMEOUT = 20.0
"""Seconds for a topology to come up (a cluster needs a few to agree on its slots)."""


class TopologyError(Exception):
    """A topology that did not come up; the message says which server and why."""


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def free_ports(count: int, *, with_bus_port: bool = False) -> list[int]:
    """``count`` consecutive free ports (and their cluster bus ports, port + 10000)."""
    for _ in range(200):
        # Below the kernel's ephemeral range (32768 and up on Linux), bus ports included,
        # so that no client socket takes a port between the check and the bind.
        first = random.randrange(11_000, 22_000)
        ports = list(range(first, first + count))
        needed = ports + ([port + 10_000 for port in ports] if with_bus_port else [])
        if all(_free(port) for port in needed):
            return ports
    raise TopologyError(f"no {count} consecutive free ports")


def _wait_until(what: str, check: Callable[[], object], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = f": {exc}"
        time.sleep(0.1)
    raise TopologyError(f"{what} not ready within {timeout:g}s{last}")


@dataclass
class Servers:
    """The processes of one topology, in start order."""

    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[int, list[str]] = field(default_factory=dict)

    def start(self, port: int, *extra: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise TopologyError("redis-server is not on PATH")
        home = self.directory / str(port)
        home.mkdir(parents=True, exist_ok=True)
        command = [executable, *extra] if extra[:1] and extra[0].endswith(".conf") else [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(home),
            *extra,
        ]  # fmt: skip
        self.commands[port] = command
        self._launch(port)

    def _launch(self, port: int, *extra: str) -> None:
        log = (self.directory / str(port) / "server.log").open("ab")
        self.processes[port] = subprocess.Popen(
            [*self.commands[port], *extra], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        process = self.processes[port]

        def answers() -> bool:
            if process.poll() is not None:
                raise TopologyError(f"redis-server on {port} exited: {self.log(port)}")
            try:
                # Only our own process counts: another test process may have bound the
                # port first, and then its server answers here while ours exits.
                info = client(port).info("server")
            except redis.AuthenticationError:
                return True  # it answers; it wants a password (--requirepass)
            return int(info["process_id"]) == process.pid

        try:
            _wait_until(f"redis-server on {port}", answers)
        except BaseException:
            process.kill()
            process.wait(timeout=10)
            raise

    def log(self, port: int) -> str:
        lines = (self.directory / str(port) / "server.log").read_text(errors="replace")
        return " / ".join(lines.strip().splitlines()[-2:])

    def restart(self, port: int, *extra: str) -> None:
        """Start a stopped server again with the same command line (and empty data),
        plus ``extra`` arguments."""
        self._launch(port, *extra)

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5)


@dataclass
class Cluster:
    """Three masters with a replica each; ``url`` names the first node only."""

    servers: Servers
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot now."""
        with client(self.ports[0]) as node:
            slot = int(node.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in node.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise TopologyError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        with client(master) as node:
            info = node.info("replication")
        return int(info["slave0"]["port"])

    def fail_over(self, master: int) -> int:
        """CLUSTER FAILOVER on the master's replica; returns the new master's port."""
        replica = self.replica_of(master)
        with client(replica) as node:
            node.execute_command("CLUSTER FAILOVER")
        _wait_until(
            f"failover to {replica}",
            lambda: client(replica).info("replication")["role"] == "master",
        )
        _wait_until("cluster state after failover", lambda: self._ok(self.ports))
        return replica

    def masters(self) -> list[int]:
        with client(self.ports[0]) as node:
            return sorted({int(master[1]) for _, _, master, *_ in node.cluster("slots")})

    def move_slot_of(self, key: str, to: int, *, pause: float = 0.0) -> None:
        """Move the slot of ``key`` to master ``to`` the way ``redis-cli --cluster
        reshard`` does (IMPORTING, MIGRATING, MIGRATE of its keys, SETSLOT NODE),
        sleeping ``pause`` seconds between keys so that clients meet ASK redirections."""
        source = self.master_of(key)
        with client(source) as src, client(to) as dst:
            slot = int(src.execute_command("CLUSTER KEYSLOT", key))
            source_id = src.execute_command("CLUSTER MYID").decode()
            target_id = dst.execute_command("CLUSTER MYID").decode()
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
                for name in keys:
                    src.execute_command("MIGRATE", "127.0.0.1", to, name, 0, 5000)
                    time.sleep(pause)
            for port in self.masters():
                with client(port) as master:
                    master.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        _wait_until(f"slot {slot} on {to}", lambda: self.master_of(key) == to)

    @staticmethod
    def _ok(ports: list[int]) -> bool:
        for port in ports:
            with client(port) as node:
                if node.cluster("info").get("cluster_state") != "ok":
                    return False
        return True


def start_cluster(directory: Path, *, attempts: int = 3) -> Cluster:
    """A cluster on free ports; tried again on other ports when one was taken meanwhile."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_cluster(directory / f"attempt-{attempt}")
        except TopologyError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_cluster(directory: Path) -> Cluster:
    servers = Servers(directory)
    ports = free_ports(6, with_bus_port=True)
    try:
        for port in ports:
            servers.start(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000",
            )  # fmt: skip
        nodes = [f"127.0.0.1:{port}" for port in ports]
        create = ["redis-cli", "--cluster", "create", *nodes]
        created = subprocess.run(
            [*create, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if created.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create: {created.stdout}{created.stderr}")
        cluster = Cluster(servers, ports)
        _wait_until("cluster state ok on every node", lambda: Cluster._ok(ports))
        _wait_until("every replica in sync", lambda: all(map(_in_sync, ports)))
    except BaseException:
        servers.close()
        raise
    return cluster


def _in_sync(port: int) -> bool:
    """A master, or a replica whose link to its master is up."""
    with client(port) as node:
        info = node.info("replication")
    return bool(info["role"] == "master" or info.get("master_link_status") == "up")


@dataclass
class Sentinels:
    """A primary, a replica and three Sentinels watching them as ``service``."""

    servers: Servers
    primary: int
    replica: int
    sentinels: list[int]
    service: str = "ro-primary"

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0" + (f"?{query}" if query else "")

    def switches(self) -> list[str]:
        """The primary changes the first Sentinel logged (``+switch-master``), oldest
        first: a test that lost data says whether Sentinel failed over twice."""
        log = self.servers.directory / str(self.sentinels[0]) / "server.log"
        lines = log.read_text(errors="replace").splitlines()
        return [line.split("# ", 1)[-1] for line in lines if "+switch-master" in line]

    def current_primary(self) -> int:
        with client(self.sentinels[0]) as sentinel:
            _, port = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)


def start_sentinels(directory: Path) -> Sentinels:
    servers = Servers(directory)
    primary, replica, *sentinels = free_ports(5)
    try:
        servers.start(primary)
        servers.start(replica, "--replicaof", "127.0.0.1", str(primary))
        for port in sentinels:
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor ro-primary 127.0.0.1 {primary} 2\n"
                "sentinel down-after-milliseconds ro-primary 1000\n"
                "sentinel failover-timeout ro-primary 5000\n"
                "sentinel parallel-syncs ro-primary 1\n"
            )
            servers.start(port, str(conf), "--sentinel")
        _wait_until(
            "replica in sync",
            lambda: client(replica).info("replication").get("master_link_status") == "up",
        )
        for port in sentinels:
            _wait_until(
                f"sentinel {port} sees the replica and its peers",
                partial(_sentinel_ready, port, len(sentinels)),
            )
    except BaseException:
        servers.close()
        raise
    return Sentinels(servers, primary, replica, sentinels)


def _sentinel_ready(port: int, count: int) -> bool:
    with client(port) as sentinel:
        master = sentinel.sentinel_master("ro-primary")
    return int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= count - 1
