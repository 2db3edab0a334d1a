"""Fan-out whose subscribers sit on two workers, with more workers running beside them.

    python -m benchmarks.fanout_placement --workers 2 16 --subscribers 50 --messages 1000

For each worker count: start ``shardws serve``, connect until ``--subscribers`` clients
sit on worker 0 and as many on worker 1 (the ``connected`` push names the worker;
clients that land elsewhere are closed), subscribe them all to one channel, and publish
``--messages`` publications from a client on worker 0 (the same placement for every
worker count). Measured: server CPU over the publishing window (every thread of the
server's process tree, ``/proc/<pid>/task/*/schedstat``, idle baseline subtracted) and
deliveries per server CPU-second. With a bus whose publication cost is O(k) the figure
does not depend on how many other workers run; the ratio to the first count is the bar.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import websockets

from benchmarks.macro import RESULTS, serve
from benchmarks.subscribe_cost import SETTLE_SECONDS, idle_rate
from shardws.tools.loadgen import server_cpu_seconds

CHANNEL = "fan"
CONNECT_ATTEMPTS = 4000  # bound on connections tried to place the subscribers


async def _connect(url: str) -> tuple[Any, int]:
    ws = await websockets.connect(url, max_size=None, ping_interval=None)
    hello = json.loads(await ws.recv())
    return ws, hello["worker"]


async def _placed(url: str, per_worker: int) -> tuple[list[Any], Any]:
    """``per_worker`` subscribers on each of workers 0 and 1, and a publisher on 0."""
    chosen: dict[int, list[Any]] = {0: [], 1: []}
    publisher = None
    for _ in range(CONNECT_ATTEMPTS):
        ws, worker = await _connect(url)
        if worker == 0 and publisher is None:
            publisher = ws
        elif worker in chosen and len(chosen[worker]) < per_worker:
            chosen[worker].append(ws)
        else:
            await ws.close()
        if publisher is not None and all(len(c) == per_worker for c in chosen.values()):
            return chosen[0] + chosen[1], publisher
    raise RuntimeError(f"could not place the clients in {CONNECT_ATTEMPTS} connections")


async def _receive(ws: Any, count: int) -> None:
    got = 0
    while got < count:
        message = await ws.recv()
        if message.startswith('{"type":"pub"'):
            got += 1


async def _run(url: str, pid: int, idle: float, subscribers: int, messages: int) -> dict[str, Any]:
    subs, publisher = await _placed(url, subscribers)
    for n, ws in enumerate(subs):
        await ws.send(json.dumps({"id": n + 1, "op": "subscribe", "channel": CHANNEL}))
        reply = json.loads(await ws.recv())
        assert reply.get("ok"), reply
    receivers = [asyncio.ensure_future(_receive(ws, messages)) for ws in subs]
    data = json.dumps({"p": "x" * 80})
    cpu_before = server_cpu_seconds([pid])
    started = time.monotonic()
    window = 256  # publishes in flight
    replies = 0
    for n in range(messages):
        await publisher.send(f'{{"id":{n + 1},"op":"publish","channel":"{CHANNEL}","data":{data}}}')
        if n + 1 - replies >= window:
            await publisher.recv()
            replies += 1
    while replies < messages:
        await publisher.recv()
        replies += 1
    await asyncio.wait_for(asyncio.gather(*receivers), 300)
    wall = time.monotonic() - started
    cpu = server_cpu_seconds([pid]) - cpu_before - idle * wall
    for ws in (*subs, publisher):
        await ws.close()
    deliveries = messages * len(subs)
    return {
        "deliveries": deliveries,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 3),
        "deliveries_per_cpu_s": round(deliveries / cpu) if cpu > 0 else None,
    }


def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    with serve("shardws", workers, server="heartbeat_timeout = 120") as server:
        time.sleep(SETTLE_SECONDS)
        idle = idle_rate(server.pid, args.idle)
        row = asyncio.run(_run(server.url, server.pid, idle, args.subscribers, args.messages))
    return {"workers": workers, "idle_cpu_per_s": round(idle, 4), **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 16], help="worker counts to compare"
    )
    parser.add_argument("--subscribers", type=int, default=50, help="per worker (0 and 1)")
    parser.add_argument("--messages", type=int, default=1000, help="publications per count")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    parser.add_argument("--label", default="", help="added to the result")
    args = parser.parse_args()
    rows = [measure(workers, args) for workers in args.workers]
    base = rows[0]["deliveries_per_cpu_s"]
    print("| workers running | deliveries | deliveries per server CPU-second | vs first |")
    print("|---|---|---|---|")
    for row in rows:
        rate = row["deliveries_per_cpu_s"]
        ratio = f"{rate / base:.2f}x" if rate and base else "-"
        print(f"| {row['workers']} | {row['deliveries']:,} | {rate:,} | {ratio} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"fanout-placement-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "benchmark": "fanout_placement",
        "label": args.label,
        "cpus": os.cpu_count(),
        "args": vars(args),
        "rows": rows,
    }
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresult: {path}")


if __name__ == "__main__":
    main()
