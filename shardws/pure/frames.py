"""RFC 6455 data frames -> complete messages, for one connection (no I/O).

The worker hands every TEXT, BINARY and CONTINUATION frame to :meth:`Messages.feed`
and gets back a complete :class:`Message`, ``None`` (a fragment: more to come) or a
:class:`Fail` naming the close code the connection must be closed with. What is
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
from typing import NamedTuple

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


class Messages:
    """Assembles one connection's data frames into messages (see the module doc)."""

    __slots__ = (
        "_binary",
        "_check_utf8",
        "_compressed",
        "_fragments",
        "_max_size",
        "_size",
        "inflater",
    )

    def __init__(self, max_size: int, inflater: Inflater | None, *, check_utf8: bool) -> None:
        self._max_size = max_size
        # permessage-deflate, None when it was not agreed (set once, at the upgrade).
        self.inflater = inflater
        self._check_utf8 = check_utf8
        self._fragments: list[bytes] | None = None
        self._binary = False
        self._compressed = False
        self._size = 0

    def feed(
        self, opcode: int, fin: bool, rsv1: bool, rsv2: bool, rsv3: bool, payload: bytes
    ) -> Message | Fail | None:
        """Take one data frame (``opcode`` 0, 1 or 2); see the module doc."""
        compressed = False
        if rsv1 or rsv2 or rsv3:
            if rsv2 or rsv3 or self.inflater is None or opcode == CONTINUATION:
                return _protocol_error("reserved bit set without a negotiated extension")
            compressed = True
        if opcode == CONTINUATION:
            return self._continue(fin, payload)
        if self._fragments is not None:  # RFC 6455 5.4: no new message mid-fragmentation
            return _protocol_error("new message before the last fragment")
        binary = opcode == BINARY
        if fin:
            return self._complete(binary, compressed, payload)
        self._fragments = [payload]
        self._binary = binary
        self._compressed = compressed
        self._size = len(payload)
        return None

    @property
    def in_message(self) -> bool:
        """Whether a fragmented message is being assembled."""
        return self._fragments is not None

    def _continue(self, fin: bool, payload: bytes) -> Message | Fail | None:
        fragments = self._fragments
        if fragments is None:
            return _protocol_error("continuation frame without a message")
        self._size += len(payload)
        if self._size > self._max_size:
            return Fail(CloseCode.MESSAGE_TOO_BIG, "message too big", None)
        fragments.append(payload)
        if not fin:
            return None
        self._fragments = None
        return self._complete(self._binary, self._compressed, b"".join(fragments))

    def _complete(self, binary: bool, compressed: bool, payload: bytes) -> Message | Fail:
        if compressed:
            assert self.inflater is not None
            try:
                payload = self.inflater.inflate(payload)
            except MessageTooBig:
                return Fail(
                    CloseCode.MESSAGE_TOO_BIG, "message too big", "inflated message too big"
                )
            except BadCompressedData:
                reason = "invalid compressed data"
                return Fail(CloseCode.INVALID_TEXT, reason, reason)
        if self._check_utf8 and not binary and not utf8_valid(payload):
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            return Fail(CloseCode.INVALID_TEXT, "invalid UTF-8", "invalid UTF-8")
        return Message(binary, payload)
