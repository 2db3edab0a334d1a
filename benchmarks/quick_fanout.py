"""Quick fan-out measurement: N subscribers on one channel, one publisher flat out.

Starts a real ``shardws serve`` (W workers) on free loopback ports, opens the subscribers
from several client processes (picows clients that count frames without decoding them),
publishes M messages of ~100 bytes from one connection, and reports deliveries/s from
the first publish to the last delivery, plus the server's CPU seconds over that window.

    python benchmarks/quick_fanout.py --workers 1 --subscribers 1000 --messages 1000

The generator shares the machine's cores with the server, so compare runs made on the
same machine in the same sitting; ``deliveries_per_server_cpu_s`` is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import picows

CHANNEL = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Counter(picows.WSListener):
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            payload = frame.get_payload_as_memoryview()
            if bytes(payload[:9]) == b'{"type":"':
                if bytes(payload[9:12]) == b"pub":
                    self.state["received"] += 1
                    self.state["last"] = time.time()
            elif bytes(payload[:5]) == b'{"id"':
                self.state["acks"] += 1


async def _subscribers(
    url: str, count: int, expected: int, ready: Any, limit: float
) -> dict[str, Any]:
    state: dict[str, Any] = {"received": 0, "acks": 0, "last": 0.0}
    transports = []
    for _ in range(count):
        transport, _listener = await picows.ws_connect(lambda: _Counter(state), url)
        transport.send(picows.WSMsgType.TEXT, b'{"id":1,"op":"subscribe","channel":"bench"}')
        transports.append(transport)
    deadline = time.monotonic() + limit
    while state["acks"] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    ready.send(state["acks"])
    while state["received"] < expected * count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for transport in transports:
        transport.disconnect()
    return state


def _subscriber_process(url: str, count: int, expected: int, conn: Any, limit: float) -> None:
    state = asyncio.run(_subscribers(url, count, expected, conn, limit))
    conn.send({"received": state["received"], "last": state["last"]})


async def _publish(url: str, messages: int, limit: float) -> float:
    state: dict[str, Any] = {"received": 0, "acks": 0, "last": 0.0}
    transport, _ = await picows.ws_connect(lambda: _Counter(state), url)
    pad = b"x" * 40
    started = time.time()
    for n in range(messages):
        transport.send(
            picows.WSMsgType.TEXT,
            b'{"id":%d,"op":"publish","channel":"bench","data":{"t":%.6f,"p":"%s"}}'
            % (n, time.time(), pad),
        )
        if n % 64 == 63:
            await asyncio.sleep(0)  # let the transport flush; flat out otherwise
    # Every publish is acknowledged: wait for all acks before closing, so nothing is
    # left in the client's buffers when its loop ends.
    deadline = time.monotonic() + limit
    while state["acks"] < messages and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    transport.disconnect()
    await transport.wait_disconnected()
    return started


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError):
            pass
    return total


def run(
    workers: int, subscribers: int, messages: int, procs: int, limit: float = 120
) -> dict[str, Any]:
    port, admin = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f"[server]\nport = {port}\nworkers = {workers}\n[admin]\nport = {admin}\n"
            '[log]\nlevel = "warning"\n'
        )
        server = subprocess.Popen([sys.executable, "-m", "shardws", "serve", "-c", str(config)])
        try:
            health: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=1) as r:
                        health = json.loads(r.read())
                        break
                except OSError:
                    time.sleep(0.1)
            pids = [w["pid"] for w in health["per_worker"]]
            url = f"ws://127.0.0.1:{port}/ws"
            ctx = mp.get_context("spawn")
            pipes, children = [], []
            per_proc = subscribers // procs
            for _ in range(procs):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_subscriber_process, args=(url, per_proc, messages, child, limit)
                )
                proc.start()
                pipes.append(parent)
                children.append(proc)
            acked = sum(p.recv() for p in pipes)
            cpu_before = _cpu_seconds(pids)
            started = asyncio.run(_publish(url, messages, limit))
            results = [p.recv() for p in pipes]
            cpu_after = _cpu_seconds(pids)
            for proc in children:
                proc.join(10)
        finally:
            server.terminate()
            server.wait(30)
    received = sum(r["received"] for r in results)
    last = max(r["last"] for r in results)
    elapsed = max(last - started, 1e-9)
    cpu = cpu_after - cpu_before
    return {
        "workers": workers,
        "subscribers": per_proc * procs,
        "subscribed": acked,
        "messages": messages,
        "deliveries": received,
        "expected": per_proc * procs * messages,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(received / elapsed),
        "server_cpu_s": round(cpu, 3),
        "deliveries_per_server_cpu_s": round(received / cpu) if cpu > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.workers, args.subscribers, args.messages, args.procs)))


if __name__ == "__main__":
    main()
