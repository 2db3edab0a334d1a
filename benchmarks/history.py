"""The cost of history: publishing to a channel with history (owner hop, offsets, ring)
against a plain channel, in one run on one server.

    python -m benchmarks.history                       # defaults below
    python -m benchmarks.history --messages 20000 --repeat 3

One shardws server with 2 workers. One publisher connection on the worker that does
*not* own the history channel (so every publication takes the owner hop over the bus)
sends ``--messages`` publishes with up to ``--window`` of them unanswered, and
``--subscribers`` connections (spread over both workers) receive them. Reported per
mode (median over ``--repeat`` rounds): acknowledged publishes per second (until the
last reply) and delivered per second (until every subscriber had every publication),
and the history mode as a ratio of the plain one. A JSON file goes to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

import websockets

from benchmarks.macro import ratio_table, save_medians, serve
from shardws.pure.history import owner_of

NAMESPACES = """
[namespaces.default]

[namespaces.h]
history_size = 100000
history_ttl = 600
"""
MODES = {"plain": "bench", "history": "h:bench"}


async def _connect_on(url: str, worker: int | None, avoid: int | None) -> Any:
    """A connection on ``worker`` (or not on ``avoid``), by reconnecting (bounded)."""
    for _ in range(200):
        ws = await websockets.connect(url, max_size=None, ping_interval=None)
        hello = json.loads(await ws.recv())
        if (worker is None or hello["worker"] == worker) and hello["worker"] != avoid:
            return ws, hello["worker"]
        await ws.close()
    raise RuntimeError("could not place a connection on the wanted worker")


async def _round(url: str, channel: str, messages: int, window: int, subs: int) -> dict[str, float]:
    owner = owner_of(MODES["history"], [0, 1])
    publisher, _ = await _connect_on(url, None, owner)
    receivers = [(await _connect_on(url, n % 2, None))[0] for n in range(subs)]
    for ws in receivers:
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": channel}))
        assert json.loads(await ws.recv()).get("ok")
    payload = '{"n":1,"text":"' + "x" * 80 + '"}'

    async def count(ws: Any) -> float:
        got = 0
        while got < messages:
            if b'"type":"pub"' in (await ws.recv()).encode():
                got += 1
        return time.monotonic()

    counters = [asyncio.create_task(count(ws)) for ws in receivers]
    start = time.monotonic()
    inflight = asyncio.Semaphore(window)

    async def replies() -> None:
        for _ in range(messages):
            reply = json.loads(await publisher.recv())
            if not reply.get("ok"):
                raise RuntimeError(f"publish refused: {reply}")
            inflight.release()

    reader = asyncio.create_task(replies())
    run = secrets.token_hex(4)  # idempotency keys must not repeat those of earlier rounds
    for n in range(messages):
        await inflight.acquire()
        await publisher.send(
            f'{{"id":{n},"op":"publish","channel":"{channel}","data":{payload},"idem":"{run}.{n}"}}'
            if channel.startswith("h:")
            else f'{{"id":{n},"op":"publish","channel":"{channel}","data":{payload}}}'
        )
    await reader
    acked = time.monotonic() - start
    delivered = max(await asyncio.gather(*counters)) - start
    for ws in (publisher, *receivers):
        await ws.close()
    return {"acked_per_s": messages / acked, "delivered_per_s": messages / delivered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000, help="publications per round")
    parser.add_argument("--window", type=int, default=64, help="publishes in flight")
    parser.add_argument("--subscribers", type=int, default=4, help="subscribed clients")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians shown)")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with serve("shardws", workers=2, extra=NAMESPACES) as server:
        for _ in range(args.repeat):
            for mode, channel in MODES.items():
                one = _round(server.url, channel, args.messages, args.window, args.subscribers)
                results[mode].append(asyncio.run(asyncio.wait_for(one, 300)))
    summary, path = save_medians("history", args, results)
    columns = [
        ("acked publishes/s", "acked_per_s", ",.0f"),
        ("delivered/s", "delivered_per_s", ",.0f"),
    ]
    print(ratio_table(summary, "plain", columns))
    print(f"full results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
