"""JSON against MessagePack on a real server: bytes on the wire per delivery and
deliveries per server CPU-second, for the three payloads of issue 32, each as JSON,
JSON + permessage-deflate, MessagePack and MessagePack + deflate, all in the same run.

    python -m benchmarks.wireformats [--subscribers 200] [--publications 2000] [--rounds 5]

One ``shardws serve`` with one worker (``[compression] threshold = 0``, so every
message of a deflating connection is compressed). Per case: ``--subscribers`` raw
sockets in the case's format (``Sec-WebSocket-Protocol: shardws.msgpack`` for
MessagePack, a permessage-deflate offer for deflate) subscribe to the case's channel;
one publisher in the case's publishing format sends ``--publications`` publications in
batches of 50, each batch waited for at every subscriber (frames counted), so no
subscriber falls behind. The worker's CPU (``/proc/PID/task/*/schedstat``) over the
publish phase counts everything: command parsing, conversion, fan-out, compression.
A JSON publisher to MessagePack subscribers (``json→msgpack``) shows the cost of the
conversion, made once per publication: its extra CPU over ``msgpack`` per publication.
Every case runs ``--rounds`` times, interleaved; each row shows the median round
and the best one (the least disturbed by other work on the host).

Results: ``benchmarks/results/wireformats-*.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from benchmarks.macro import serve

RESULTS = Path(__file__).parent / "results"
BATCH = 50
DEFLATE = "permessage-deflate; client_max_window_bits"

CHAT = {
    "user": "alice",
    "room": "lobby",
    "text": "see you at the standup in five minutes",
    "ts": 1764950400123,
}
TICK = {
    "s": "BTC-USD",
    "bid": 97123.5,
    "ask": 97124.25,
    "bs": 0.3521,
    "as": 1.2004,
    "ts": 1764950400123,
    "seq": 184467,
}
DASHBOARD = {
    "dashboard": "plant-3",
    "records": [
        {
            "id": i,
            "name": f"sensor-{i:03d}",
            "value": round((i * 7919 % 100000) / 100, 2),
            "status": "ok",
            "unit": "kPa",
        }
        for i in range(40)
    ],
}
PAYLOADS = {"chat": CHAT, "tick": TICK, "dashboard": DASHBOARD}

#: case -> (subscribers speak MessagePack, they offer deflate, the publisher speaks MessagePack)
CASES = {
    "json": (False, False, False),
    "json+deflate": (False, True, False),
    "msgpack": (True, False, True),
    "msgpack+deflate": (True, True, True),
    "json→msgpack": (True, False, False),
}


def _encode(command: dict[str, Any], binary: bool) -> bytes:
    if binary:
        return msgpack.packb(command)
    return json.dumps(command, separators=(",", ":")).encode()


def _masked(payload: bytes, binary: bool) -> bytes:
    """One masked client frame (RFC 6455 5.3) of ``payload``."""
    mask = os.urandom(4)
    first = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    else:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


def _connect(port: int, binary: bool, offer: str) -> Reader:
    sock = socket.create_connection(("127.0.0.1", port))
    headers = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    if binary:
        headers += "Sec-WebSocket-Protocol: shardws.msgpack\r\n"
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        ).encode()
    )
    data = b""
    for _ in range(100):
        data += sock.recv(4096)
        if b"\r\n\r\n" in data:
            break
    assert data.startswith(b"HTTP/1.1 101"), data
    sock.setblocking(False)
    reader = Reader(sock)
    reader.buffer = data.split(b"\r\n\r\n", 1)[1]  # frames that came with the 101
    reader.count()
    return reader


class Reader:
    """Counts the frames and bytes one subscriber socket receives (server frames are
    unmasked: 2-byte head, 16- or 64-bit extended length)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.frames = 0
        self.bytes = 0

    def read(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        self.bytes += len(chunk)
        self.buffer += chunk
        self.count()

    def count(self) -> None:
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= 2:
            n = buffer[at + 1] & 0x7F
            head = 2
            if n == 126:
                if len(buffer) - at < 4:
                    break
                n = struct.unpack_from("!H", buffer, at + 2)[0]
                head = 4
            elif n == 127:
                if len(buffer) - at < 10:
                    break
                n = struct.unpack_from("!Q", buffer, at + 2)[0]
                head = 10
            if len(buffer) - at < head + n:
                break
            at += head + n
            self.frames += 1
        self.buffer = buffer[at:]


def _pump(readers: list[Reader], until: int, limit: float = 60) -> None:
    """Read until every reader has ``until`` frames (bounded by ``limit`` seconds)."""
    selector = selectors.DefaultSelector()
    for reader in readers:
        selector.register(reader.sock, selectors.EVENT_READ, reader)
    deadline = time.monotonic() + limit
    try:
        while any(r.frames < until for r in readers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscribers did not get {until} frames in {limit} s")
            for key, _ in selector.select(1.0):
                key.data.read()
    finally:
        selector.close()


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (``schedstat``: nanoseconds, not ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def _worker_pid(supervisor: int) -> int:
    for task in os.listdir(f"/proc/{supervisor}/task"):
        with open(f"/proc/{supervisor}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmd:
                    if b"worker" in cmd.read():
                        return int(child)
    raise RuntimeError("no worker process")


def _case(
    port: int, worker: int, name: str, payload: str, subscribers: int, publications: int
) -> dict[str, Any]:
    sub_binary, offer, pub_binary = CASES[name]
    channel = f"{payload[0]}{list(CASES).index(name)}"  # the same length in every case
    subs = [_connect(port, sub_binary, DEFLATE if offer else "") for _ in range(subscribers)]
    _pump(subs, 1)  # the connected push
    command = {"id": 1, "op": "subscribe", "channel": channel}
    subscribe = _masked(_encode(command, sub_binary), sub_binary)
    for reader in subs:
        reader.sock.sendall(subscribe)
    _pump(subs, 2)
    publisher = _connect(port, pub_binary, "")
    _pump([publisher], 1)
    frame = _masked(
        _encode({"op": "publish", "channel": channel, "data": PAYLOADS[payload]}, pub_binary),
        pub_binary,
    )
    before_bytes = sum(r.bytes for r in subs)
    cpu = _cpu_seconds(worker)
    for sent in range(BATCH, publications + 1, BATCH):
        publisher.sock.sendall(frame * BATCH)
        _pump(subs, 2 + sent)
        _pump([publisher], 1 + sent)
    cpu = _cpu_seconds(worker) - cpu
    deliveries = subscribers * publications
    wire = sum(r.bytes for r in subs) - before_bytes
    for reader in [*subs, publisher]:
        reader.sock.close()
    return {
        "payload": payload,
        "case": name,
        "subscribers": subscribers,
        "publications": publications,
        "bytes_per_delivery": round(wire / deliveries, 1),
        "server_cpu_s": round(cpu, 3),
        "deliveries_per_cpu_s": round(deliveries / cpu) if cpu else None,
    }


def run(subscribers: int, publications: int, rounds: int) -> dict[str, Any]:
    extra = "[compression]\nenabled = true\nthreshold = 0\n"
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with serve("shardws", 1, extra) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.5)
        worker = _worker_pid(server.pid)
        for _ in range(rounds):  # interleaved: a busy moment of the host hits every case
            for payload in PAYLOADS:
                for name in CASES:
                    row = _case(port, worker, name, payload, subscribers, publications)
                    samples.setdefault((payload, name), []).append(row)
    rows = []
    for runs in samples.values():
        runs.sort(key=lambda r: r["server_cpu_s"])
        median = dict(runs[len(runs) // 2])
        median["rates"] = [r["deliveries_per_cpu_s"] for r in runs]
        median["best_deliveries_per_cpu_s"] = runs[0]["deliveries_per_cpu_s"]
        rows.append(median)
    for row in rows:
        base = next(r for r in rows if r["payload"] == row["payload"] and r["case"] == "json")
        row["bytes_vs_json"] = round(row["bytes_per_delivery"] / base["bytes_per_delivery"], 2)
        for key in ("deliveries_per_cpu_s", "best_deliveries_per_cpu_s"):
            if row[key] and base[key]:
                row[key.replace("deliveries_per_cpu_s", "rate_vs_json")] = round(
                    row[key] / base[key], 2
                )
    for payload in PAYLOADS:  # the conversion's cost, per publication
        by_case = {r["case"]: r for r in rows if r["payload"] == payload}
        extra_cpu = by_case["json→msgpack"]["server_cpu_s"] - by_case["msgpack"]["server_cpu_s"]
        by_case["json→msgpack"]["conversion_us_per_publication"] = round(
            extra_cpu / publications * 1e6, 1
        )
    return {
        "subscribers": subscribers,
        "publications": publications,
        "rounds": rounds,
        "rows": rows,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| payload | format | bytes/delivery | x JSON | deliveries/CPU-s, median |"
        " x JSON | best round | x JSON |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['payload']} | {row['case']} | {row['bytes_per_delivery']} | "
            f"{row['bytes_vs_json']} | {row['deliveries_per_cpu_s'] or 0:,} | "
            f"{row.get('rate_vs_json', '-')} | {row['best_deliveries_per_cpu_s'] or 0:,} | "
            f"{row.get('best_rate_vs_json', '-')} |"
        )
    conversions = [
        f"{row['payload']} {row['conversion_us_per_publication']} µs"
        for row in results["rows"]
        if "conversion_us_per_publication" in row
    ]
    lines.append("")
    lines.append(
        "JSON→MessagePack conversion per publication (median rounds): " + ", ".join(conversions)
    )
    return "\n".join(lines)


def cli(
    doc: str,
    name: str,
    run_cases: Callable[[int, int, int], dict[str, Any]],
    show: Callable[[dict[str, Any]], str],
    publications: int,
    rounds: int,
) -> None:
    """The command line both wire benchmarks share: run the cases, save the results as
    ``results/NAME-DATE.json``, print the table."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200, help="per case")
    parser.add_argument(
        "--publications", type=int, default=publications, help=f"per case, a multiple of {BATCH}"
    )
    parser.add_argument("--rounds", type=int, default=rounds, help="runs of every case (median)")
    args = parser.parse_args()
    if args.publications % BATCH:
        parser.error(f"--publications must be a multiple of {BATCH}")
    results = run_cases(args.subscribers, args.publications, args.rounds)
    results["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(show(results))
    print(f"results: {path}")


def main() -> None:
    cli(__doc__ or "", "wireformats", run, table, publications=2000, rounds=5)


if __name__ == "__main__":
    main()
