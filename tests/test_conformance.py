"""RFC 6455 conformance: the Autobahn cases against a real server, and the frame rules
the server enforces itself (picows leaves RSV bits and some close codes to it).

The Autobahn run fails on any case that does not pass and is not in
``autobahn_cases.EXCLUDED``; ``docs/conformance.md`` has the full report.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from autobahn_cases import CI_CASES, EXCLUDED, echo_url, run_cases, start_server, summary_table
from serverproc import ServerProcess, timeout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("autobahn"))
    yield proc
    proc.stop()


@pytest.mark.timeout(900)
def test_autobahn_cases_pass(server: ServerProcess) -> None:
    outcome = asyncio.run(run_cases(echo_url(server), CI_CASES))
    print(summary_table(outcome))
    print(f"{len(outcome.results)} cases in {outcome.seconds:.1f} s")
    assert len(outcome.results) >= 300, "the case selection shrank"
    problems = "\n".join(
        f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value}: {r.result} {r.result_close}"
        for r in outcome.failures
    )
    assert not outcome.failures, f"Autobahn cases failed:\n{problems}"
    for result in outcome.excluded:
        assert result.case_id in EXCLUDED


# ---------------------------------------------------------------- raw frames, native path


def _handshake(port: int, path: str, extensions: str = "") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(5))
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    response, _, rest = head.partition(b"\r\n\r\n")
    sock.settimeout(timeout(5))
    return sock, response + b"\r\n\r\n" + rest


def _client_frame(first_byte: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3) with the given first byte."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", first_byte, 0x80 | len(payload)) + mask + masked


def _close_code_after(sock: socket.socket, leftover: bytes) -> int:
    """Read server frames until a Close; return its code."""
    data = leftover
    while True:
        while len(data) >= 2:
            length = data[1] & 0x7F
            header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            if length == 126:
                length = struct.unpack("!H", data[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", data[2:10])[0]
            if len(data) < header + length:
                break
            opcode, payload = data[0] & 0x0F, data[header : header + length]
            data = data[header + length :]
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])
        chunk = sock.recv(65536)
        assert chunk, "connection dropped without a Close frame"
        data += chunk


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([_client_frame(0x81 | 0x20, b'{"op":"ping"}')], 1002),  # RSV2
        ([_client_frame(0x81 | 0x10, b'{"op":"ping"}')], 1002),  # RSV3
        ([_client_frame(0x81 | 0x40, b'{"op":"ping"}')], 1002),  # RSV1, nothing negotiated
        ([_client_frame(0x80, b"x")], 1002),  # continuation without a message
        ([_client_frame(0x01, b"{"), _client_frame(0x81, b"{}")], 1002),  # new msg mid-way
        ([_client_frame(0x88, struct.pack("!H", 1005))], 1002),  # code nobody may send
        ([_client_frame(0x88, struct.pack("!H", 1006))], 1002),
        ([_client_frame(0x88, struct.pack("!H", 5000))], 1002),
        ([_client_frame(0x88, struct.pack("!H", 4321))], 4321),  # application code: echoed
        ([_client_frame(0x88, b"")], 1000),
    ],
)
def test_native_endpoint_frame_rules(
    server: ServerProcess, frames: list[bytes], expected: int
) -> None:
    sock, response = _handshake(server.ws_port, "/ws")
    try:
        assert response.startswith(b"HTTP/1.1 101"), response
        sock.sendall(b"".join(frames))
        assert _close_code_after(sock, response.partition(b"\r\n\r\n")[2]) == expected
    finally:
        sock.close()


def test_echo_endpoint_is_off_by_default(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=1).start()
    try:
        sock, response = _handshake(proc.ws_port, "/autobahn")
        sock.close()
        assert response.startswith(b"HTTP/1.1 404"), response
    finally:
        proc.stop()
