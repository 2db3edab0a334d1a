"""shardws.pure.frames: RFC 6455 data frames into messages, without sockets."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest

from shardws.config import CompressionConfig
from shardws.pure.deflate import Inflater, negotiate
from shardws.pure.frames import (
    BINARY,
    CONTINUATION,
    TEXT,
    Fail,
    Message,
    Messages,
    check_control_frame,
)
from shardws.pure.protocol import CloseCode


@dataclass
class State:
    """A connection's assembly state, as the worker's connections keep it."""

    inflater: Inflater | None = None
    fragments: list[bytes] | None = None
    fragment_binary: bool = False
    fragment_compressed: bool = False
    fragment_size: int = 0


class Conn:
    """A connection's rules and state: what the worker pairs for every frame."""

    def __init__(self, messages: Messages, state: State) -> None:
        self.messages, self.state = messages, state

    def feed(
        self, opcode: int, fin: bool, rsv1: bool, rsv2: bool, rsv3: bool, payload: bytes
    ) -> Message | Fail | None:
        return self.messages.feed(self.state, opcode, fin, rsv1, rsv2, rsv3, payload)

    @property
    def in_message(self) -> bool:
        return self.state.fragments is not None


def plain(max_size: int = 100, check_utf8: bool = True) -> Conn:
    return Conn(Messages(max_size, check_utf8=check_utf8), State())


def deflating(max_size: int = 100) -> Conn:
    agreement = negotiate(["permessage-deflate"], CompressionConfig(enabled=True))
    assert agreement is not None
    return Conn(Messages(max_size, check_utf8=True), State(Inflater(agreement, max_size)))


def compress(data: bytes) -> bytes:
    stream = zlib.compressobj(wbits=-15)
    out = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]  # RFC 7692 7.2.1: the empty block's tail is removed


def feed(
    messages: Conn, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False
) -> Message | Fail | None:
    return messages.feed(opcode, fin, rsv1, False, False, payload)


def test_a_whole_frame_is_a_message() -> None:
    assert feed(plain(), TEXT, b"hi") == Message(False, b"hi")
    assert feed(plain(), BINARY, b"\xff") == Message(True, b"\xff")


def test_fragments_are_joined_in_order() -> None:
    messages = plain()
    assert feed(messages, TEXT, b"a", fin=False) is None
    assert messages.in_message
    assert feed(messages, CONTINUATION, b"b", fin=False) is None
    assert feed(messages, CONTINUATION, b"c") == Message(False, b"abc")
    assert not messages.in_message
    assert feed(messages, BINARY, b"x", fin=False) is None
    assert feed(messages, CONTINUATION, b"y") == Message(True, b"xy")


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([(CONTINUATION, b"x", True)], "continuation frame without a message"),
        ([(TEXT, b"a", False), (TEXT, b"b", True)], "new message before the last fragment"),
        ([(TEXT, b"a", False), (BINARY, b"b", True)], "new message before the last fragment"),
    ],
)
def test_fragment_sequence_violations_fail_with_1002(
    frames: list[tuple[int, bytes, bool]], reason: str
) -> None:
    messages = plain()
    results = [feed(messages, opcode, data, fin) for opcode, data, fin in frames]
    assert results[-1] == Fail(CloseCode.PROTOCOL_ERROR, reason, reason)


def test_reserved_bits_without_an_extension_fail_with_1002() -> None:
    reason = "reserved bit set without a negotiated extension"
    expected = Fail(CloseCode.PROTOCOL_ERROR, reason, reason)
    assert feed(plain(), TEXT, b"x", rsv1=True) == expected  # no permessage-deflate
    assert plain().feed(TEXT, True, False, True, False, b"x") == expected
    assert deflating().feed(TEXT, True, False, False, True, b"x") == expected
    messages = deflating()
    assert feed(messages, TEXT, compress(b"ab"), fin=False, rsv1=True) is None
    assert feed(messages, CONTINUATION, b"", rsv1=True) == expected  # RFC 7692 6
    assert check_control_frame(True, False, False) == expected
    assert check_control_frame(False, False, False) is None


def test_a_fragmented_message_past_the_cap_fails_with_1009_counted_not_logged() -> None:
    messages = plain(max_size=5)
    assert feed(messages, TEXT, b"abc", fin=False) is None
    assert feed(messages, CONTINUATION, b"def") == Fail(
        CloseCode.MESSAGE_TOO_BIG, "message too big", None
    )


def test_compressed_messages_are_inflated_whole_and_fragmented() -> None:
    messages = deflating()
    assert feed(messages, TEXT, compress(b'{"op":"ping"}'), rsv1=True) == Message(
        False, b'{"op":"ping"}'
    )
    data = compress(b"hello, fragments")
    assert feed(messages, BINARY, data[:3], fin=False, rsv1=True) is None
    assert feed(messages, CONTINUATION, data[3:]) == Message(True, b"hello, fragments")


def test_inflating_past_the_cap_or_garbage_fails() -> None:
    bomb = compress(b"a" * 10_000)
    assert feed(deflating(max_size=100), TEXT, bomb, rsv1=True) == Fail(
        CloseCode.MESSAGE_TOO_BIG, "message too big", "inflated message too big"
    )
    reason = "invalid compressed data"
    assert feed(deflating(), TEXT, b"\xff\xff\xff\xff", rsv1=True) == Fail(
        CloseCode.INVALID_TEXT, reason, reason
    )


def test_text_must_be_utf8_only_where_checked() -> None:
    bad = b"\xc3\x28"
    assert feed(plain(), TEXT, bad) == Fail(
        CloseCode.INVALID_TEXT, "invalid UTF-8", "invalid UTF-8"
    )
    assert feed(plain(), BINARY, bad) == Message(True, bad)  # binary is not text
    # The native protocol's parser checks UTF-8 in its own pass (core.parse_envelope).
    assert feed(plain(check_utf8=False), TEXT, bad) == Message(False, bad)
    messages = plain()
    assert feed(messages, TEXT, b"\xc3", fin=False) is None  # split inside a character
    assert feed(messages, CONTINUATION, b"\xa9") == Message(False, "é".encode())
