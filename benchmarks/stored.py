"""What "the 200 means stored" costs: the latency of ``POST /api/publish`` to a history
channel (the admin waits for the channel's owner to store it) against the
fire-and-forget path (a plain channel: parsed and queued on the bus, answered at once,
which is all the old history path did before it told the owner without waiting), in one
run on one server; and the same stored publication through the acknowledged ingress
(``[ingress] acked_bind``, a DEALER ``Publisher``).

    python -m benchmarks.stored                         # defaults below
    python -m benchmarks.stored --requests 2000 --repeat 3

One shardws server with 2 workers; one ``shardws.Publisher`` with one request in flight
(over HTTP on a kept-alive connection: what a simple backend does). Rounds alternate the
modes; reported per mode: the median over ``--repeat`` rounds of each round's median and
99th percentile latency and of its requests per second, each as a ratio of the
fire-and-forget mode's. A JSON file goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from benchmarks.macro import ratio_table, save_medians, serve
from shardws import Publisher

API_KEY = "bench-key-bench-key-bench"
NAMESPACES = """
[namespaces.default]

[namespaces.h]
history_size = 100000
history_ttl = 600
"""
#: mode -> (channel, transport: "http" or "acked").
MODES = {
    "fire-and-forget": ("bench", "http"),
    "stored": ("h:bench", "http"),
    "stored, acknowledged ingress": ("h:bench", "acked"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _round(url: str, channel: str, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    acked = url.startswith("tcp://")
    with Publisher(url, api_key=API_KEY, acknowledged=acked) as publisher:
        publisher.publish(channel, "warm-up")  # the connection is open before timing
        started = time.perf_counter()
        for n in range(requests):
            sent = time.perf_counter()
            reply = publisher.publish(channel, {"n": n, "text": "x" * 64})
            latencies.append(time.perf_counter() - sent)
            assert reply is not None and reply["ok"]
            if channel.startswith("h:"):
                assert "offset" in reply, reply
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "per_s": requests / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians shown)")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    admin = f'api_key = "{API_KEY}"'
    acked = f"tcp://127.0.0.1:{_free_port()}"
    extra = NAMESPACES + f'[ingress]\nacked_bind = "{acked}"\n'
    with serve("shardws", workers=2, extra=extra, admin=admin) as server:
        for _ in range(args.repeat):
            for mode, (channel, transport) in MODES.items():
                url = server.admin_url if transport == "http" else acked
                results[mode].append(_round(url, channel, args.requests))
    summary, path = save_medians("stored", args, results)
    columns = [
        ("median ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".2f"),
        ("requests/s", "per_s", ",.0f"),
    ]
    print(ratio_table(summary, "fire-and-forget", columns))
    print(f"full results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
