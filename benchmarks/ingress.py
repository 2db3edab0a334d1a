"""Backend ingress throughput: shardws.Publisher over ZeroMQ against the HTTP API, one run.

    python -m benchmarks.ingress                          # defaults below
    python -m benchmarks.ingress --messages 50000 --http-messages 3000 --repeat 3

One shardws server (2 workers, ingress on loopback tcp) and ``--subscribers`` picows
clients on channel ``bench`` (in their own process). Each transport publishes the same
~100-byte JSON payload from one sync ``Publisher``:

* ``zmq 2-frame``: ``publish(channel, data_bytes)``: frames ``[channel, data]``; the
  server checks ``data`` with the C scanner and never decodes it;
* ``zmq JSON``: ``publish_many([channel], data_bytes)``: one JSON frame, decoded and
  re-encoded by the server like an HTTP body;
* ``http`` (the baseline): ``POST /api/publish`` one request at a time on a kept-alive
  connection, as ``shardws publish`` or a simple backend would.

Reported per transport (median over ``--repeat`` rounds): ``accepted/s`` -- publications
the server took in per second (ZeroMQ: until the admin had read them all, from
``GET /api/stats``; HTTP: until the last reply); ``delivered/s`` -- publications per
second until every subscriber had received every one of them; and both as a ratio
against ``http``. A JSON file per run goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import picows

from benchmarks.macro import RESULTS, _free_port, serve
from shardws import Publisher

API_KEY = "bench-key-bench-key-0123"
CHANNEL = "bench"
PAYLOAD = b'{"n":1,"text":"' + b"x" * 80 + b'"}'  # ~100 B, like the macro scenarios
PUB_PREFIX = b'{"type":"pub"'


class _Counter(picows.WSListener):
    """Subscribes to CHANNEL; counts publications until ``expected`` arrived."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.received = 0

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        transport.send(picows.WSMsgType.TEXT, b'{"id":1,"op":"subscribe","channel":"bench"}')

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUB_PREFIX):
            self.received += 1
            if self.received == self.state["expected"]:
                self.state["done"] += 1
                self.state["last"] = time.monotonic()
                if self.state["done"] == self.state["subscribers"]:
                    self.state["finished"].set()
        elif b'"ok":true' in payload:
            self.state["subscribed"] += 1
            if self.state["subscribed"] == self.state["subscribers"]:
                self.state["ready"].set()


def _subscribers(url: str, count: int, expected: int, ready: Any, result: Any) -> None:
    """Process body: ``count`` subscribers; puts the monotonic time (system-wide on
    Linux) at which the last of them got its ``expected``-th publication."""

    async def main() -> None:
        state: dict[str, Any] = {
            "expected": expected,
            "subscribers": count,
            "subscribed": 0,
            "done": 0,
            "last": 0.0,
            "ready": asyncio.Event(),
            "finished": asyncio.Event(),
        }
        transports = [
            (await picows.ws_connect(lambda: _Counter(state), url))[0] for _ in range(count)
        ]
        await asyncio.wait_for(state["ready"].wait(), 10)
        ready.set()
        await asyncio.wait_for(state["finished"].wait(), 300)
        result.put(state["last"])
        for transport in transports:
            transport.disconnect()

    asyncio.run(main())


def _ingress_received(admin_url: str) -> int:
    request = urllib.request.Request(admin_url + "/api/stats", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.loads(response.read())["admin"]["ingress"]["received"])


def _round(
    transport: str, server_url: str, admin_url: str, bind: str, messages: int, subscribers: int
) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_subscribers, args=(server_url, subscribers, messages, ready, result))
    proc.start()
    try:
        if not ready.wait(15):
            raise RuntimeError("subscribers did not subscribe in time")
        if transport == "http":
            with Publisher(admin_url, api_key=API_KEY) as http:
                started = time.monotonic()
                for _ in range(messages):
                    http.publish(CHANNEL, PAYLOAD)
                accepted_at = time.monotonic()
        else:
            base = _ingress_received(admin_url)
            with Publisher(bind) as pub:
                started = time.monotonic()
                if transport == "zmq 2-frame":
                    for _ in range(messages):
                        pub.publish(CHANNEL, PAYLOAD)
                else:
                    for _ in range(messages):
                        pub.publish_many([CHANNEL], PAYLOAD)
                while _ingress_received(admin_url) < base + messages:
                    time.sleep(0.005)
                accepted_at = time.monotonic()
        delivered_at = result.get(timeout=300)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return {
        "accepted_per_s": messages / (accepted_at - started),
        "delivered_per_s": messages / (delivered_at - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="per ZeroMQ round")
    parser.add_argument("--http-messages", type=int, default=3_000, help="per HTTP round")
    parser.add_argument("--subscribers", type=int, default=4, help="subscribed clients")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians shown)")
    args = parser.parse_args()
    bind = f"tcp://127.0.0.1:{_free_port()}"
    rounds: dict[str, list[dict[str, float]]] = {"zmq 2-frame": [], "zmq JSON": [], "http": []}
    with serve(
        "shardws", workers=2, admin=f'api_key = "{API_KEY}"', extra=f'[ingress]\nbind = "{bind}"\n'
    ) as server:
        for _ in range(args.repeat):
            for transport, runs in rounds.items():
                count = args.http_messages if transport == "http" else args.messages
                runs.append(
                    _round(transport, server.url, server.admin_url, bind, count, args.subscribers)
                )
    medians = {
        transport: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for transport, runs in rounds.items()
    }
    base = medians["http"]
    lines = [
        f"{args.subscribers} subscribers, 2 workers, {len(PAYLOAD)}-byte payload, "
        f"median of {args.repeat}",
        "",
        "| transport | accepted/s | vs http | delivered/s | vs http |",
        "|---|---|---|---|---|",
    ]
    for transport, m in medians.items():
        lines.append(
            f"| {transport} | {m['accepted_per_s']:,.0f} | "
            f"{m['accepted_per_s'] / base['accepted_per_s']:.1f}x | "
            f"{m['delivered_per_s']:,.0f} | "
            f"{m['delivered_per_s'] / base['delivered_per_s']:.1f}x |"
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    path = Path(RESULTS) / f"ingress-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "rounds": rounds, "medians": medians}))
    print(f"\nfull results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
