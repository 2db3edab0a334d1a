"""A real ``redis-server`` for tests, on a free loopback port, and the engine value that
carries it to the servers a test starts.

``RedisServer(directory).start()`` runs Debian's ``redis-server`` (found through
``external.require``: skipped locally when missing, failed under CI) with no
persistence; ``kill()`` and ``start()`` again take it down and bring it back on the same
port (the fault tests). It is stopped by its PID, never by name.

``EngineRun``: the ``engine`` fixture's value. A ``str`` (``"mesh"``, ``"redis"``) that
also carries the address of the session's Redis for the hub, which
``serverproc.with_engine`` writes into each server's ``[cluster.redis]``.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import external
from serverproc import free_port
from toolkit import timeout, wait_until

__all__ = ["EngineRun", "RedisServer", "SentinelServer", "redis_command"]


class EngineRun(str):
    """An engine's name with what its servers need: ``redis``, the address of the
    Redis a hub joins through (``""`` for the mesh)."""

    redis: str

    def __new__(cls, name: str, redis: str = "") -> EngineRun:
        run = super().__new__(cls, name)
        run.redis = redis
        return run


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
