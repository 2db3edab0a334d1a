"""Real Pusher clients and helpers for the Pusher tests: pusher-js in Node
(``tests/js/pusher_client.js``), driven over its stdin and stdout, a channel-auth
endpoint signing with the official ``pusher`` SDK, and the worker a socket id was issued
by. Node is an external tool (``tests/external.py``: missing, the test is skipped with the
reason, or fails under CI); pusher-js and Laravel Echo are installed into ``tests/js/node_modules``
from its lock file on first use (:func:`js_packages`).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pusher
from external import require, unavailable
from nodepackages import NpmUnavailable, install
from serverproc import ServerProcess, timeout

from shardws.pure.cluster import slot_of
from shardws.pure.history import owner_of
from shardws.pure.pusher.channels import internal_name, member_of

JS = Path(__file__).parent / "js"
SCRIPT = JS / "pusher_client.js"


def js_packages() -> Path:
    """``tests/js/node_modules`` (pusher-js, Laravel Echo), installed from the lock file the
    first time; when it cannot be, the missing-tool rule (skipped, or failed under CI)."""
    try:
        return install(JS, timeout(90))  # within pytest's 120 s for the test
    except NpmUnavailable as exc:
        unavailable(f"pusher-js and laravel-echo (tests/js): {exc}")


def node() -> str:
    """The node executable, with pusher-js installed for it; the missing-tool rule when
    Node is missing or the packages cannot be installed."""
    path = require("node")
    js_packages()
    return path


def kill_worker(proc: ServerProcess, slot: int) -> int:
    """SIGKILL the process of worker ``slot`` of ``proc`` (the supervisor restarts it);
    returns its pid."""
    pid = int({w["worker"]: w["pid"] for w in proc.wait_healthy()["per_worker"]}[slot])
    os.kill(pid, signal.SIGKILL)
    return pid


def presence_channel_owned_by(slot: int, stem: str, app_id: str = "1") -> str:
    """A presence channel name of app ``app_id`` whose owner, on a two-worker host, is
    worker ``slot``."""
    return next(
        name
        for name in (f"presence-{stem}{i}" for i in range(100))
        if owner_of(internal_name(app_id, name), [0, 1]) == slot
    )


def worker_of(socket_id: str) -> int:
    """The worker slot that issued ``socket_id`` (its member id is packed in it)."""
    member = member_of(socket_id)
    assert member is not None, socket_id
    return slot_of(member)


class PusherJs:
    """One pusher-js client in its own Node process. Everything it prints is kept in
    order; :meth:`expect` waits (bounded) for the next line that matches."""

    def __init__(self, key: str, port: int, auth_endpoint: str = "", **extra: Any) -> None:
        options = {"key": key, "host": "127.0.0.1", "port": port, **extra}
        if auth_endpoint:
            options["authEndpoint"] = auth_endpoint
            user_auth = auth_endpoint.replace("/pusher/auth", "/pusher/user-auth")
            options["userAuthEndpoint"] = user_auth
        self.proc = subprocess.Popen(
            [node(), str(SCRIPT), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.socket_id = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def command(self, op: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def expect(self, kind: str, limit: float = 10, **match: Any) -> dict[str, Any]:
        """The next printed message of type ``kind`` whose fields equal ``match``
        (others are kept in ``seen``); fails after ``limit`` seconds (scaled)."""
        deadline = time.monotonic() + timeout(limit)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} {match} from pusher-js; saw {self.seen[-20:]}"
            try:
                message = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert message is not None, f"pusher-js exited; saw {self.seen[-20:]}"
            self.seen.append(message)
            if message.get("type") == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    def take_pending(self) -> None:
        """Move every line printed so far into ``seen``, without waiting."""
        while True:
            try:
                message = self.lines.get_nowait()
            except queue.Empty:
                return
            if message is not None:
                self.seen.append(message)

    def connected(self) -> str:
        """Wait for the connection; returns (and keeps) its socket id."""
        self.socket_id = self.expect("connected")["socket_id"]
        return self.socket_id

    @property
    def worker(self) -> int:
        return worker_of(self.socket_id)

    def subscribe(self, channel: str) -> dict[str, Any]:
        self.command("subscribe", channel=channel)
        return self.expect("subscribed", channel=channel)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("exit")
                self.proc.wait(timeout(5))
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def pusher_clients(key: str, port: int, count: int, **options: Any) -> Iterator[list[PusherJs]]:
    """``count`` connected pusher-js clients, closed on the way out."""
    clients: list[PusherJs] = []
    try:
        for _ in range(count):
            clients.append(PusherJs(key, port, **options))
        for client in clients:
            client.connected()
        yield clients
    finally:
        for client in clients:
            client.close()


@contextmanager
def on_workers(
    key: str, port: int, slots: tuple[int, ...], **options: Any
) -> Iterator[list[PusherJs]]:
    """One connected pusher-js client on each worker of ``slots``, in that order: clients
    are connected one at a time (the kernel's SO_REUSEPORT hash picks the worker) until
    each slot has one, at most 40; all are closed on the way out."""
    clients: list[PusherJs] = []
    chosen: dict[int, PusherJs] = {}
    try:
        while len(chosen) < len(set(slots)):
            assert len(clients) < 40, f"no client on workers {set(slots) - set(chosen)}"
            client = PusherJs(key, port, **options)
            clients.append(client)
            client.connected()
            if client.worker in slots:
                chosen.setdefault(client.worker, client)
        yield [chosen[slot] for slot in slots]
    finally:
        for client in clients:
            client.close()


class AuthEndpoint:
    """The app's channel-auth endpoint, as an app backend runs it: pusher-js POSTs
    ``socket_id`` and ``channel_name`` (and the client's ``params``), the official SDK's
    ``authenticate`` signs. ``user`` in the params becomes the presence ``user_id``; a
    channel whose name contains ``forged`` is signed with a wrong secret. ``/pusher/user-auth``
    answers pusher-js's ``signin()`` with the SDK's ``authenticate_user`` (``user`` is
    the id)."""

    def __init__(
        self,
        client: pusher.Pusher,
        forger: pusher.Pusher,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> None:
        """``files``: what GET serves, by path: ``(content type, body)`` (a test page
        and pusher-js's browser build, from the same origin as the endpoint)."""
        self.requests = 0
        endpoint = self
        served = files or {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = served.get(self.path.partition("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", found[0])
                self.send_header("Content-Length", str(len(found[1])))
                self.end_headers()
                self.wfile.write(found[1])

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path == "/pusher/user-auth":  # pusher.signin(): authenticate_user
                    user = form.get("user", "anonymous")
                    signed = client.authenticate_user(form["socket_id"], {"id": user})
                    self._answer(json.dumps(signed).encode())
                    return
                channel, socket_id = form["channel_name"], form["socket_id"]
                signer = forger if "forged" in channel else client
                custom = None
                if channel.startswith("presence-"):
                    user = form.get("user", "anonymous")
                    custom = {"user_id": user, "user_info": {"name": user.title()}}
                self._answer(json.dumps(signer.authenticate(channel, socket_id, custom)).encode())

            def _answer(self, body: bytes) -> None:
                endpoint.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = self.origin + "/pusher/auth"
        self.user_url = self.origin + "/pusher/user-auth"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AuthEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
