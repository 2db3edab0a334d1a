"""permessage-deflate end to end: a real server with ``[compression]`` on, real clients
(``websockets`` with and without compression, and raw sockets to see the frames)."""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

import pytest
import websockets
from rawws import FrameReader, client_frame, close_code_after, handshake
from serverproc import ServerProcess
from toolkit import run
from wsclient import Client

THRESHOLD = 200
MAX_MESSAGE = 100_000


SERVER = {
    "workers": 2,
    "server": f"max_message_size = {MAX_MESSAGE}",
    "extra": f"[compression]\nenabled = true\nthreshold = {THRESHOLD}\nmax_window_bits = 12\n",
}


def _inflate(payload: bytes, bits: int) -> bytes:
    return zlib.decompressobj(-bits).decompress(payload + b"\x00\x00\xff\xff")


def _raw_subscriber(server: ServerProcess, offer: str, channel: str) -> tuple[FrameReader, bytes]:
    sock, head, rest = handshake(server.ws_port, "/ws", offer)
    reader = FrameReader(sock, rest)
    first, hello = reader.next()
    assert first == 0x81 and b'"connected"' in hello  # small: sent uncompressed
    sock.sendall(
        client_frame(0x81, json.dumps({"id": 1, "op": "subscribe", "channel": channel}).encode())
    )
    first, reply = reader.next()
    assert json.loads(reply) == {"id": 1, "ok": True}
    return reader, head


def test_compressed_and_plain_subscribers_get_the_same_publication(server: ServerProcess) -> None:
    data = {"text": "the same words again and again " * 40}

    async def scenario() -> None:
        # websockets negotiates permessage-deflate by default; the second client refuses it.
        deflating = await Client.connect(server.url)
        plain = await Client.connect(server.url, compression=None)
        assert [e.name for e in deflating.ws.protocol.extensions] == ["permessage-deflate"]
        assert plain.ws.protocol.extensions == []
        for client in (deflating, plain):
            assert (await client.call("subscribe", channel="zip"))["ok"]
        # Raw subscribers asking for a 9-bit and a 15-bit (held to 12) server window.
        loop = asyncio.get_running_loop()
        nine, head9 = await loop.run_in_executor(
            None, _raw_subscriber, server, "permessage-deflate; server_max_window_bits=9", "zip"
        )
        twelve, head12 = await loop.run_in_executor(
            None, _raw_subscriber, server, "permessage-deflate; client_max_window_bits", "zip"
        )
        assert b"server_max_window_bits=9" in head9
        assert b"client_max_window_bits=12" in head12
        # The publisher's own message goes in compressed and is inflated by the server.
        assert (await deflating.call("publish", channel="zip", data=data))["ok"]
        for client in (deflating, plain):
            push = await client.next_push()
            assert push == {"type": "pub", "channel": "zip", "data": data}
        for reader, bits in ((nine, 9), (twelve, 12)):
            first, payload = await loop.run_in_executor(None, reader.next)
            assert first == 0xC1  # FIN + RSV1 + text: compressed
            push_bytes = _inflate(payload, bits)
            assert json.loads(push_bytes)["data"] == data
            assert len(payload) < len(push_bytes) / 5
            reader.sock.close()
        await deflating.close()
        await plain.close()

    run(scenario())


def test_messages_under_the_threshold_stay_plain(server: ServerProcess) -> None:
    reader, _ = _raw_subscriber(server, "permessage-deflate", "small")
    try:
        body = json.dumps({"id": 2, "op": "publish", "channel": "small", "data": "hi"}).encode()
        reader.sock.sendall(client_frame(0x81, body))
        frames = [reader.next(), reader.next()]
        assert all(first == 0x81 for first, _ in frames), frames
    finally:
        reader.sock.close()


def test_fragmented_compressed_message_is_inflated(server: ServerProcess) -> None:
    reader, _ = _raw_subscriber(server, "permessage-deflate", "frag")
    try:
        body = json.dumps({"id": 3, "op": "publish", "channel": "frag", "data": "x" * 500}).encode()
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = (compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        half = len(deflated) // 2
        # RSV1 only on the first frame (RFC 7692 6.1); the continuation carries none.
        reader.sock.sendall(
            client_frame(0x41, deflated[:half]) + client_frame(0x80, deflated[half:])
        )
        replies = [reader.next(), reader.next()]
        texts = [_inflate(p, 15) if first & 0x40 else p for first, p in replies]
        assert {"id": 3, "ok": True} in [json.loads(t) for t in texts]
    finally:
        reader.sock.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # A zip bomb: 50 MB of zeros in ~50 KB, far past max_message_size once inflated.
        (
            [
                client_frame(
                    0xC1,
                    (
                        lambda c: (c.compress(b"\x00" * 50_000_000) + c.flush(zlib.Z_SYNC_FLUSH))[
                            :-4
                        ]
                    )(zlib.compressobj(9, zlib.DEFLATED, -15)),
                )
            ],
            1009,
        ),
        ([client_frame(0xC1, b"\xff\xff\xff\xff")], 1007),  # not a deflate stream
        (
            [client_frame(0x41, b"\x00"), client_frame(0xC0, b"\x00")],
            1002,
        ),  # RSV1 on a continuation
        ([client_frame(0xC9, b"")], 1002),  # RSV1 on a ping
    ],
)
def test_compressed_input_violations(server: ServerProcess, frames: list[bytes], code: int) -> None:
    received, head = close_code_after(server.ws_port, frames, "permessage-deflate")
    assert b"permessage-deflate" in head
    assert received == code


def test_compression_off_by_default(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1).start() as proc:

        async def scenario() -> None:
            async with websockets.connect(proc.url) as ws:
                assert ws.protocol.extensions == []

        run(scenario())
