"""RFC 6455 data frames -> complete messages, for one connection (no I/O).

The worker hands every TEXT, BINARY and CONTINUATION frame, with the connection's
assembly state (:class:`FrameState`), to :meth:`Messages.feed` and gets back a complete
:class:`Message`, ``None`` (a fragment: more to come) or a :class:`Fail` naming the
close code the connection must be closed with. The state lives on the connection (no
object more per connection: at a quarter million connections every object counts); a
:class:`Messages` holds only the rules, one per kind of connection of a worker. What is
checked here, and nowhere else:

* RFC 6455 5.2: a reserved bit that no negotiated extension defines fails with 1002;
  RFC 7692 6: RSV1 marks the first frame of a compressed message, only where
  permessage-deflate was agreed, only on data frames (control frames are checked by
  :func:`check_control_frame`).
* RFC 6455 5.4: fragments: no new message before the last fragment, no continuation
  without a message (1002).
* Size: a fragmented message past ``max_size`` fails with 1009 (picows caps single
  frames); an inflated message past ``max_size`` fails with 1009 too (zip bombs stop
  there, ``pure.deflate``), data that is not a deflate stream with 1007.
* RFC 6455 8.1: text that is not UTF-8 fails with 1007 when ``check_utf8`` is on. The
  native protocol turns it off: its command parser (``core.parse_envelope``) validates
  UTF-8 in the same pass that parses, and answers invalid text with the same 1007.

After a :class:`Fail` the connection is closing; nothing more is fed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from shardws.core import utf8_valid
from shardws.pure.deflate import BadCompressedData, Inflater, MessageTooBig
from shardws.pure.protocol import CloseCode

# RFC 6455 5.2 opcodes of data frames.
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2


class Message(NamedTuple):
    """One complete message, inflated when it was compressed."""

    binary: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Fail:
    """The connection must be closed with ``code`` and ``reason``. ``detail`` is the line
    to log and count as a protocol error, or None when the failure is only counted."""

    code: int
    reason: str
    detail: str | None


def _protocol_error(what: str) -> Fail:
    # RFC 6455 7.1.7, Fail the WebSocket Connection.
    return Fail(CloseCode.PROTOCOL_ERROR, what, what)


def check_control_frame(rsv1: bool, rsv2: bool, rsv3: bool) -> Fail | None:
    """A control frame (close, ping, pong) with a reserved bit set fails the connection:
    no extension defines them there (RFC 6455 5.2; RFC 7692 6 is for data frames)."""
    if rsv1 or rsv2 or rsv3:
        return _protocol_error("reserved bit set without a negotiated extension")
    return None


class FrameState(Protocol):
    """One connection's message assembly state (the worker's connections have it):
    ``fragments`` is None between messages; ``inflater`` is set when the upgrade agreed
    permessage-deflate, else None."""

    fragments: list[bytes] | None
    fragment_binary: bool
    fragment_compressed: bool
    fragment_size: int
    inflater: Inflater | None


class Messages:
    """Assembles data frames into messages (see the module doc) under a size cap, with
    or without the UTF-8 check; the state is the connection's own."""

    __slots__ = ("_check_utf8", "_max_size")

    def __init__(self, max_size: int, *, check_utf8: bool) -> None:
        self._max_size = max_size
        self._check_utf8 = check_utf8

    def feed(
        self,
        state: FrameState,
        opcode: int,
        fin: bool,
        rsv1: bool,
        rsv2: bool,
        rsv3: bool,
        payload: bytes,
    ) -> Message | Fail | None:
        """Take one data frame (``opcode`` 0, 1 or 2) of the connection whose state is
        ``state``; see the module doc."""
        compressed = False
        if rsv1 or rsv2 or rsv3:
            if rsv2 or rsv3 or state.inflater is None or opcode == CONTINUATION:
                return _protocol_error("reserved bit set without a negotiated extension")
            compressed = True
        if opcode == CONTINUATION:
            return self._continue(state, fin, payload)
        if state.fragments is not None:  # RFC 6455 5.4: no new message mid-fragmentation
            return _protocol_error("new message before the last fragment")
        binary = opcode == BINARY
        if fin:
            return self._complete(state, binary, compressed, payload)
        state.fragments = [payload]
        state.fragment_binary = binary
        state.fragment_compressed = compressed
        state.fragment_size = len(payload)
        return None

    def _continue(self, state: FrameState, fin: bool, payload: bytes) -> Message | Fail | None:
        fragments = state.fragments
        if fragments is None:
            return _protocol_error("continuation frame without a message")
        state.fragment_size += len(payload)
        if state.fragment_size > self._max_size:
            return Fail(CloseCode.MESSAGE_TOO_BIG, "message too big", None)
        fragments.append(payload)
        if not fin:
            return None
        state.fragments = None
        joined = b"".join(fragments)
        return self._complete(state, state.fragment_binary, state.fragment_compressed, joined)

    def _complete(
        self, state: FrameState, binary: bool, compressed: bool, payload: bytes
    ) -> Message | Fail:
        if compressed:
            assert state.inflater is not None
            try:
                payload = state.inflater.inflate(payload)
            except MessageTooBig:
                detail = "inflated message too big"
                return Fail(CloseCode.MESSAGE_TOO_BIG, "message too big", detail)
            except BadCompressedData:
                reason = "invalid compressed data"
                return Fail(CloseCode.INVALID_TEXT, reason, reason)
        if self._check_utf8 and not binary and not utf8_valid(payload):
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            return Fail(CloseCode.INVALID_TEXT, "invalid UTF-8", "invalid UTF-8")
        return Message(binary, payload)
