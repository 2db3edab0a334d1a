"""``shardws.client``: an asyncio client (on picows) that stays subscribed through
restarts, drains, worker crashes and network cuts.

::

    from shardws.client import connect

    async with connect("ws://127.0.0.1:8765/ws", token=token, get_token=fetch) as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hello"})
        async for pub in sub:                  # Publication(channel, data, offset, epoch)
            print(pub.data)

Guarantees (docs/clients.md has the table with the tests that check each line):

* **Reconnects** after any close the protocol marks "reconnect" (1001, 1006, 1011,
  4500-4999, a lost TCP path detected by pings) with exponential backoff and *full
  jitter*: the n-th consecutive attempt waits a uniformly random time in
  ``[0, min(cap, initial * factor**(n-1))]``, so clients cut off together do not come
  back together. A server ``reconnect`` push (drain) replaces that delay with the
  server's own jittered hint; a 503 refusal of the upgrade (a full or overloaded worker)
  with its ``Retry-After`` plus a random share of it again, so the clients a saturated
  server turned away come back spread over that window. A "do not reconnect" close
  (4000-4499, 1002, 1003, 1007-1010) or an HTTP 4xx refusal of the upgrade ends the
  client: every waiting call and every subscription iterator raises
  :class:`ClientClosed` with the code and reason.
* **Resubscribes** every subscription after a reconnect, with ``recover`` from the last
  position delivered in history namespaces: the missed publications arrive, in order,
  nothing twice (duplicates by offset are dropped here too). When the gap cannot be
  filled (``recovered: false``, a new epoch) the subscription's ``on_gap`` callback is
  called (or a warning is logged) and ``gaps`` is counted: never a silent gap.
* **Publishes** made while disconnected wait in a bounded queue (``max_queued``; past
  it :meth:`Client.publish` raises :class:`QueueFull` at once) and are sent, in order,
  once the connection is back. Every publish carries an ``idem`` key that stays the same
  across retries, so in history namespaces a publish whose reply was lost is retried
  and published once. In namespaces without history the server cannot deduplicate: a
  publish sent there whose reply was lost raises :class:`DeliveryUnknown` instead of
  being retried (the client learns which namespaces keep history from the replies).
* Error 108 "not available" (a channel owner restarting, a subscribe not yet confirmed
  live on every worker) is retried with backoff for up
  to ``unavailable_timeout`` seconds, transparently, for every operation.
* **Tokens**: ``get_token`` (sync or async) is called for a fresh token before the
  current one expires (read from the JWT's ``exp``, not verified here), sent with the
  ``refresh`` op, and before a reconnect whose token is expired or was refused (HTTP
  401, close 4503).

Not guaranteed: publications in namespaces without history sent while this client was
disconnected are not received (the server keeps nothing). A callback or iterator that
falls behind does not slow the connection: publications wait in the subscription's
queue, which is unbounded (the server's slow-consumer limit applies to the socket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSInvalidURL,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from shardws.core import DeltaError, delta_apply
from shardws.pure import protocol
from shardws.pure.msgpackwire import SUBPROTOCOL
from shardws.pure.wiredata import packb, unpack

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "DeliveryUnknown",
    "Gap",
    "PresenceEvent",
    "Publication",
    "QueueFull",
    "ServerError",
    "Subscription",
    "connect",
    "should_reconnect",
    "token_expiry",
]

log = logging.getLogger("shardws.client")

NOT_AVAILABLE = 108  # protocol.ErrorCode.NOT_AVAILABLE: retry with backoff
# Closes after which reconnecting cannot help without changing the client (RFC 6455
# 7.4.1 codes for a broken client, and the protocol's 4000-4499 range).
_ABNORMAL = 1006  # RFC 6455 7.4.1: no close frame was received

#: The wire formats a client can speak (``Client(format=...)``).
FORMATS = frozenset({"json", "msgpack"})


def data_of(push: dict[str, Any]) -> Any:
    """A push's data, decoded: whole-binary data of a MessagePack publisher comes to a
    JSON connection as ``b64data`` (docs/protocol.md) and is handed over as bytes."""
    b64data = push.get("b64data")
    if isinstance(b64data, str):
        return base64.b64decode(b64data)
    return push.get("data")


#: Whether to reconnect after a close with a given code (one rule for server and clients).
should_reconnect = protocol.reconnect_allowed


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read without verifying it; None if the
    token has none or is not a JWT. Only used to schedule the refresh."""
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (seconds).

    The n-th consecutive failed attempt (n >= 1) waits ``random() * min(cap, initial *
    factor ** (n - 1))``: the spread is the whole window, which is what keeps many clients
    that lost their server at the same moment from reconnecting at the same moment."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.factor >= 1 and self.cap >= self.initial):
            raise ValueError(f"Backoff needs initial > 0, factor >= 1, cap >= initial; got {self}")

    def window(self, attempt: int) -> float:
        """The upper bound of attempt ``attempt``'s delay."""
        return min(self.cap, self.initial * self.factor ** min(max(attempt - 1, 0), 64))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * self.window(attempt)


#: The longest ``Retry-After`` followed, seconds: a server's mistake must not park a
#: client for hours.
MAX_RETRY_AFTER = 300.0


def retry_after(response: Any, rand: Callable[[], float] = random.random) -> float | None:
    """The wait a 503's ``Retry-After`` asks for (delta-seconds, RFC 9110 10.2.3) plus a
    random share of it again, or None without a usable one (then the backoff applies)."""
    if response is None or response.status != 503:
        return None
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None  # an HTTP date or garbage: the backoff will do
    if not 0 < seconds < float("inf"):
        return None
    seconds = min(seconds, MAX_RETRY_AFTER)
    return seconds * (1.0 + rand())


class ClientError(Exception):
    """Base class of this module's errors."""


class ClientClosed(ClientError):
    """The client is closed: by :meth:`Client.close` (code 1000), by a "do not reconnect"
    close from the server (its code and reason), or by a refused upgrade (``code`` is
    the HTTP status, e.g. 401)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed for good: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ServerError(ClientError):
    """The server answered a command with an error (docs/protocol.md, error codes)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.message = message


class QueueFull(ClientError):
    """``publish`` while disconnected with ``max_queued`` publishes already waiting."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} publishes already wait for the connection (max_queued={limit});"
            " retry later or raise max_queued"
        )
        self.limit = limit


class DeliveryUnknown(ClientError):
    """The connection was lost after a publish into a namespace without history was
    sent and before its reply came: it may or may not have been published, and the
    server could not deduplicate a retry."""


@dataclass(frozen=True, slots=True)
class Publication:
    """A publication; ``offset``/``epoch`` are set in history namespaces."""

    channel: str
    data: Any
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A ``join`` or ``leave`` push (namespaces with ``join_leave``)."""

    type: str
    channel: str
    user: str
    client: str


@dataclass(frozen=True, slots=True)
class Gap:
    """Publications of ``channel`` were lost for this client (the history no longer held
    them, or its owner crashed): the subscription continues from ``epoch``/``offset``.
    Reload the channel's state (e.g. with :meth:`Client.history`).

    ``reason`` says why, in the words of the server's ``recovered: false`` reply:
    ``"epoch_changed"`` (the history was lost and renumbered: also when a live
    publication arrives with a new epoch), ``"left_ring"`` (the missed publications
    are older than the history keeps), ``"ahead"`` (the position is past the kept
    history's last offset), or None from a server that does not say."""

    channel: str
    epoch: str
    offset: int
    reason: str | None = None


Item = Publication | PresenceEvent
Callback = Callable[[Item], None]

_END = object()  # queued into a subscription when it ends
_EPOCHS_KEPT = 8  # epochs a subscription remembers its last offset in


class Subscription:
    """One channel subscription, kept across reconnects. Iterate it (``async for``) or
    pass ``callback`` to :meth:`Client.subscribe`; not both."""

    def __init__(
        self,
        client: Client,
        channel: str,
        callback: Callback | None,
        on_gap: Callable[[Gap], None] | None,
        presence_events: bool,
        delta: str | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        #: ``"fossil"``: publications may come as deltas (docs/protocol.md, "Delta
        #: subscriptions"); the application still sees whole data.
        self.delta = delta
        #: The data bytes of the last publication received (a delta subscription's base).
        self._base: bytes | None = None
        #: Publications received as deltas and applied.
        self.deltas = 0
        #: Deltas that did not apply (each answered by a reconnect that recovers).
        self.delta_failures = 0
        #: Position of the last publication delivered (history namespaces), or of the
        #: subscribe reply; what the next resubscribe recovers from.
        self.epoch: str | None = None
        self.offset = 0
        #: The last offset delivered in each of the latest epochs this subscription
        #: followed: after a partition heals, the numbering may come back to an epoch
        #: followed before, and what was delivered in it must not come again.
        self._epochs: dict[str, int] = {}
        #: Gaps reported (``recovered: false`` or a new epoch).
        self.gaps = 0
        #: Resubscribes answered ``recovered: true``.
        self.recoveries = 0
        self._callback = callback
        self._on_gap = on_gap
        self._presence_events = presence_events
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.active = True
        #: Why the subscription ended (None while active or after ``unsubscribe``).
        self.error: BaseException | None = None

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later __anext__ ends too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)
            raise item
        return item

    async def unsubscribe(self) -> None:
        """Stop receiving; the iterator ends. Idempotent."""
        await self.client.unsubscribe(self.channel)

    # -- called by the client ---------------------------------------------------------

    def _emit(self, item: Item) -> None:
        if self._callback is not None:
            try:
                self._callback(item)
            except Exception:  # a user bug must not break the connection's reader
                log.exception("subscription %s: callback failed", self.channel)
        else:
            self._queue.put_nowait(item)

    def _take_pub(self, message: dict[str, Any]) -> bool:
        """Deliver a ``pub`` push; False when its offset shows a gap (the caller then
        reconnects, which recovers from the last delivered offset)."""
        offset, epoch = message.get("offset"), message.get("epoch")
        if isinstance(offset, int) and isinstance(epoch, str):
            if epoch != self.epoch and epoch in self._epochs:
                # Back to an epoch followed before (the other side of a healed partition
                # numbered meanwhile): continue it where this subscription left it.
                self.epoch, self.offset = epoch, self._epochs[epoch]
            if epoch == self.epoch:
                if offset <= self.offset:
                    if self.delta is not None:  # the server's base moved to it
                        with contextlib.suppress(DeltaError, ValueError):
                            self._whole_data(message)
                    return True  # already delivered: never twice
                if offset != self.offset + 1:
                    return False
        if self.delta is None:
            data = data_of(message)
        else:
            try:
                data = self._whole_data(message)
            except (DeltaError, ValueError) as exc:
                self.delta_failures += 1
                self._base = None
                log.warning("channel %s: a delta did not apply (%s); recovering", self.channel, exc)
                return False
        if isinstance(offset, int) and isinstance(epoch, str):
            if epoch != self.epoch and self.epoch is not None:
                # The owner lost the history: a live publication of a new epoch.
                self._gap(Gap(self.channel, epoch, offset - 1, "epoch_changed"))
            self._move(epoch, offset)
        self._emit(Publication(self.channel, data, offset, epoch))
        return True

    def _whole_data(self, message: dict[str, Any]) -> Any:
        """The data of a delta subscription's push: its bytes (a JSON string on a JSON
        connection, ``bin`` on a MessagePack one) are the whole data's encoding, or with
        ``"delta": true`` a fossil delta against the previous one's. Raises DeltaError
        (or ValueError) when it cannot be rebuilt."""
        if "b64data" in message:  # whole-binary data: no delta form, no base
            self._base = None
            return data_of(message)
        raw = message.get("data")
        payload = raw.encode() if isinstance(raw, str) else raw
        if not isinstance(payload, bytes):
            raise ValueError("a delta subscription's data must be a string or bytes")
        if message.get("delta") is True:
            if self._base is None:
                raise DeltaError("a delta without a base")
            payload = delta_apply(self._base, payload)
            self.deltas += 1
        self._base = payload
        return unpack(payload) if self.client.msgpack else json.loads(payload)

    def _take_presence(self, message: dict[str, Any]) -> None:
        if self._presence_events:
            self._emit(
                PresenceEvent(
                    message["type"],
                    self.channel,
                    message.get("user", ""),
                    message.get("client", ""),
                )
            )

    def _positioned(self, reply: dict[str, Any], recovering: bool) -> None:
        """A subscribe reply: take its position (the start, or after a failed recovery)."""
        epoch, offset = reply.get("epoch"), reply.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            return  # a namespace without history
        if recovering and reply.get("recovered") is True:
            self.recoveries += 1
            return  # the missed pushes follow and move the position
        delivered = self._epochs.get(epoch)
        if recovering and delivered is not None and offset <= delivered:
            # This subscription already delivered that epoch up to there: the previous
            # connection got its first publications after this resubscribe was sent (the
            # gap was reported then). Nothing is missing; what follows that it has is
            # skipped by offset.
            self._move(epoch, delivered)
            return
        if recovering:
            reason = reply.get("reason")
            self._gap(Gap(self.channel, epoch, offset, reason if isinstance(reason, str) else None))
        self._move(epoch, offset)

    def _move(self, epoch: str, offset: int) -> None:
        self.epoch, self.offset = epoch, offset
        self._epochs.pop(epoch, None)
        self._epochs[epoch] = offset  # the latest last: the oldest go first
        while len(self._epochs) > _EPOCHS_KEPT:
            del self._epochs[next(iter(self._epochs))]

    def _gap(self, gap: Gap) -> None:
        self.gaps += 1
        if self._on_gap is not None:
            try:
                self._on_gap(gap)
            except Exception:
                log.exception("subscription %s: on_gap failed", self.channel)
        else:
            log.warning(
                "channel %s: publications lost (%s), continuing at %s:%d",
                gap.channel,
                gap.reason,
                gap.epoch,
                gap.offset,
            )

    def _end(self, error: BaseException | None) -> None:
        self.active = False
        self.error = error
        self._queue.put_nowait(_END if error is None else error)


class _LinkLost(Exception):
    """The connection a command was sent on closed before its reply."""


class _Link(WSListener):
    """One WebSocket connection of a :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code = _ABNORMAL
        self.close_reason = ""
        self.hint: float | None = None  # the server's reconnect delay, if it sent one
        self.transport: WSTransport | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The server never fragments its messages (one push or reply per frame).
        if frame.msg_type == (WSMsgType.BINARY if self.client.msgpack else WSMsgType.TEXT):
            try:
                payload = frame.get_payload_as_bytes()
                message = unpack(payload) if self.client.msgpack else json.loads(payload)
            except ValueError:
                log.warning("ignoring a frame that is not %s", self.client.format)
                return
            if isinstance(message, dict):
                self.client._on_message(self, message)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            self.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not transport.is_close_frame_sent:  # RFC 6455 5.5.1: echo it
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._link_lost(self)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_LinkLost())
        self.pending.clear()
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before the connected push"))
            self.hello.exception()  # retrieved: the run loop may not be awaiting it
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None or self.closed.done():
            raise _LinkLost()
        if self.client.msgpack:
            self.transport.send(WSMsgType.BINARY, packb(message))
        else:
            text = json.dumps(message, separators=(",", ":")).encode()
            self.transport.send(WSMsgType.TEXT, text)

    def drop(self) -> None:
        """Close this connection (the client reconnects)."""
        if self.transport is not None and not self.closed.done():
            self.transport.disconnect(graceful=False)


class Client:
    """A connection to a shardws server that reconnects by itself; made by
    :func:`connect`. Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], Awaitable[str] | str] | None = None,
        backoff: Backoff | None = None,
        max_queued: int = 1000,
        refresh_before: float = 30.0,
        unavailable_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        on_user_message: Callable[[Any], None] | None = None,
        format: str = "json",
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        if not 0 < ping_timeout <= ping_interval:  # what picows's auto-ping accepts
            raise ValueError(
                f"need 0 < ping_timeout <= ping_interval, got {ping_timeout}, {ping_interval}"
            )
        self.url = url
        self.token = token
        #: The wire format: "json" (text frames) or "msgpack" (the ``shardws.msgpack``
        #: subprotocol); data is handed over decoded either way.
        self.format = format
        self.msgpack = format == "msgpack"
        self.backoff = backoff or Backoff()
        self.max_queued = max_queued
        self.refresh_before = refresh_before
        self.unavailable_timeout = unavailable_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._get_token = get_token
        self._on_user_message = on_user_message
        #: From the last ``connected`` push: the worker number and the client id.
        self.worker: int | None = None
        self.client_id = ""
        #: Connection attempts, successful connections, server reconnect hints followed
        #: (``reconnect`` pushes and the ``Retry-After`` of 503 refusals).
        self.attempts = 0
        self.connects = 0
        self.hints_followed = 0
        #: Code and reason of the last close (1006 when the TCP path was lost).
        self.last_close: tuple[int, str] | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self._link: _Link | None = None
        self._ready = asyncio.Event()  # connected and resubscribed
        self._failure: ClientClosed | None = None
        self._ids = itertools.count(1)
        self._idem_prefix = secrets.token_hex(6)
        self._idems = itertools.count(1)
        self._queued = 0  # publishes waiting for a connection
        self._history: dict[str, bool] = {}  # namespace -> keeps history (from replies)
        self._run_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; returns once the first connection is ready. Keeps retrying
        (with backoff) while the server is unreachable; raises :class:`ClientClosed` if
        the server refuses for good. Bound it with ``asyncio.wait_for`` if needed."""
        self._first = asyncio.get_running_loop().create_future()
        self._run_task = asyncio.create_task(self._run())
        await asyncio.shield(self._first)

    async def close(self) -> None:
        """Close the connection for good; waiting calls raise :class:`ClientClosed`."""
        self._fail(ClientClosed(1000, "closed by the client"))
        link = self._link
        if link is not None and link.transport is not None and not link.closed.done():
            link.transport.send_close(WSCloseCode.OK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), 1.0)
            link.drop()
        for task in (self._run_task, self._refresh_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @property
    def closed(self) -> ClientClosed | None:
        """Why the client is closed for good, or None while it is alive."""
        return self._failure

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._failure is None

    def _link_lost(self, link: _Link) -> None:
        # At once, not when the run loop wakes: a caller retrying after _LinkLost must
        # wait for the next connection instead of finding the dead one "ready".
        if self._link is link and self._failure is None:
            self._ready.clear()

    def _fail(self, error: ClientClosed) -> None:
        if self._failure is not None:
            return
        self._failure = error
        for sub in self.subscriptions.values():
            sub._end(error)
        self.subscriptions.clear()
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
            self._first.exception()
        self._ready.set()  # wakes every waiter; each finds _failure set

    async def _run(self) -> None:
        try:
            await self._reconnect_loop()
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("client loop failed")
            self._fail(ClientClosed(1011, f"client error: {exc!r}"))

    async def _reconnect_loop(self) -> None:
        failures = 0  # consecutive failed attempts; a lost connection counts as one
        hint: float | None = None
        refused_token = False
        while self._failure is None:
            if hint is not None:
                self.hints_followed += 1
                await asyncio.sleep(hint)
                hint = None
            elif failures:
                await asyncio.sleep(self.backoff.delay(failures))
            failures += 1
            self.attempts += 1
            try:
                await self._fresh_token(force=refused_token)
                link = await self._open()
            except WSHandshakeError as exc:
                status = exc.response.status if exc.response is not None else 0
                if status in (401, 403) and self._get_token is not None and not refused_token:
                    refused_token = status == 401  # one more try with a fresh token
                    if refused_token:
                        continue
                if 400 <= status < 500:
                    self._fail(ClientClosed(status, f"upgrade refused: HTTP {status}"))
                    return
                hint = retry_after(exc.response)
                continue  # 5xx (a full or overloaded worker): back off and retry
            except WSInvalidURL as exc:
                self._fail(ClientClosed(0, f"invalid url {self.url!r}: {exc}"))
                return
            except (OSError, WSError, TimeoutError, ConnectionError) as exc:
                log.debug("connect failed: %r", exc)
                continue
            except ClientError as exc:  # get_token raised
                log.warning("get_token failed: %s", exc)
                continue
            refused_token = False
            try:
                await self._resubscribe(link)
            except _LinkLost:
                pass
            else:
                # The loss of this connection will count as the first failure: even the
                # first reconnect waits a jittered delay, or every client of a crashed
                # worker would come back in the same instant.
                failures = 1
                self.connects += 1
                self._ready.set()
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)
                self._schedule_refresh(link)
            await link.closed
            self._ready.clear()
            self._link = None
            self.last_close = (link.close_code, link.close_reason)
            if self._failure is not None:
                return
            if not should_reconnect(link.close_code):
                self._fail(ClientClosed(link.close_code, link.close_reason))
                return
            if link.close_code == 4503:  # the token expired: get a new one first
                refused_token = True
            hint = link.hint
            log.info("connection closed (%d %s), reconnecting", link.close_code, link.close_reason)

    async def _open(self) -> _Link:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.msgpack:
            headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
        link = _Link(self)
        # The listener picows hands back may be a proxy: keep our own reference.
        transport, listener = await ws_connect(
            lambda: link,
            self.url,
            extra_headers=headers,
            websocket_handshake_timeout=self.connect_timeout,
            enable_auto_ping=True,  # finds a dead path that never sends a FIN or RST
            auto_ping_idle_timeout=self.ping_interval,
            auto_ping_reply_timeout=self.ping_timeout,
            use_aiofastnet=False,
        )
        if listener is None or transport.is_disconnected:
            # picows returns normally when the peer drops the TCP connection during the
            # upgrade (and never calls the listener): that is a failed attempt.
            raise ConnectionError("connection lost during the upgrade")
        try:
            hello = await asyncio.wait_for(asyncio.shield(link.hello), self.connect_timeout)
        except BaseException:
            link.drop()
            raise
        self.worker = hello.get("worker")
        self.client_id = hello.get("client", "")
        self._link = link
        return link

    async def _resubscribe(self, link: _Link) -> None:
        """Subscribe again to every channel, recovering where there is a position."""
        subs = list(self.subscriptions.values())
        results = await asyncio.gather(
            *(self._subscribe_on(link, sub) for sub in subs), return_exceptions=True
        )
        for sub, result in zip(subs, results, strict=True):
            if isinstance(result, _LinkLost):
                raise result
            if isinstance(result, ServerError):  # e.g. the permission is gone
                self.subscriptions.pop(sub.channel, None)
                sub._end(result)
            elif isinstance(result, BaseException):
                raise result

    async def _subscribe_on(self, link: _Link, sub: Subscription) -> None:
        fields: dict[str, Any] = {"channel": sub.channel}
        if sub.delta is not None:
            fields["delta"] = sub.delta
            sub._base = None  # a new subscription: its first publication comes whole
        recovering = sub.epoch is not None
        if recovering:
            fields["recover"] = {"epoch": sub.epoch, "offset": sub.offset}
        reply = await self._request_retrying(link, "subscribe", fields)
        self._learn(sub.channel, reply)
        sub._positioned(reply, recovering)

    # -- commands -----------------------------------------------------------------------

    def _request(self, link: _Link, op: str, fields: dict[str, Any]) -> asyncio.Future[Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.send({"id": command_id, "op": op, **fields})
        link.pending[command_id] = future
        return future

    async def _request_retrying(
        self, link: _Link, op: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """A command on ``link``; error 108 retried with backoff (bounded)."""
        deadline = time.monotonic() + self.unavailable_timeout
        for attempt in itertools.count(1):
            reply = await self._request(link, op, fields)
            error = reply.get("error")
            if error is None:
                return reply
            if error.get("code") != NOT_AVAILABLE or time.monotonic() >= deadline:
                raise ServerError(error.get("code", 0), error.get("message", ""))
            await asyncio.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _wait_ready(self) -> _Link:
        while True:
            if self._failure is not None:
                raise self._failure
            link = self._link
            if self._ready.is_set() and link is not None and not link.closed.done():
                return link
            await self._ready.wait()

    async def _call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A read-only command: waits for a connection, retried after a lost one."""
        while True:
            link = await self._wait_ready()
            try:
                return await self._request_retrying(link, op, fields)
            except _LinkLost:
                continue

    def _learn(self, channel: str, reply: dict[str, Any]) -> None:
        namespace = channel.partition(":")[0] if ":" in channel else "default"
        self._history[namespace] = "epoch" in reply

    def _keeps_history(self, channel: str) -> bool | None:
        return self._history.get(channel.partition(":")[0] if ":" in channel else "default")

    async def subscribe(
        self,
        channel: str,
        callback: Callback | None = None,
        *,
        on_gap: Callable[[Gap], None] | None = None,
        presence_events: bool = False,
        recover: tuple[str, int] | None = None,
        delta: str | None = None,
    ) -> Subscription:
        """Subscribe; returns once the subscription is live (anything published after
        that reaches it). ``recover=(epoch, offset)`` starts from a remembered position
        (the missed publications are delivered first, or ``on_gap`` is told).
        ``presence_events`` also delivers ``join``/``leave`` as :class:`PresenceEvent`.
        ``delta="fossil"`` asks for publications as fossil deltas where the namespace
        allows them (``allowed_delta_types``); they are applied here, so the subscription
        still yields whole data, and a delta that does not apply (counted in
        ``delta_failures``) reconnects and recovers. Raises :class:`ServerError` (e.g.
        103 permission denied, 105 already subscribed)."""
        if channel in self.subscriptions:
            raise ServerError(105, "already subscribed")
        sub = Subscription(self, channel, callback, on_gap, presence_events, delta)
        if recover is not None:
            sub.epoch, sub.offset = recover
        while True:
            link = await self._wait_ready()
            self.subscriptions[channel] = sub  # from now on resubscribed by reconnects
            try:
                await self._subscribe_on(link, sub)
                return sub
            except _LinkLost:
                # The reconnect resubscribes it (or ends it with the server's error).
                await self._wait_ready()
                if self.subscriptions.get(channel) is sub:
                    return sub
                if sub.error is not None:
                    raise sub.error from None
                raise ServerError(0, f"subscription to {channel!r} ended") from None
            except ServerError:
                self.subscriptions.pop(channel, None)
                raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop a subscription (its iterator ends); idempotent."""
        sub = self.subscriptions.pop(channel, None)
        if sub is None:
            return
        sub._end(None)
        link = self._link
        if self._ready.is_set() and link is not None:
            with contextlib.suppress(_LinkLost):
                await self._request(link, "unsubscribe", {"channel": channel})

    async def publish(self, channel: str, data: Any, *, idem: str | None = None) -> dict[str, Any]:
        """Publish ``data`` (JSON-serializable); returns the server's reply (``offset``
        and ``epoch`` in history namespaces). While disconnected it waits for the
        connection in a queue of at most ``max_queued`` publishes (:class:`QueueFull`
        beyond). Retries keep one ``idem`` key (generated if not given), so a retried
        publish is published once in history namespaces."""
        if self._failure is not None:
            raise self._failure
        if not self.connected and self._queued >= self.max_queued:
            raise QueueFull(self.max_queued)
        fields = {
            "channel": channel,
            "data": data,
            "idem": idem or f"{self._idem_prefix}-{next(self._idems)}",
        }
        while True:
            if not self.connected:
                self._queued += 1
                try:
                    link = await self._wait_ready()
                finally:
                    self._queued -= 1
            else:
                link = await self._wait_ready()
            try:
                reply = await self._request_retrying(link, "publish", fields)
            except _LinkLost:
                if self._keeps_history(channel) is False:
                    raise DeliveryUnknown(
                        f"connection lost before the reply to a publish to {channel!r}"
                        " (no history there, so it is not retried)"
                    ) from None
                continue
            self._learn(channel, reply)
            return reply

    async def history(
        self, channel: str, *, since: int = 0, limit: int = 100, reverse: bool = False
    ) -> tuple[list[Publication], str, int]:
        """A page of the channel's history and its current position ``(epoch, offset)``
        (see the ``history`` op in docs/protocol.md)."""
        reply = await self._call(
            "history", {"channel": channel, "since": since, "limit": limit, "reverse": reverse}
        )
        pubs = [
            Publication(channel, data_of(p), p.get("offset"), p.get("epoch"))
            for p in reply["publications"]
        ]
        return pubs, reply["epoch"], reply["offset"]

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        """Every connection subscribed to ``channel``: ``[{"user","client","info"}]``."""
        return list((await self._call("presence", {"channel": channel}))["members"])

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(clients, users)`` subscribed to ``channel``."""
        reply = await self._call("presence_stats", {"channel": channel})
        return reply["clients"], reply["users"]

    async def ping(self) -> None:
        await self._call("ping", {})

    # -- tokens -------------------------------------------------------------------------

    async def _new_token(self) -> str:
        assert self._get_token is not None
        try:
            token = self._get_token()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:
            raise ClientError(f"get_token failed: {exc!r}") from exc
        if not isinstance(token, str) or not token:
            raise ClientError(f"get_token returned {token!r}, expected a token string")
        return token

    async def _fresh_token(self, force: bool) -> None:
        """Before connecting: a new token when the current one is refused, missing or
        about to expire."""
        if self._get_token is None:
            return
        expiry = token_expiry(self.token)
        if force or self.token is None or (expiry is not None and expiry - time.time() < 1.0):
            self.token = await self._new_token()

    def _schedule_refresh(self, link: _Link) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        expiry = token_expiry(self.token)
        if self._get_token is not None and expiry is not None:
            self._refresh_task = asyncio.create_task(self._refresh_loop(link))

    async def _refresh_loop(self, link: _Link) -> None:
        """Send a fresh token with ``refresh`` ahead of each expiry, while ``link`` lives."""
        while not link.closed.done():
            expiry = token_expiry(self.token) or 0.0
            remaining = expiry - time.time()
            await asyncio.sleep(max(0.0, remaining - min(self.refresh_before, remaining / 2)))
            try:
                token = await self._new_token()
                reply = await self._request(link, "refresh", {"token": token})
            except _LinkLost:
                return
            except Exception as exc:  # the close 4503 that follows reconnects with get_token
                log.warning("token refresh failed: %r", exc)
                await asyncio.sleep(max(1.0, remaining / 4))
                continue
            if "error" in reply:
                log.warning("token refresh refused: %s", reply["error"])
                await asyncio.sleep(max(1.0, remaining / 4))
                continue
            self.token = token

    # -- pushes -------------------------------------------------------------------------

    def _on_message(self, link: _Link, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind is None:
            future = link.pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
            elif "error" in message:  # e.g. 111 for a command the server dropped
                log.warning("server error without a command: %s", message["error"])
            return
        if kind == "pub":
            channel = message.get("channel")
            if channel is None:
                if self._on_user_message is not None:
                    self._on_user_message(data_of(message))
                return
            sub = self.subscriptions.get(channel)
            if sub is not None and not sub._take_pub(message):
                log.warning(
                    "channel %s: offset gap on the stream, reconnecting to recover", channel
                )
                link.drop()
        elif kind in ("join", "leave"):
            sub = self.subscriptions.get(message.get("channel", ""))
            if sub is not None:
                sub._take_presence(message)
        elif kind == "connected":
            if not link.hello.done():
                link.hello.set_result(message)
        elif kind == "reconnect":
            delay = message.get("delay")
            if isinstance(delay, int | float) and 0 <= delay <= 3600:
                link.hint = float(delay)


class _Connecting:
    """What :func:`connect` returns: ``async with`` it, or ``await`` it."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> Client:
        await self.client.start()
        return self.client

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.client.close()


def connect(url: str, **options: Any) -> _Connecting:
    """``async with connect(url, token=..., ...) as client`` (or ``client = await
    connect(...)``, then ``await client.close()``). Options: see :class:`Client`."""
    return _Connecting(Client(url, **options))
