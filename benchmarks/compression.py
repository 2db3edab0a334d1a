"""What permessage-deflate costs: CPU of compress-once against per-connection compression,
and server memory per compressing connection. Each comparison runs in the same run.

    python -m benchmarks.compression            # both; or: cpu | memory

1. CPU (in process, uvloop, real AF_UNIX socketpairs as subscribers): one 0.9 KB JSON
   publication to 1,000 subscribers, fan-out plus flush, per publication:
   * ``plain``: nobody compresses (the path every non-compressing deployment runs);
   * ``compress_once``: every subscriber negotiated permessage-deflate, half with a
     15-bit and half with a 9-bit window: ``_core.Deflated`` compresses twice per
     publication and ``fanout`` hands each subscriber its window's frame;
   * ``per_connection``: the same subscribers, one compression per subscriber (what a
     server that compresses on each connection's own stream does, before even counting
     its per-connection deflate state).
2. Memory (a real one-worker ``shardws serve``): server RSS per connection for 2,000
   raw connections without compression, with it negotiated and idle, and after each
   connection sent one compressed message (inflate state kept while the client uses
   context takeover: 15-bit and 10-bit windows), and with ``client_no_context_takeover``.

Results: ``benchmarks/results/compression-*.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.macro import serve
from benchmarks.test_micro import _BOOK  # the same order book the micro benchmarks use
from shardws import _core

RESULTS = Path(__file__).parent / "results"
SUBSCRIBERS = 1000
ROUNDS = 200
CONNECTIONS = 2000

PUSH = json.dumps({"type": "pub", "channel": "md:BTC-USD", "data": _BOOK}).encode()


# ----------------------------------------------------------------------------- CPU


async def _cpu() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pairs = []
    for _ in range(SUBSCRIBERS):
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        pairs.append((transport, peer))
    bits = [15 if i % 2 else 9 for i in range(SUBSCRIBERS)]
    plain = [_core.Sink(t, max_pending=1 << 30) for t, _ in pairs]
    deflating = [
        _core.Sink(t, max_pending=1 << 30, deflate_bits=b)
        for (t, _), b in zip(pairs, bits, strict=True)
    ]
    frame = _core.build_text_frame(PUSH)

    def plain_round() -> None:
        _core.fanout(frame, plain)

    def once_round() -> None:
        _core.fanout(frame, deflating, False, _core.Deflated(PUSH))

    def per_connection_round() -> None:
        for sink in deflating:
            sink.send(_core.Deflated(PUSH).frame(sink.deflate_bits))

    def drain() -> int:
        total = 0
        for _, peer in pairs:
            try:
                while chunk := peer.recv(1 << 20):
                    total += len(chunk)
            except BlockingIOError:
                pass
        return total

    results: dict[str, Any] = {}
    for name, body in (
        ("plain", plain_round),
        ("compress_once", once_round),
        ("per_connection", per_connection_round),
    ):
        times = []
        received = 0
        for _ in range(ROUNDS):
            start = time.perf_counter()
            body()
            _core.flush()
            times.append(time.perf_counter() - start)
            await asyncio.sleep(0)
            received += drain()
        results[name] = {
            "us_per_publication_median": round(statistics.median(times) * 1e6, 1),
            "us_per_publication_p90": round(sorted(times)[int(len(times) * 0.9)] * 1e6, 1),
            "bytes_per_delivery": round(received / (ROUNDS * SUBSCRIBERS), 1),
        }
    base = results["plain"]["us_per_publication_median"]
    for entry in results.values():
        entry["vs_plain"] = round(entry["us_per_publication_median"] / base, 2)
    results["message_bytes"] = len(PUSH)
    results["subscribers"] = SUBSCRIBERS
    for transport, peer in pairs:
        transport.close()
        peer.close()
    return results


def cpu_cost() -> dict[str, Any]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_cpu())


# -------------------------------------------------------------------------- memory


def _rss_of_workers(supervisor: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{supervisor}/task"):
        with open(f"/proc/{supervisor}/task/{task}/children") as f:
            children = [int(c) for c in f.read().split()]
        for child in children:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"worker" not in f.read():
                    continue
            with open(f"/proc/{child}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
    return total


def _masked(first: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", first, 0x80 | len(payload)) + mask + body


def _connect(port: int, offer: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    header = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{header}\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101"), data
    assert (b"permessage-deflate" in data) == bool(offer), data
    return sock


def _settle(sockets: list[socket.socket]) -> None:
    time.sleep(1.0)
    for sock in sockets:  # the connected push and any replies
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            pass


def _memory_case(offer: str, send: bool, window_bits: int) -> dict[str, Any]:
    extra = f"[compression]\nenabled = true\nmax_window_bits = {window_bits}\n"
    ping = b'{"id":1,"op":"ping","pad":"' + b"abcdefgh" * 8 + b'"}'
    with serve("shardws", 1, extra) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.5)
        before = _rss_of_workers(server.pid)
        sockets = [_connect(port, offer) for _ in range(CONNECTIONS)]
        if send:
            # Each client's own compressor: context takeover unless the offer says not.
            for sock in sockets:
                compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
                data = compressor.compress(ping) + compressor.flush(zlib.Z_SYNC_FLUSH)
                sock.sendall(_masked(0xC1, data[:-4]))
        _settle(sockets)
        after = _rss_of_workers(server.pid)
        for sock in sockets:
            sock.close()
    return {
        "offer": offer,
        "sent_compressed_message": send,
        "max_window_bits": window_bits,
        "kb_per_connection": round((after - before) / CONNECTIONS / 1024, 2),
    }


def memory_cost() -> dict[str, Any]:
    offer = "permessage-deflate; client_max_window_bits"
    cases = {
        "no_compression": _memory_case("", False, 15),
        "negotiated_idle": _memory_case(offer, False, 15),
        "after_message_15_bits": _memory_case(offer, True, 15),
        "after_message_10_bits": _memory_case(offer, True, 10),
        "after_message_no_context_takeover": _memory_case(
            offer + "; client_no_context_takeover", True, 15
        ),
    }
    base = cases["no_compression"]["kb_per_connection"]
    for entry in cases.values():
        entry["kb_over_no_compression"] = round(entry["kb_per_connection"] - base, 2)
    return {"connections": CONNECTIONS, "cases": cases}


def main() -> None:
    which = sys.argv[1:] or ["cpu", "memory"]
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if "cpu" in which:
        results["cpu"] = cpu_cost()
        print(json.dumps(results["cpu"], indent=2))
    if "memory" in which:
        results["memory"] = memory_cost()
        print(json.dumps(results["memory"], indent=2))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"compression-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
