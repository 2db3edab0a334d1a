"""bridge.py without processes: which peer frames pass on to the workers, and which
peer addresses are this host's own."""

from __future__ import annotations

import socket
import struct

import pytest

from shardws.pure.busframe import well_formed as _well_formed
from shardws.server.bridge import _is_own_address

HEADER = struct.Struct("!IIQIQ")  # the bus header: origin, incarnation, seq, count, stamp


def frame(topic: bytes, payloads: list[bytes], count: int | None = None) -> bytes:
    header = HEADER.pack(7 << 16 | 1, 1234, 0, len(payloads) if count is None else count, 0)
    body = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
    return topic + header + body


def test_well_formed_bus_frames_pass() -> None:
    for topic in (b"cnews\0", b"ualice\0", b"i458753\0"):
        for payloads in ([], [b"{}"], [b'{"a":1}', b"x" * 70_000]):
            data = frame(topic, payloads)
            assert _well_formed(data, data.find(b"\0") + 1)
    barrier = frame(b"s458753.4\0", [])
    assert _well_formed(barrier, barrier.find(b"\0") + 1)


@pytest.mark.parametrize(
    "data",
    [
        b"cnews-without-terminator",
        b"\0" + HEADER.pack(0, 0, 0, 0, 0),  # empty topic
        b"xnews\0" + HEADER.pack(0, 0, 0, 0, 0),  # unknown kind
        b"cnews\0" + b"short",  # no full header
        frame(b"cnews\0", [b"{}"], count=2),  # fewer payloads than counted
        frame(b"cnews\0", [b"{}", b"{}"], count=1),  # trailing bytes
        frame(b"cnews\0", [b"{}"])[:-1],  # a payload cut short
        b"cnews\0" + HEADER.pack(0, 0, 0, 1, 0) + struct.pack("!I", 2**32 - 1),
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    assert not _well_formed(data, data.find(b"\0") + 1)


def test_own_address_is_recognised_by_port_and_local_address() -> None:
    assert _is_own_address(socket.AF_INET, "127.0.0.1", 9767, 9767)
    assert not _is_own_address(socket.AF_INET, "127.0.0.1", 9768, 9767)  # another port
    assert not _is_own_address(socket.AF_INET, "192.0.2.1", 9767, 9767)  # TEST-NET: not ours
