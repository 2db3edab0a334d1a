"""The backend ingress: a ZeroMQ PULL socket in the admin process ([ingress] bind).

Backends connect PUSH sockets (``shardws.Publisher``) and send publications without
HTTP. This module only moves messages: it reads them from the admin's event loop and
hands each one (a list of frames) to ``handle``, which parses and publishes it; the wire
format is ``backend.parse_ingress``'s.

Guarantees:

* At-most-once, like the bus: a message is handed to ``handle`` at most once; messages
  queued in this socket when the admin process stops are lost (publishers' PUSH sockets
  keep what they have not sent yet, up to their high-water mark, and reconnect).
* Per-publisher order: messages of one PUSH socket are handled in the order sent.
* A bad message never stops the ingress: ``handle`` raising ``ValueError`` counts it in
  ``rejected`` and logs it, rate-limited (a hostile publisher cannot flood the journal).
  Messages larger than ``max_message_bytes`` make ZeroMQ drop the sender's connection.
* Bounded work per loop iteration: at most ``BATCH`` messages are read before the loop
  runs other callbacks (HTTP requests, heartbeats), so a flood cannot starve them.
* With Curve (``[ingress] curve_secret_key_file``) traffic is encrypted and only
  publishers whose public key is in ``curve_authorized_keys`` get through the handshake
  (a ZAP handler on this module's own zmq Context); anything else is never read.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from shardws.config import IngressConfig
from shardws.log import RateLimitedLogger

log = logging.getLogger("shardws.ingress")

#: Messages read per loop iteration before yielding to other callbacks.
BATCH = 256


class _AuthorizedKeys:
    """ZAP credentials provider: the Curve public keys allowed to connect."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = {key.encode() for key in keys}

    def callback(self, _domain: str, key: bytes) -> bool:
        return key in self._keys


class Ingress:
    """The PULL socket. Create and use inside the admin's event loop, after fork."""

    def __init__(
        self,
        config: IngressConfig,
        handle: Callable[[list[bytes]], None],
        max_message_bytes: int,
    ) -> None:
        self.received = 0  # messages read
        self.rejected = 0  # of those, refused by ``handle``
        self._config = config
        self._handle = handle
        self._max_message_bytes = max_message_bytes
        self._loop = asyncio.get_running_loop()
        self._peer_log = RateLimitedLogger("shardws.ingress")
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._drain_scheduled = False

    def start(self) -> None:
        """Bind and start reading. Raises ``zmq.ZMQError`` if the endpoint cannot be bound
        (e.g. the port is in use): the admin then fails to boot with that message."""
        config = self._config
        self._ctx = zmq.Context(io_threads=1)
        sock = self._sock = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, config.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if config.curve_secret_key:
            # The ZAP handler must run before the first handshake, so before bind.
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("shardws.zap"))
            self._auth.start()
            self._auth.configure_curve_callback(
                "*", credentials_provider=_AuthorizedKeys(config.curve_authorized_keys)
            )
            secret = config.curve_secret_key.encode()
            sock.curve_secretkey = secret
            sock.curve_publickey = zmq.curve_public(secret)
            sock.curve_server = True
        if config.bind.startswith("ipc://"):
            path = config.bind.removeprefix("ipc://")
            if os.path.exists(path):  # left by this process's dead predecessor
                os.unlink(path)
        try:
            sock.bind(config.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise zmq.ZMQError(exc.errno, f"[ingress] bind {config.bind!r}: {exc}") from None
        self._loop.add_reader(sock.FD, self._drain)
        self._schedule()
        log.info(
            "ingress on %s (%s)", config.bind, "curve" if config.curve_secret_key else "plaintext"
        )

    def close(self) -> None:
        """Stop reading and close the socket; queued messages are dropped."""
        if self._sock is not None:
            if not self._sock.closed:
                self._loop.remove_reader(self._sock.FD)
            self._sock.close(linger=0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _schedule(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        # ZMQ_FD is edge-triggered: read until EAGAIN, or reschedule ourselves when the
        # batch is used up, because the FD will not signal again for what is queued.
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            try:
                self._handle(frames)
            except ValueError as exc:
                self.rejected += 1
                self._peer_log.warning("ingress: message refused: %s", exc)
        self._schedule()
