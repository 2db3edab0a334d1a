"""Start a real ``shardws serve`` subprocess on free loopback ports, for integration tests.

Timeouts scale with ``SHARDWS_TEST_TIMEOUT_SCALE`` (default 1) for slow machines. A
``ServerProcess`` is a context manager: ``with ServerProcess(tmp_path).start() as proc:``
stops it on the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from toolkit import DEFAULT_ENGINE, timeout, wait_until

__all__ = [
    "ServerProcess",
    "free_port",
    "http_json",
    "loopback_cluster",
    "run_cli",
    "terminate",
    "timeout",
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shardws ARGS`` to completion (bounded), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "shardws", *args],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        env=None if env is None else {**os.environ, **env},
    )


def terminate(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Stop a server: SIGTERM (it drains), and SIGKILL if it is still there after 15 s
    (scaled), to its whole process group when ``group`` (it was started in its own)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout(15))
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)


def http_json(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, Any]:
    """GET ``url`` (POST ``body`` as JSON if given) with the admin API key ``key`` if
    given: the status and the decoded JSON body, for error statuses too."""
    headers = {} if key is None else {"X-API-Key": key}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout(5)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_engine(extra: str, engine: str, group: str = "") -> str:
    """``extra`` (TOML tables) with ``[cluster] engine`` set: in its ``[cluster]`` table
    when it has one (TOML allows a table once), else in a table of its own. An engine
    that carries a Redis address (``redisproc.EngineRun``) gets ``[cluster.redis]`` too
    (in ``extra``'s own when it has one), with a key prefix of its own per ``group`` (the
    servers of one cluster share it), so the clusters of a session's tests never hear
    each other on the one Redis."""
    line = f'engine = "{engine}"'
    if "[cluster]\n" in extra:
        extra = extra.replace("[cluster]\n", f"[cluster]\n{line}\n", 1)
    else:
        extra = f"{extra}\n[cluster]\n{line}\n"
    redis = getattr(engine, "redis", "")
    seeds = getattr(engine, "cluster_nodes", ())
    if redis or seeds:
        prefix = "t" + hashlib.sha1(group.encode()).hexdigest()[:12] + ":"
        where = f"cluster_nodes = {json.dumps(list(seeds))}" if seeds else f'address = "{redis}"'
        lines = f'{where}\nprefix = "{prefix}"\n'
        if "[cluster.redis]\n" in extra:  # the test's own keys (e.g. presence_ttl)
            extra = extra.replace("[cluster.redis]\n", f"[cluster.redis]\n{lines}", 1)
        else:
            extra += f"\n[cluster.redis]\n{lines}"
    return extra


def hub_ttl(engine: str, ttl: float = 12.0) -> str:
    """On the Redis hub, a ``presence_ttl`` of the test's own instead of its 30 s default
    (a stalled or killed host's presence members and Pusher channels go within it:
    ``redispusher.bound``): shorter, so that the test waits less, or longer, so that
    only another path can have removed them; nothing on the mesh."""
    return "" if engine == "mesh" else f"\n[cluster.redis]\npresence_ttl = {ttl}\n"


class ServerProcess:
    """A ``shardws serve -c FILE`` child process with its own config and ports."""

    def __init__(
        self,
        tmp_path: Path,
        workers: int = 2,
        extra: str = "",
        server: str = "",
        admin: str = "",
        engine: str = DEFAULT_ENGINE,
        group: str | None = None,
    ) -> None:
        """``group``: the servers of one cluster (the Redis hub's key prefix); by default
        this server's own directory."""
        self.config_path = tmp_path / "shardws.toml"
        self.log_path = tmp_path / "server.log"
        extra = with_engine(extra, engine, str(tmp_path) if group is None else group)
        self._settings = (workers, extra, server, admin)
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        workers, extra, server, admin = self._settings
        self.ws_port = free_port()
        self.admin_port = free_port()
        self.config_path.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.ws_port}
workers = {workers}
drain_timeout = 5
{server}

[admin]
host = "127.0.0.1"
port = {self.admin_port}
{admin}

[log]
level = "info"
{extra}
"""
        )
        self.url = f"ws://127.0.0.1:{self.ws_port}/ws"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"

    def start(
        self, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> ServerProcess:
        """Start the server and wait until it is healthy; ``preexec_fn`` runs in the child
        before ``shardws serve`` (e.g. to lower a resource limit)."""
        # A "free" port can be taken by someone's ephemeral port before the server binds
        # it (other tests, load generators): then retry on fresh ports, a bounded number
        # of times.
        for attempt in range(3):
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardws", "serve", "-c", str(self.config_path)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=preexec_fn,
            )
            try:
                self.wait_healthy()
                return self
            except AssertionError:
                if attempt == 2 or "Address already in use" not in self.logs():
                    self.stop()  # no caller's ``with`` or ``finally`` will
                    raise
                self._log.close()
                self._write_config()
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        return http_json(self.admin_url + "/health")

    def wait_healthy(
        self, limit: float = 20.0, exclude_pids: set[int] | None = None
    ) -> dict[str, Any]:
        """Wait until /health says ok (and, if given, no worker has a pid in exclude_pids)."""
        last: dict[str, Any] = {}

        def healthy() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                status, body = self.health()
                last["health"] = body
                pids = {w["pid"] for w in body["per_worker"]}
            except (OSError, ValueError):
                return None
            if status == 200 and not (exclude_pids and pids & exclude_pids):
                return body
            return None

        return wait_until(
            healthy,
            limit,
            message=lambda: (
                f"server not healthy in time; last health {last.get('health')}\n" + self.logs()
            ),
        )

    def wait_heartbeat(self, limit: float = 5.0) -> None:
        """Wait until every worker has stamped its heartbeat since this call: each copies
        its counters into shared memory just before, so /health, /metrics and /api/stats
        show everything the workers did before the call."""
        since = time.monotonic()

        def every_worker_beat() -> bool:
            elapsed = time.monotonic() - since  # before the request: its ages are later
            try:
                _, body = self.health()
            except (OSError, ValueError):
                return False
            # heartbeat_age is rounded to the millisecond
            return all(w["heartbeat_age"] + 0.001 < elapsed for w in body["per_worker"])

        wait_until(every_worker_beat, limit, message="no heartbeat from every worker in time")

    def wait_log(self, pattern: str, count: int = 1, limit: float = 10.0) -> None:
        """Wait until the log has ``count`` matches of the regular expression ``pattern``."""
        wait_until(
            lambda: len(re.findall(pattern, self.logs())) >= count,
            limit,
            message=lambda: f"no {count}x {pattern!r} in time:\n{self.logs()}",
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, limit: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout(limit))

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        """The started server (``start()`` it first); ``with`` stops it on the way out."""
        if self.proc is None:
            raise RuntimeError("start() the ServerProcess before entering 'with'")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def loopback_cluster(
    tmp_path: Path, extra: str = "", engine: str = DEFAULT_ENGINE, admin: str = ""
) -> tuple[ServerProcess, ServerProcess]:
    """Two one-worker hosts ``a`` and ``b`` of a cluster on loopback (plaintext bridges,
    or hubs through the Redis an ``EngineRun`` names) joined by ``engine``, each
    configured with ``extra`` too (and ``admin``: lines of ``[admin]``), not started
    (directories under ``tmp_path``)."""
    bridges = {"a": free_port(), "b": free_port()}
    peers = ", ".join(f'"127.0.0.1:{port}"' for port in bridges.values())
    hosts = []
    for host_id, port in bridges.items():
        (tmp_path / host_id).mkdir()
        mesh = f'listen = "tcp://127.0.0.1:{port}"\npeers = [{peers}]\nallow_plaintext = true\n'
        cluster = f"""{extra}
[cluster]
host_id = "{host_id}"
{mesh if engine == "mesh" else ""}"""
        hosts.append(
            ServerProcess(
                tmp_path / host_id,
                workers=1,
                extra=cluster,
                admin=admin,
                engine=engine,
                group=str(tmp_path),
            )
        )
    return hosts[0], hosts[1]
