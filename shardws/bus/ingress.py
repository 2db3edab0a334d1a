"""The backend ingress: ZeroMQ sockets in the admin process for publishing without HTTP.

* ``Ingress``: a PULL socket (``[ingress] bind``); backends connect PUSH sockets
  (``shardws.Publisher``) and send without any answer.
* ``AckedIngress``: a ROUTER socket (``[ingress] acked_bind``); backends connect DEALER
  sockets (``shardws.Publisher(..., acknowledged=True)``) and send ``[request id,
  message frames...]``; each gets ``[request id, answer]`` back once ``answer`` is done
  (the admin: once every history channel's owner stored it; the answer is JSON).

This module only moves messages: it reads them from the admin's event loop and hands
each one (a list of frames) to its handler, which parses and publishes it; the wire
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
* Acknowledged: every well-formed request (an id and at least one frame) is answered
  once, unless the admin stops first (then the publisher times out and sends again with
  its idem); at most ``MAX_IN_FLIGHT`` are answered concurrently, beyond that the ROUTER
  is not read (publishers' DEALERs queue, up to their high-water mark). Answers to a
  publisher that is gone are dropped by ZeroMQ.
* With Curve (``[ingress] curve_secret_key_file``) traffic is encrypted and only
  publishers whose public key is in ``curve_authorized_keys`` get through the handshake
  (a ZAP handler on this module's own zmq Context); anything else is never read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from shardws.config import IngressConfig
from shardws.log import RateLimitedLogger

log = logging.getLogger("shardws.ingress")

#: Messages read per loop iteration before yielding to other callbacks.
BATCH = 256
#: Acknowledged requests being answered at most; the ROUTER is not read beyond that.
MAX_IN_FLIGHT = 10_000
#: Longest request id of the acknowledged form, bytes.
MAX_REQUEST_ID = 64


class _AuthorizedKeys:
    """ZAP credentials provider: the Curve public keys allowed to connect."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = {key.encode() for key in keys}

    def callback(self, _domain: str, key: bytes) -> bool:
        return key in self._keys


class Ingress:
    """The PULL socket. Create and use inside the admin's event loop, after fork."""

    _socket_type = zmq.PULL

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
        self._endpoint = config.bind

    def start(self) -> None:
        """Bind and start reading. Raises ``zmq.ZMQError`` if the endpoint cannot be bound
        (e.g. the port is in use): the admin then fails to boot with that message."""
        config = self._config
        self._ctx = zmq.Context(io_threads=1)
        sock = self._sock = self._ctx.socket(self._socket_type)
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
        endpoint = self._endpoint
        if endpoint.startswith("ipc://"):
            path = endpoint.removeprefix("ipc://")
            if os.path.exists(path):  # left by this process's dead predecessor
                os.unlink(path)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise zmq.ZMQError(exc.errno, f"[ingress] {endpoint!r}: {exc}") from None
        self._loop.add_reader(sock.FD, self._drain)
        self._schedule()
        log.info(
            "%s on %s (%s)",
            self._what(),
            endpoint,
            "curve" if config.curve_secret_key else "plaintext",
        )

    def _what(self) -> str:
        return "ingress"

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
            if not self._may_read():
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            try:
                self._take(frames)
            except ValueError as exc:
                self.rejected += 1
                self._peer_log.warning("ingress: message refused: %s", exc)
        self._schedule()

    def _may_read(self) -> bool:
        return True

    def _take(self, frames: list[bytes]) -> None:
        self._handle(frames)


class AckedIngress(Ingress):
    """The ROUTER socket of the acknowledged form: ``answer(frames)`` (the request id
    and the message's frames, without the publisher's routing frame) gives the JSON
    object sent back to the publisher with the request's id. Create and use inside the
    admin's event loop."""

    _socket_type = zmq.ROUTER

    def __init__(
        self,
        config: IngressConfig,
        answer: Callable[[list[bytes]], Awaitable[dict[str, Any]]],
        max_message_bytes: int,
    ) -> None:
        super().__init__(config, lambda _frames: None, max_message_bytes)
        self._answer = answer
        self._endpoint = config.acked_bind
        self._in_flight: set[asyncio.Task[None]] = set()
        self.answered = 0  # answers sent (any status)

    def _what(self) -> str:
        return "acknowledged ingress"

    def _may_read(self) -> bool:
        return len(self._in_flight) < MAX_IN_FLIGHT

    def _take(self, frames: list[bytes]) -> None:
        # ROUTER: [publisher identity, request id, message frames...].
        if len(frames) < 3 or len(frames[1]) > MAX_REQUEST_ID:
            if len(frames) == 2 and len(frames[1]) <= MAX_REQUEST_ID:
                self._reply(frames[:2], {"status": 400, "error": "a request without a message"})
            raise ValueError(
                f"expected [request id (at most {MAX_REQUEST_ID} bytes), message frames...]"
            )
        task = self._loop.create_task(self._respond(frames[:2], frames[1:]))
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if len(self._in_flight) == MAX_IN_FLIGHT - 1:
            self._schedule()  # reading paused at MAX_IN_FLIGHT: resume it

    async def _respond(self, route: list[bytes], message: list[bytes]) -> None:
        answer = await self._answer(message)
        if answer.get("status") == 400:
            self.rejected += 1
            self._peer_log.warning("acknowledged ingress: message refused: %s", answer["error"])
        self._reply(route, answer)

    def _reply(self, route: list[bytes], answer: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:  # closed meanwhile: the publisher asks again
            return
        try:
            sock.send_multipart([*route, json.dumps(answer).encode()], zmq.NOBLOCK)
            self.answered += 1
        except zmq.ZMQError:  # the publisher's pipe is full or gone: it asks again
            pass

    def close(self) -> None:
        """Stop reading; answers still being computed are dropped (their publishers
        time out and send again with their idem)."""
        for task in list(self._in_flight):
            task.cancel()
        super().close()
