"""Start and stop the peer servers as subprocesses.

    from benchmarks.peers.launch import PEERS, start_peer, stop_peer

    proc = start_peer("websockets", 9002)   # returns once it is listening
    ...                                      # proc.url == "ws://127.0.0.1:9002/ws"
    stop_peer(proc)                          # SIGTERM, then SIGKILL after a timeout

``node_ws`` needs ``node`` and ``npm``; the first start installs ``ws`` into this
directory from its lock file (``tests/nodepackages.py``: ``npm ci``, once, serialized
across processes) and raises ``PeerUnavailable`` when Node is missing or the install
fails, so callers can skip it. The Python peers run on the current interpreter
(``sys.executable``).
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The npm installer the tests share (tests/ is not a package: the same path insert as
# benchmarks/cluster.py's).
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from nodepackages import NpmUnavailable, install  # noqa: E402

#: Peer names, in the order reports list them.
PEERS = ["raw_picows", "websockets", "aiohttp", "node_ws"]

_PYTHON_SCRIPTS = {
    "raw_picows": "raw_picows.py",
    "websockets": "websockets_server.py",
    "aiohttp": "aiohttp_server.py",
}
_READY_PREFIX = "listening on "


class PeerUnavailable(RuntimeError):
    """The peer cannot run on this machine (e.g. no Node.js); not a bug in the peer."""


class PeerProcess(subprocess.Popen[bytes]):
    """A running peer: a ``Popen`` that also knows its name and WebSocket URL."""

    name: str = ""
    url: str = ""


def ensure_node_modules(timeout: float = 180) -> None:
    """Install the Node peer's dependencies into ``benchmarks/peers/node_modules`` once."""
    if shutil.which("node") is None:
        raise PeerUnavailable("node_ws needs 'node' on PATH")
    try:
        install(HERE, timeout)
    except NpmUnavailable as exc:
        raise PeerUnavailable(f"node_ws: {exc}") from None


def peer_command(name: str, host: str, port: int) -> list[str]:
    """The command line that runs peer ``name`` (without installing anything)."""
    flags = ["--host", host, "--port", str(port)]
    if name == "node_ws":
        node = shutil.which("node")
        if node is None:
            raise PeerUnavailable("node_ws needs 'node' on PATH")
        return [node, str(HERE / "ws_server.js"), *flags]
    try:
        script = _PYTHON_SCRIPTS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None
    return [sys.executable, str(HERE / script), *flags]


def start_peer(name: str, port: int, host: str = "127.0.0.1", timeout: float = 30) -> PeerProcess:
    """Start peer ``name`` on ``host:port`` and return once it prints its listening line.

    ``port`` 0 lets the kernel pick; ``url`` of the result has the real one. Raises
    ``PeerUnavailable`` (node_ws without Node or npm), ``RuntimeError`` when the server
    exits or does not report ready within ``timeout`` seconds (it is killed then).
    The server's stderr is inherited, so its errors show up in the caller's output.
    """
    if name == "node_ws":
        ensure_node_modules()
    proc = PeerProcess(peer_command(name, host, port), stdout=subprocess.PIPE, cwd=HERE)
    proc.name = name
    try:
        line = _read_first_line(proc, time.monotonic() + timeout)
    except BaseException:
        _kill(proc)
        raise
    if not line.startswith(_READY_PREFIX + "ws://"):
        _kill(proc)
        raise RuntimeError(f"peer {name}: unexpected first line {line!r}")
    proc.url = line.removeprefix(_READY_PREFIX)
    return proc


def _read_first_line(proc: PeerProcess, deadline: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"peer {proc.name}: not listening after the timeout")
            if not selector.select(min(remaining, 0.5)):
                continue
            # os.read, not the file object: it returns what is there instead of blocking
            # until a full buffer arrives.
            chunk = os.read(fd, 4096)
            if not chunk:
                code = proc.wait(5)
                raise RuntimeError(f"peer {proc.name} exited with {code} before listening")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def stop_peer(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM the peer and wait; SIGKILL it if it has not exited after ``timeout`` s.

    Returns the exit code (negative for a signal, as ``Popen.returncode``).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.wait()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
