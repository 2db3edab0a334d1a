"""``shardws.Publisher``: publish from a backend, over the ZeroMQ ingress or the HTTP API.

::

    from shardws import Publisher

    with Publisher("tcp://127.0.0.1:9766") as pub:                 # [ingress] bind
        pub.publish("news", {"text": "hello"})
        pub.publish_many(["news", "chat:lobby"], b'{"raw":"json"}')
        pub.publish_user("alice", {"note": "for every connection of alice"})

    with Publisher("http://127.0.0.1:9765", api_key="...") as pub:  # [admin] host:port
        pub.publish("news", {"text": "hello"})

``data`` is any JSON-serializable value, or ``bytes`` holding JSON text, which is sent
as is and reaches subscribers byte-for-byte (over ZeroMQ ``publish`` does no JSON
encoding at all then: the server checks it without decoding it).

Guarantees, by transport:

* ``tcp://`` / ``ipc://`` (a PUSH socket to the admin's PULL): **at-most-once,
  unacknowledged**. ``publish`` returns once the message is queued in this process;
  ZeroMQ connects, reconnects and sends in the background. While the server is
  unreachable up to ``hwm`` messages wait here; past that ``publish`` waits up to
  ``send_timeout`` seconds for room, then raises :class:`PublisherError`. Messages in
  flight when the admin process restarts are lost, and a message the server refuses
  (unknown namespace, bad JSON) is only counted and logged there (``GET /api/stats``:
  ``admin.ingress.rejected``). Order is kept per Publisher. ``close`` gives queued
  messages up to ``linger`` seconds to leave.
* ``http://`` / ``https://`` (``POST /api/publish`` on one kept-alive connection):
  **acknowledged**: ``publish`` returns the server's answer once it is final. For
  channels with history that answer comes after each channel's owner stored the
  publication and carries its ``epoch`` and ``offset`` (``positions``); for plain
  channels, after it was queued on the bus. Every request carries an idempotency key
  (``idem``: yours, or a fresh one per call), and a 503 (an owner being replaced: the
  server says ``Retry-After``) or a broken connection is retried with it for up to
  ``retry_timeout`` seconds, so a history channel stores the publication once however
  often it is sent. A plain channel has no history to check the key against: a
  connection that breaks after the server took the request can deliver it twice there.
  Errors that retrying cannot fix (HTTP 400/401/403), and the last 503 or connection
  error once ``retry_timeout`` passed, raise :class:`PublisherError`.

With CurveZMQ (``[ingress] curve_secret_key_file`` on the server) pass the server's
public key and this publisher's key pair (``shardws keygen``; the public key must be in
the server's ``curve_authorized_keys``). Keys are Z85 text (40 characters) or the path
of a file holding one (see :func:`read_key`). With wrong keys the handshake never
completes: messages queue here as while disconnected and nothing is delivered.

A Publisher is not thread-safe; use one per thread.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import zmq

__all__ = ["Publisher", "PublisherError", "read_key"]


class PublisherError(Exception):
    """A publication was not accepted; ``status`` is the HTTP status (0 otherwise)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(PublisherError):
    """A failure that sending the same request again may fix (503, broken connection)."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


#: Pauses between HTTP retries: the first, and the longest (also caps ``Retry-After``).
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 2.0
#: HTTP attempts per publication at most (``retry_timeout`` usually ends them first).
_MAX_ATTEMPTS = 1000


def _seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the delay form; a date or junk is ignored)."""
    if header is None or not header.strip().isdigit():
        return None
    return float(header.strip())


def read_key(key: str | bytes) -> bytes:
    """A Curve key as Z85 bytes: ``key`` itself if it is 40 characters of Z85, else the
    content of the file it names (surrounding whitespace removed)."""
    text = key.decode() if isinstance(key, bytes) else key
    if len(text) != 40 and os.path.exists(text):
        with open(text, encoding="ascii") as f:
            text = f.read().strip()
    if len(text) != 40:
        raise ValueError("a Curve key is 40 Z85 characters (or the path of a file with one)")
    return text.encode("ascii")


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _request(target: dict[str, Any], data: Any) -> bytes:
    """The JSON body of a publish request, embedding ``data`` bytes verbatim."""
    head = json.dumps(target, separators=(",", ":"), ensure_ascii=False).encode()
    return head[:-1] + b',"data":' + _json_bytes(data) + b"}"


class Publisher:
    """A connection to one shardws host for publishing (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str = "",
        curve_server_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        hwm: int = 100_000,
        send_timeout: float = 5.0,
        linger: float = 1.0,
        timeout: float = 10.0,
        retry_timeout: float = 30.0,
        acknowledged: bool = False,
    ) -> None:
        """``url``: ``tcp://HOST:PORT`` or ``ipc:///path`` (the server's ``[ingress]
        bind``, or with ``acknowledged`` its ``acked_bind``), or ``http(s)://HOST:PORT``
        (the admin port; needs ``api_key``). ``timeout``: seconds for one HTTP request
        or one acknowledged ZeroMQ request's answer; ``retry_timeout``: seconds an
        acknowledged publication is retried (503, broken connection, no answer) before
        ``PublisherError``. Connecting over ZeroMQ happens in the background: a server
        that is not up yet is not an error."""
        self.url = url
        self.timeout = timeout
        self.retry_timeout = retry_timeout
        self.acknowledged = acknowledged
        self.retries = 0  # requests sent again (503, a broken connection, no answer)
        self._sock: zmq.Socket[bytes] | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._http: http.client.HTTPConnection | None = None
        if url.startswith(("tcp://", "ipc://")):
            self._ctx = zmq.Context(io_threads=1)
            sock = self._sock = self._ctx.socket(zmq.DEALER if acknowledged else zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
            sock.setsockopt(zmq.LINGER, int(linger * 1000))
            if curve_server_key is not None:
                if curve_secret_key is None:
                    self.close()
                    raise ValueError("curve_server_key needs curve_secret_key (shardws keygen)")
                secret = read_key(curve_secret_key)
                sock.curve_secretkey = secret
                sock.curve_publickey = (
                    read_key(curve_public_key)
                    if curve_public_key is not None
                    else zmq.curve_public(secret)
                )
                sock.curve_serverkey = read_key(curve_server_key)
            sock.connect(url)
        elif url.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(url)
            connection = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            self._http = connection(parts.netloc, timeout=timeout)
            self._path = parts.path.rstrip("/") + "/api/publish"
            self._api_key = api_key
        else:
            raise ValueError(f"url must start with tcp://, ipc://, http:// or https://: {url!r}")
        if acknowledged and self._sock is None:
            self.close()
            raise ValueError("acknowledged=True is the ZeroMQ form (HTTP is always acknowledged)")

    def publish(self, channel: str, data: Any, *, idem: str | None = None) -> dict[str, Any] | None:
        """Publish ``data`` to ``channel`` (see the module docstring for guarantees).
        Returns the server's reply over HTTP, None over ZeroMQ (unacknowledged).
        ``idem`` (1..64 characters): the idempotency key; over HTTP a fresh one is made
        when it is None."""
        if self._sock is not None and (idem is None or self.acknowledged):
            # The two-frame form: the server validates data without decoding it.
            return self._zmq([channel.encode(), _json_bytes(data)], idem)
        return self._deliver({"channel": channel}, data, idem)

    def publish_many(
        self, channels: Sequence[str], data: Any, *, idem: str | None = None
    ) -> dict[str, Any] | None:
        """Publish the same ``data`` to each of ``channels`` (1..1000), encoded once."""
        return self._deliver({"channels": list(channels)}, data, idem)

    def publish_user(self, user: str, data: Any) -> dict[str, Any] | None:
        """Push ``data`` to every connection of ``user`` on the host (in a cluster, on
        every host), as ``{"type":"pub","user":...,"data":...}``."""
        return self._deliver({"user": user}, data, None)

    def _deliver(
        self, target: dict[str, Any], data: Any, idem: str | None
    ) -> dict[str, Any] | None:
        if self._sock is not None:
            return self._zmq(
                [_request(target if idem is None else {**target, "idem": idem}, data)], idem
            )
        key = idem if idem is not None else uuid.uuid4().hex
        body = _request({**target, "idem": key}, data)
        return self._retrying(lambda: self._post(body))

    def _zmq(self, frames: list[bytes], idem: str | None) -> dict[str, Any] | None:
        if not self.acknowledged:
            self._send(frames)
            return None
        # The request id is the idempotency key (the server's parse_acked_ingress).
        request_id = (idem if idem is not None else uuid.uuid4().hex).encode()
        return self._retrying(lambda: self._ask([request_id, *frames]))

    def _ask(self, frames: list[bytes]) -> dict[str, Any]:
        """One acknowledged ZeroMQ request: its answer, skipping late answers to earlier
        attempts and requests (their ids differ)."""
        self._send(frames)
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                break
            reply = sock.recv_multipart()
            if len(reply) != 2 or reply[0] != frames[0]:
                continue  # an answer to an earlier attempt, already settled
            answer: dict[str, Any] = json.loads(reply[1])
            status = answer.pop("status", 0)
            if status == 200:
                return answer
            message = f"{status}: {answer.get('error')}"
            if status == 503:
                raise _Retryable(message, 503, answer.get("retry_after"))
            raise PublisherError(message, int(status))
        raise _Retryable(f"{self.url}: no answer within {self.timeout} s", 0, None)

    def _send(self, frames: list[bytes]) -> None:
        if self._sock is None:
            raise PublisherError("publisher is closed")
        try:
            self._sock.send_multipart(frames)
        except zmq.Again:
            raise PublisherError(
                f"{self.url}: not connected, or its queue is full (send_timeout passed)"
            ) from None

    def _retrying(self, attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``attempt()`` (a request that carries its ``idem``) until the answer is final:
        a 503, a broken connection or no answer is sent again, after the server's
        ``Retry-After`` (at most ``_MAX_PAUSE``) or a growing pause, until
        ``retry_timeout`` passed."""
        deadline = time.monotonic() + self.retry_timeout
        pause = _FIRST_PAUSE
        for _ in range(_MAX_ATTEMPTS):
            try:
                return attempt()
            except _Retryable as exc:
                wait = min(exc.retry_after or pause, _MAX_PAUSE)
                if time.monotonic() + wait > deadline:
                    raise PublisherError(str(exc), exc.status) from None
                time.sleep(wait)
                pause = min(pause * 2, _MAX_PAUSE)
                self.retries += 1
        raise PublisherError(f"{self.url}: no final answer after {_MAX_ATTEMPTS} attempts", 503)

    def _post(self, body: bytes) -> dict[str, Any]:
        if self._http is None:
            raise PublisherError("publisher is closed")
        headers = {"Content-Type": "application/json", "X-API-Key": self._api_key}
        try:
            self._http.request("POST", self._path, body, headers)
            response = self._http.getresponse()
            reply = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._http.close()  # the next request reconnects
            raise _Retryable(f"{self.url}: {exc}", 0, None) from exc
        if response.status != 200:
            try:
                message = json.loads(reply)["error"]
            except (ValueError, KeyError, TypeError):
                message = reply.decode(errors="replace")
            if response.status == 503:
                raise _Retryable(
                    f"HTTP 503: {message}", 503, _seconds(response.getheader("Retry-After"))
                )
            raise PublisherError(f"HTTP {response.status}: {message}", response.status)
        result: dict[str, Any] = json.loads(reply)
        return result

    def close(self) -> None:
        """Close the connection; over ZeroMQ, queued messages get up to ``linger``
        seconds to leave. Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
