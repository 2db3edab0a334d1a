"""One client connection of a worker: frames in, sends and closes out, through its sink.

A connection holds only its own state (the sink, message assembly, its subscriptions, its
rate-limit bucket); every decision is the worker's (``shardws.server.worker``) or its
session's. A second wire protocol subclasses it (``shardws.server.pusher``) and keeps
frames, fragments, limits and closing as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from shardws.core import Deflated, Sink, build_frame, build_text_frame, release_handshake
from shardws.pure import msgpackwire
from shardws.pure.auth import Identity
from shardws.pure.deflate import Inflater
from shardws.pure.frames import BINARY, Fail, Message, Messages, check_control_frame
from shardws.pure.protocol import encode_history_page, encode_publication
from shardws.server.delivery import NATIVE, NATIVE_MSGPACK
from shardws.shm.scoreboard import Column

if TYPE_CHECKING:
    from shardws.config import Config
    from shardws.pure.history import Position
    from shardws.pure.publication import Publication
    from shardws.pure.session import Sessions
    from shardws.server.delivery import Delivery

CLOSE_GRACE = 1.0  # seconds we wait for the peer's close frame before dropping TCP


class ConnectionHost(Protocol):
    """What a connection needs of its worker: the settings, counters and delivery it
    shares, and the worker's decisions on what happens to it (admission, messages,
    protocol errors, opening and closing)."""

    config: Config
    delivery: Delivery
    sessions: Sessions
    stats: list[int]  # by ``Column``
    pongs: int
    native_messages: Messages  # the message assemblers of native and echo connections
    echo_messages: Messages

    def admit(self, conn: Connection, transport: WSTransport) -> None: ...

    def connection_opened(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...

    def leave_all(self, conn: Connection) -> None: ...

    def protocol_error(self, conn: Connection, what: str) -> None: ...

    def message_received(self, conn: Connection, binary: bool, payload: bytes) -> None: ...

    def echo_received(self, conn: Connection, binary: bool, payload: bytes) -> None: ...


class Connection(WSListener):
    """One client connection. Holds only per-connection state; policy lives in Worker."""

    #: The wire format its publications are encoded in (``Delivery.publish``); a class
    #: attribute, so it costs a connection nothing.
    wire = NATIVE
    #: Whether it speaks the native protocol in MessagePack (its session's state).
    msgpack = False

    __slots__ = (
        "bucket",
        "channels",
        "client_id",
        "closing",
        "connect_timer",
        "deflate_bits",
        "delta_channels",
        "delta_sent",
        "echo",
        "fragment_binary",
        "fragment_compressed",
        "fragment_size",
        "fragments",
        "identity",
        "inflater",
        "ip",
        "last_seen",
        "on_message",
        "ping_sent",
        "sink",
        "strikes",
        "transport",
        "worker",
    )

    def __init__(
        self, worker: ConnectionHost, identity: Identity | None, *, echo: bool = False
    ) -> None:
        self.worker = worker
        self.identity = identity  # None until a connect message authenticates it
        # The diagnostics echo differs from a native connection only in what a complete
        # message does; frames, fragments, limits and closing are shared.
        self.echo = echo
        self.on_message: Callable[[Connection, bool, bytes], None] = (
            worker.echo_received if echo else worker.message_received
        )
        self.ip = ""  # counted in the per-IP table once set
        # Way 2 only: closes with 4504 at handshake_timeout unless a connect comes first.
        self.connect_timer: asyncio.TimerHandle | None = None
        self.strikes = 0  # consecutive rate-limited commands
        self.bucket = worker.sessions.new_bucket(time.monotonic())  # its session's
        self.transport: WSTransport | None = None
        self.sink: Any = None
        self.client_id = ""
        self.channels: set[str] = set()
        self.delta_channels: set[str] = set()  # subscribed with "delta" (pure.delta)
        # A delta subscription's data last sent alone (recovery), by channel, until active.
        self.delta_sent: dict[str, bytes] = {}
        self.last_seen = time.monotonic()
        self.ping_sent = False
        self.closing = False
        # Message assembly state (pure.frames.FrameState); the inflater is set when the
        # upgrade agrees permessage-deflate (Worker._accept).
        self.fragments: list[bytes] | None = None
        self.fragment_binary = False
        self.fragment_compressed = False
        self.fragment_size = 0
        self.inflater: Inflater | None = None
        self.deflate_bits = 0  # the server's compression window, 0 when not agreed

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.worker.admit(self, transport)  # reads the request: before releasing it
        release_handshake(transport)
        self.sink = Sink(
            transport.underlying_transport,
            max_pending=self.worker.config.server.max_pending_bytes,
            owner=self,
            direct=not transport.is_secure,  # TLS bytes must go through the transport
            deflate_bits=self.deflate_bits,
        )
        self.worker.connection_opened(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if (self.closing or transport.is_close_frame_sent) and msg_type != WSMsgType.CLOSE:
            # Frames already buffered when we decided to close, or the frame picows read
            # just before failing the connection on the next one: RFC 6455 5.5.1 forbids
            # sending data after a Close, so nothing of them is acted on.
            return
        self.last_seen = time.monotonic()
        self.ping_sent = False
        # picows's WSMsgType is an IntEnum of the RFC 6455 opcodes: 0-2 are data frames.
        opcode: int = msg_type  # type: ignore[assignment]
        if opcode <= BINARY:
            # The native parser checks UTF-8 itself; the echo has no parser.
            worker = self.worker
            messages = worker.echo_messages if self.echo else worker.native_messages
            result = messages.feed(
                self,
                opcode,
                frame.fin,
                frame.rsv1,
                frame.rsv2,
                frame.rsv3,
                frame.get_payload_as_bytes(),
            )
            if type(result) is Message:
                self.on_message(self, result.binary, result.payload)
            elif isinstance(result, Fail):
                self.fail(result)
            return
        failure = check_control_frame(frame.rsv1, frame.rsv2, frame.rsv3)
        if failure is not None:
            self.fail(failure)
            return
        if msg_type == WSMsgType.CLOSE:
            # RFC 6455 5.5.1: answer a close with a close, then drop the connection.
            if not transport.is_close_frame_sent:
                self.closing = True
                if self.sink is not None:
                    self.sink.flush()  # what was corked goes before our close frame
                    self.sink.close()
                transport.send_close(self._close_reply(frame))
            transport.disconnect()
        elif msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())  # RFC 6455 5.5.3
        else:  # a PONG: last_seen (above) is all it means, but it is work done
            self.worker.pongs += 1  # (proof of progress: server.progress)

    def _close_reply(self, frame: WSFrame) -> WSCloseCode:
        """The code that answers a client's Close: its own code echoed, 1000 for an empty
        Close, 1002 for a code no endpoint may send (RFC 6455 7.4.1/7.4.2: below 1000,
        1004-1006, 1015, unassigned 1016-2999, above 4999). picows lets 0 and 1006
        through (they are members of its enum), so the server checks."""
        if frame.payload_size == 0:
            return WSCloseCode.OK
        # An int at run time: codes outside picows's enum (3000-4999) arrive as plain ints.
        code = cast(int, frame.get_close_code())
        if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
            return cast(WSCloseCode, code)
        self.worker.protocol_error(self, f"invalid close code {code}")
        return WSCloseCode.PROTOCOL_ERROR

    def fail(self, failure: Fail) -> None:
        """Close for a message the frames could not make (see ``pure.frames``): counted
        as a protocol error, logged when it says what. The client's Close is still read,
        so the closing handshake completes."""
        if failure.detail is None:
            self.worker.stats[Column.PROTOCOL_ERRORS] += 1
        else:
            self.worker.protocol_error(self, failure.detail)
        self.close(failure.code, failure.reason)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        if self.sink is not None:
            self.sink.close()
            self.worker.connection_closed(self)

    def pause_writing(self) -> None:
        # Backpressure is handled by the slow-consumer policy, not by pausing.
        pass

    def resume_writing(self) -> None:
        pass

    def send_message(self, payload: bytes, binary: bool) -> None:
        """Send one text or binary message (the diagnostics echo), through the sink."""
        if not self.closing and self.sink is not None:
            frame = self._compressed(payload, binary) or build_frame(payload, binary)
            self.sink.send(frame)
            self.worker.delivery.wrote(len(frame))

    def _compressed(self, payload: bytes, binary: bool = False) -> bytes | None:
        """The permessage-deflate frame of a message for this connection alone, or None
        when it is not to be compressed (not negotiated, or under the threshold)."""
        if not self.deflate_bits or len(payload) < self.worker.config.compression.threshold:
            return None
        deflated = Deflated(payload, self.worker.config.compression.level, binary)
        return deflated.frame(self.deflate_bits)

    def send(self, payload: bytes) -> None:
        """Send one text message to this client (replies and own pushes), through the
        sink so it stays in order with publications and counts against the cap."""
        if not self.closing and self.sink is not None:
            frame = (self.deflate_bits and self._compressed(payload)) or build_text_frame(payload)
            self.sink.send(frame)
            self.worker.delivery.wrote(len(frame))

    def send_publication(self, channel: str, publication: Publication) -> None:
        """Send one publication to this client alone (recovery, a catch-up) in its wire
        format, in order with everything else it is sent."""
        if channel in self.delta_channels and self._send_whole(channel, publication):
            return
        self.send(encode_publication(channel, publication))

    def _send_whole(self, channel: str, publication: Publication) -> bool:
        # A delta subscription's publication, full, in its form (pure.delta).
        found = self.worker.delivery.whole_push(self.wire, channel, publication)
        if found is None:
            self.delta_sent.pop(channel, None)  # the client has no base now
            return False
        push, self.delta_sent[channel] = found
        self.send_message(push, self.wire.binary)
        return True

    def send_history(
        self,
        command_id: int | None,
        position: Position,
        channel: str,
        publications: list[Publication],
    ) -> None:
        """Reply to a ``history`` command: the channel's ``position`` and its stored
        ``publications``, each as a push of its wire format."""
        self.send(encode_history_page(command_id, position, channel, publications))

    def close(self, code: int, reason: str, *, stop_reading: bool = False) -> None:
        """Send what is corked, then a close frame with ``code``; drop the connection
        when the client answers, or after ``CLOSE_GRACE``. Fan-out skips it from now on.
        ``stop_reading`` (abuse, protocol violations): nothing more is read from the
        peer, so a flooder cannot keep the worker busy during the grace period."""
        if self.closing or self.transport is None:
            return
        if stop_reading:
            try:
                self.transport.underlying_transport.pause_reading()
            except RuntimeError:  # already closing
                pass
        self.closing = True
        self.sink.flush()
        self.sink.close()
        self.worker.leave_all(self)
        self.transport.send_close(WSCloseCode(code), reason.encode()[:120])
        # Not graceful: a client that stopped reading must not keep its buffer alive.
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.disconnect, False)


class MsgpackConnection(Connection):
    """A native connection that chose MessagePack in its upgrade (``pure.msgpackwire``):
    commands arrive, and replies and pushes leave, as binary MessagePack messages."""

    __slots__ = ()

    wire = NATIVE_MSGPACK
    msgpack = True

    def send(self, payload: bytes) -> None:
        """Send the JSON reply or push ``payload`` (``pure.protocol``) as its MessagePack
        form, in one binary message."""
        self.send_message(msgpackwire.from_json(payload), True)

    def send_publication(self, channel: str, publication: Publication) -> None:
        # The publisher's MessagePack bytes as they are (never through JSON).
        if channel in self.delta_channels and self._send_whole(channel, publication):
            return
        self.send_message(msgpackwire.encode_publication(channel, publication), True)

    def send_history(
        self,
        command_id: int | None,
        position: Position,
        channel: str,
        publications: list[Publication],
    ) -> None:
        pushes = [msgpackwire.encode_publication(channel, p) for p in publications]
        reply = msgpackwire.encode_history(command_id, position.epoch, position.offset, pushes)
        self.send_message(reply, True)
