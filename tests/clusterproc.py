"""A multi-host shardws cluster on one machine: each host a full ``shardws serve`` (2
workers, admin, bridge) in its own network namespace (``tests/netns.py``), linked through
a switch namespace. Used by ``tests/test_cluster.py`` and ``benchmarks/cluster.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import external
from netns import Network
from serverproc import terminate
from toolkit import DEFAULT_ENGINE, timeout, wait_until
from wsclient import Client

from shardws.pure.auth import make_token

WS_PORT = 8765
ADMIN_PORT = 9765
BRIDGE_PORT = 9767
INGRESS_PORT = 9766
ACKED_INGRESS_PORT = 9768
REDIS_PORT = 6379
API_KEY = "cluster-test-key"
SECRET = "s3cret-for-tests-only-0123456789abcdef"


def keygen(path: Path) -> Path:
    """A new cluster key pair under ``path`` (prefix); returns the secret key file."""
    done = subprocess.run(
        [sys.executable, "-m", "shardws", "keygen", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert done.returncode == 0, done.stderr
    return Path(f"{path}.key_secret")


class Host:
    """One host of the cluster: its config, process and clients' way in."""

    def __init__(
        self,
        net: Network,
        name: str,
        directory: Path,
        peers: list[str],
        key_file: Path | None,
        extra: str = "",
        engine: str = DEFAULT_ENGINE,
        redis: str = "",
        redis_nodes: Sequence[str] = (),
        workers: int = 2,
        heartbeat_interval: float = 0.2,
        peer_timeout: float = 1.5,
    ) -> None:
        """``redis``: the address of the Redis the hosts join through with ``engine =
        "redis"`` (then ``peers`` and ``key_file`` are unused); ``redis_nodes`` instead,
        the seed nodes of a Redis Cluster (``cluster_nodes``). The short default heartbeat
        and timeout make the tests' failure detection quick; a benchmark passes its own."""
        self.net = net
        self.name = name
        self.address = net.address(name)
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "shardws.toml"
        self.log_path = directory / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        security = f'curve_secret_key_file = "{key_file}"' if key_file else "allow_plaintext = true"
        joining = f"""listen = "tcp://0.0.0.0:{BRIDGE_PORT}"
peers = {json.dumps(peers)}
resolve_interval = 1.0
{security}"""
        history = "history_size = 1000"
        if engine == "redis":
            joining = f'\n[cluster.redis]\naddress = "{redis}"\n'
            if redis_nodes:
                joining = f"\n[cluster.redis]\ncluster_nodes = {json.dumps(list(redis_nodes))}\n"
        self.config_path.write_text(
            f"""
[server]
host = "0.0.0.0"
port = {WS_PORT}
workers = {workers}
drain_timeout = 3
run_dir = "{directory / "run"}"

[admin]
host = "0.0.0.0"
port = {ADMIN_PORT}
api_key = "{API_KEY}"

[auth]
anonymous = true
secret = "{SECRET}"

[log]
level = "info"

[ingress]
bind = "tcp://0.0.0.0:{INGRESS_PORT}"
acked_bind = "tcp://0.0.0.0:{ACKED_INGRESS_PORT}"
allow_plaintext = true

[cluster]
engine = "{engine}"
host_id = "{name}"
heartbeat_interval = {heartbeat_interval}
peer_timeout = {peer_timeout}
{joining}

{extra}

[namespaces.default]

[namespaces.hist]
{history}
presence = true
"""
        )

    def start(self) -> Host:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = self.net.popen(
            self.name,
            [sys.executable, "-m", "shardws", "serve", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes every process
        )
        return self

    def kill(self) -> None:
        """SIGKILL the supervisor and every process it forked (a host crash)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout(10))
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, group=True)
        if hasattr(self, "_log"):
            self._log.close()

    def processes(self) -> dict[int, str]:
        """pid -> process title (``shardws: worker 0``, ``shardws: bridge``, ...) of every
        process of this host now: its process group, the supervisor's (empty if stopped)."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
                if int(stat[2]) == self.proc.pid:  # field 5, the process group
                    title = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0]
                    found[int(entry.name)] = title.decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
        return found

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        """/health (raises OSError or ValueError while the host is not up)."""
        _status, body = self.net.http_get(self.name, self.address, ADMIN_PORT, "/health", 2)
        return dict(json.loads(body))

    def view(self) -> tuple[str | None, list[str]]:
        """(view number, live host ids) from /health; (None, []) if not available."""
        try:
            cluster = self.health().get("cluster") or {}
        except (OSError, ValueError):
            return None, []
        return cluster.get("view"), sorted(cluster.get("hosts") or {})

    def api(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = self.net.http_post(
            self.name,
            self.address,
            ADMIN_PORT,
            path,
            json.dumps(body).encode(),
            {"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        reply = dict(json.loads(raw))
        assert status == 200, reply
        return reply

    def get(self, path: str) -> dict[str, Any]:
        status, raw = self.net.http_get(
            self.name, self.address, ADMIN_PORT, path, 5, headers={"X-API-Key": API_KEY}
        )
        assert status == 200, raw
        return dict(json.loads(raw))

    async def client(self, user: str | None = None) -> Client:
        """A protocol client connected to this host from inside its namespace."""
        query = f"?token={make_token(SECRET, user, 3600)}" if user else ""
        sock = await asyncio.to_thread(self.net.connect, self.name, self.address, WS_PORT)
        return await Client.connect(f"ws://{self.address}:{WS_PORT}/ws{query}", sock=sock)


def wait_converged(hosts: list[Host], expected: list[str], limit: float = 20.0) -> str:
    """Wait until every host in ``hosts`` sees exactly ``expected`` live hosts with one
    and the same view number; returns that number."""
    views: dict[str, tuple[str | None, list[str]]] = {}

    def converged() -> str | None:
        views.update((host.name, host.view()) for host in hosts)
        numbers = {number for number, _ in views.values()}
        if len(numbers) == 1 and all(ids == sorted(expected) for _, ids in views.values()):
            return numbers.pop()
        return None

    def failure() -> str:
        logs = "\n".join(f"--- {h.name}\n{h.logs()[-3000:]}" for h in hosts)
        return f"views did not converge on {expected}: {views}\n{logs}"

    return wait_until(converged, limit, 0.1, failure)


def redis_in(
    net: Network, name: str, directory: Path, port: int = REDIS_PORT, *extra: str
) -> subprocess.Popen[bytes]:
    """A ``redis-server`` in namespace ``name`` on ``port`` (the hosts' hubs reach it
    there), no persistence, ``extra`` arguments after the rest (``--cluster-enabled yes``);
    :class:`Network` kills it on leaving if it still runs."""
    directory.mkdir()
    command = [external.require("redis-server"), "--bind", net.address(name)]
    command += ["--port", str(port), "--save", "", "--appendonly", "no", *extra]
    command += ["--protected-mode", "no", "--dir", str(directory)]
    command += ["--logfile", str(directory / "redis.log")]
    return net.popen(name, command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
