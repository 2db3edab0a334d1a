"""A real ``redis-server`` for tests, on a free loopback port, and the engine value that
carries it to the servers a test starts.

``RedisServer(directory).start()`` runs Debian's ``redis-server`` (found through
``external.require``: skipped locally when missing, failed under CI) with no
persistence; ``kill()`` and ``start()`` again take it down and bring it back on the same
port (the fault tests). It is stopped by its PID, never by name.

``RedisClusterServer(directory).start()``: a Redis Cluster of the test's own, three
masters with a replica each (``redis-server --cluster-enabled yes`` on free ports, its
bus ports free too, created with ``redis-cli --cluster create``).

``EngineRun``: the ``engine`` fixture's value. A ``str`` (``"mesh"``, ``"redis"``) that
also carries the address of the session's Redis for the hub (or the seed nodes of its
Redis Cluster, for the fixture's ``"redis-cluster"`` runs), which
``serverproc.with_engine`` writes into each server's ``[cluster.redis]``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import external
import redis
from serverproc import free_port
from toolkit import timeout, wait_until

__all__ = [
    "REDIS_CLUSTER",
    "EngineRun",
    "RedisClusterServer",
    "RedisServer",
    "SentinelServer",
    "redis_command",
]


#: The ``engine`` fixture's run of the hub on a Redis Cluster (``conftest.py``): named by a
#: module's ``ENGINES`` or an ``engines`` mark where it is proved, not run everywhere.
REDIS_CLUSTER = "redis-cluster"


class EngineRun(str):
    """An engine's name with what its servers need: ``redis``, the address of the
    Redis a hub joins through (``""`` for the mesh), or ``cluster_nodes``, the seeds of
    the Redis Cluster it joins through."""

    redis: str
    cluster_nodes: tuple[str, ...]

    def __new__(cls, name: str, redis: str = "", cluster_nodes: tuple[str, ...] = ()) -> EngineRun:
        run = super().__new__(cls, name)
        run.redis = redis
        run.cluster_nodes = cluster_nodes
        return run


CLUSTER_DOC = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"


def documented_acl_rule(prefix: str = "shardws:") -> list[str]:
    """The ACL rule docs/cluster.md gives for a restricted user of one Redis (between
    its acl markers), for the key prefix ``prefix`` (the docs' is ``shardws:``)."""
    text = CLUSTER_DOC.read_text().split("<!-- acl:begin -->", 1)[1]
    block = text.split("<!-- acl:end -->", 1)[0].replace("```", "")
    return [word.replace("shardws:", prefix) for word in block.split()]


def redis_command(port: int, *args: str, limit: float = 2.0) -> bytes:
    """Send one command to the Redis on ``port`` and return its raw RESP answer's first
    read (enough for the short answers the tests ask for)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(limit)) as sock:
        sock.sendall(b"".join(parts))
        return sock.recv(65536)


class RedisServer:
    """One ``redis-server`` process this test session started."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"
        self.paused = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [external.require("redis-server")]

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *self._command(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(self.log_path),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 10, 0.05, lambda: f"redis-server not up:\n{self.logs()}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.logs()}")
        try:
            # Any answer means it serves (an error too: the default user may be off).
            return redis_command(self.port, "PING", limit=0.5)[:1] in (b"+", b"-")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        return redis_command(self.port, *args)

    def kill(self) -> None:
        """SIGKILL it (a crash): every connection drops, every subscription is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout(10))

    def pause(self) -> None:
        """SIGSTOP it: it answers nothing (a replica stops following its master)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout(5))

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class SentinelServer(RedisServer):
    """One ``redis-sentinel`` monitoring ``master`` as ``name`` (quorum 1: it alone
    decides a failover, after ``down_after`` ms without an answer)."""

    def __init__(self, directory: Path, name: str, master: RedisServer, down_after: int) -> None:
        super().__init__(directory)
        self.name = name
        self.config = directory / "sentinel.conf"
        self.monitor = (master.port, down_after)

    def _command(self) -> list[str]:
        port, down_after = self.monitor
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"sentinel monitor {self.name} 127.0.0.1 {port} 1\n"
            f"sentinel down-after-milliseconds {self.name} {down_after}\n"
            f"sentinel failover-timeout {self.name} 10000\n"
        )
        return [external.require("redis-sentinel"), str(self.config)]

    def master(self) -> int:
        """The port of the master this sentinel names now."""
        answer = self.command("SENTINEL", "get-master-addr-by-name", self.name).decode()
        return int(answer.split("\r\n")[4])


class RedisClusterServer:
    """A Redis Cluster this test session started: ``masters`` masters, each with one
    replica (``nodes[:masters]`` are the masters at creation), every node on a free
    port with a free cluster bus port (``--cluster-port``) and its ``nodes.conf`` in its
    own directory. ``node_timeout`` (ms): how long a master is unreachable before its
    replica is promoted."""

    def __init__(self, directory: Path, masters: int = 3, node_timeout: int = 1000) -> None:
        self.directory = directory
        self.masters = masters
        self.nodes = [
            RedisServer(
                directory / f"node{index}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(node_timeout),
                # A replica may be promoted however long it was cut off (the lagging
                # replica of the failover tests is SIGSTOPped first).
                "--cluster-replica-validity-factor",
                "0",
            )
            for index in range(masters * 2)
        ]

    @property
    def seeds(self) -> list[str]:
        """Every node's address (what ``[cluster.redis] cluster_nodes`` lists)."""
        return [node.address for node in self.nodes]

    def start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                external.require("redis-cli"),
                "--cluster",
                "create",
                *self.seeds,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout(60),
        )
        wait_until(self.ready, 30, 0.1, lambda: f"the cluster never became ready: {self.info()}")
        return self

    def cli(self, *args: str, limit: float = 60) -> str:
        """``redis-cli ARGS`` (e.g. ``--cluster reshard ...``); its output."""
        done = subprocess.run(
            [external.require("redis-cli"), *args],
            check=True,
            capture_output=True,
            timeout=timeout(limit),
        )
        return done.stdout.decode(errors="replace")

    def live(self) -> list[RedisServer]:
        """The nodes running and not paused (SIGSTOP)."""
        return [
            n for n in self.nodes if n.proc is not None and n.proc.poll() is None and not n.paused
        ]

    def info(self) -> str:
        return "; ".join(f"{node.port}: {cluster_state(node)}" for node in self.live())

    def ready(self) -> bool:
        """Every live node says ``cluster_state:ok`` (every slot served)."""
        return all(cluster_state(node) == "ok" for node in self.live())

    def node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def slot_of(self, name: str) -> int:
        return int(client(self.live()[0]).execute_command("CLUSTER", "KEYSLOT", name))

    def owner(self, name: str, asked: RedisServer | None = None) -> RedisServer:
        """The master serving the slot of ``name`` (a key or a shard channel), as
        ``asked`` (by default any live node) sees it."""
        return self.owner_of_slot(self.slot_of(name), asked)

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The node replicating ``master`` now."""
        for node in self.live():
            info = client(node).info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return node
        raise AssertionError(f"{master.port} has no replica: {self.info()}")

    def masters_now(self) -> list[RedisServer]:
        """The live nodes that are masters serving slots now."""
        ports = {int(r[2][1]) for r in client(self.live()[0]).execute_command("CLUSTER", "SLOTS")}
        return [self.node_at(port) for port in sorted(ports)]

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Reshard one slot to ``target`` as ``redis-cli --cluster reshard`` does, for
        just that slot: ``CLUSTER SETSLOT ... IMPORTING/MIGRATING``, ``MIGRATE`` of its
        keys, then ``SETSLOT ... NODE`` on every master (the source drops the slot's
        shard channels then)."""
        source = self.owner_of_slot(slot)
        source_id, target_id = node_id(source), node_id(target)
        client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for _ in range(1000):  # bounded: the tests keep a few keys per slot
            keys = client(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            client(source).execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
            )
        for node in [target, source, *(m for m in self.masters_now() if m not in (source, target))]:
            client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def owner_of_slot(self, slot: int, asked: RedisServer | None = None) -> RedisServer:
        node = asked or self.live()[0]
        for first, last, master, *_ in client(node).execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return self.node_at(int(master[1]))
        raise AssertionError(f"slot {slot} is not served: {self.info()}")

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
            node.stop()

    def __enter__(self) -> RedisClusterServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def client(node: RedisServer) -> redis.Redis:
    """A plain (not cluster-aware) client of one node, for the tests' own commands."""
    return redis.Redis(port=node.port, socket_timeout=timeout(5))


def node_id(node: RedisServer) -> str:
    return client(node).execute_command("CLUSTER", "MYID").decode()


def cluster_state(node: RedisServer) -> str:
    """``ok`` when ``node`` sees every slot served (its ``CLUSTER INFO``)."""
    try:
        info = client(node).execute_command("CLUSTER", "INFO").decode()
    except (OSError, redis.RedisError):
        return "unreachable"
    state = [line for line in info.splitlines() if line.startswith("cluster_state:")]
    return state[0].partition(":")[2] if state else "?"
