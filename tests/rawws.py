"""Raw WebSocket frames over a plain socket, for tests that need exact bytes on the wire
(reserved bits, bad close codes, compressed frames) that client libraries never send."""

from __future__ import annotations

import os
import socket
import struct

from serverproc import timeout


def handshake(port: int, path: str, extensions: str = "") -> tuple[socket.socket, bytes, bytes]:
    """Upgrade a new connection; returns (socket, response head, bytes already read past it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(5))
    head, rest = upgrade(sock, path, extensions)
    return sock, head, rest


def upgrade(sock: socket.socket, path: str, extensions: str = "") -> tuple[bytes, bytes]:
    """Send the upgrade request on a connected ``sock``; returns (response head, bytes
    already read past it)."""
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def client_frame(first_byte: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3) with the given first byte (FIN, RSV, opcode)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first_byte, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first_byte, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first_byte, 0x80 | 127, n)
    return header + mask + masked


class FrameReader:
    """Server frames from a socket, one at a time: (first byte, payload)."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.data = leftover

    def next(self) -> tuple[int, bytes]:
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection dropped"
            self.data += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        data = self.data
        if len(data) < 2:
            return None
        length = data[1] & 0x7F
        header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        if len(data) < header:
            return None
        if length == 126:
            length = struct.unpack("!H", data[2:4])[0]
        elif length == 127:
            length = struct.unpack("!Q", data[2:10])[0]
        if len(data) < header + length:
            return None
        self.data = data[header + length :]
        return data[0], data[header : header + length]

    def close_code(self) -> int:
        """Skip frames until a Close; its status code."""
        while True:
            first, payload = self.next()
            if first & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])


def close_code_after(port: int, frames: list[bytes], offer: str = "") -> tuple[int, bytes]:
    """Upgrade ``/ws`` (offering ``offer`` as extensions), send ``frames``; the code of
    the server's Close and the upgrade response head."""
    sock, head, rest = handshake(port, "/ws", offer)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(b"".join(frames))
        return FrameReader(sock, rest).close_code(), head
    finally:
        sock.close()
