"""The cost of history: publishing to a channel with history against a plain channel,
on the mesh (owner hop, offsets, ring) and on the Redis hub (one Lua script per
publication in Redis), in one run.

    python -m benchmarks.history                       # defaults below
    python -m benchmarks.history --messages 20000 --repeat 3 --engines mesh,redis

Per engine one shardws server with 2 workers (the hub's with a ``redis-server`` this
script starts on a free port, no persistence). One publisher connection -- on the
mesh on the worker that does *not* own the history channel, so every publication takes
the owner hop over the bus -- sends ``--messages`` publishes with up to ``--window`` of
them unanswered, and ``--subscribers`` connections (spread over both workers) receive
them. Reported per mode (median over ``--repeat`` rounds, the engines' rounds
alternating): acknowledged publishes per second (until the last reply), delivered per
second (until every subscriber had every publication), the server's CPU per
publication (every process of its tree) and, on the hub, Redis's CPU and the Redis
commands per publication (``INFO commandstats`` before and after; a script counts as
one ``EVALSHA``, the commands it runs inside are counted as well). A JSON file goes to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websockets

from benchmarks.hub import RedisServer, _commandstats, _cpu_seconds
from benchmarks.macro import ratio_table, save_medians, serve
from benchmarks.soak import _tree
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
    owner = owner_of(MODES["history"], [0, 1])  # on the hub: a worker like the other
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


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants alive now."""
    total = 0.0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            total += _cpu_seconds(each)
    return total


@contextlib.contextmanager
def _engine(name: str) -> Iterator[tuple[Any, RedisServer | None]]:
    """A 2-worker server on ``name`` (and the hub's Redis, started here)."""
    if name == "mesh":
        with serve("shardws", workers=2, extra=NAMESPACES) as server:
            yield server, None
        return
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as redis:
        redis.start()
        hub = f'[cluster]\nengine = "redis"\n[cluster.redis]\naddress = "{redis.address}"\n'
        with serve("shardws", workers=2, extra=NAMESPACES + hub) as server:
            yield server, redis


def _measured(
    server: Any, redis: RedisServer | None, channel: str, args: argparse.Namespace
) -> dict[str, float]:
    """One round, with the server's (and Redis's) CPU and Redis's commands over it."""
    cpu = _tree_cpu(server.pid)
    if redis is not None:
        assert redis.proc is not None
        calls, redis_cpu = _commandstats(redis), _cpu_seconds(redis.proc.pid)
    one = _round(server.url, channel, args.messages, args.window, args.subscribers)
    result = asyncio.run(asyncio.wait_for(one, 300))
    result["server_cpu_us_per_pub"] = (_tree_cpu(server.pid) - cpu) / args.messages * 1e6
    if redis is not None:
        assert redis.proc is not None
        after = _commandstats(redis)
        used = {k: after[k] - calls.get(k, 0) for k in after}
        result["redis_cpu_us_per_pub"] = (
            (_cpu_seconds(redis.proc.pid) - redis_cpu) / args.messages * 1e6
        )
        result["redis_commands_per_pub"] = sum(used.values()) / args.messages
        result["redis_evalsha_per_pub"] = used.get("evalsha", 0) / args.messages
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000, help="publications per round")
    parser.add_argument("--window", type=int, default=64, help="publishes in flight")
    parser.add_argument("--subscribers", type=int, default=4, help="subscribed clients")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians shown)")
    parser.add_argument("--engines", default="mesh,redis", help="comma-separated")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    results: dict[str, list[dict[str, float]]] = {
        f"{engine} {mode}": [] for engine in engines for mode in MODES
    }
    with contextlib.ExitStack() as stack:
        servers = {engine: stack.enter_context(_engine(engine)) for engine in engines}
        for repeat in range(args.repeat):
            for engine in sorted(engines, reverse=repeat % 2 == 1):  # alternating order
                server, redis = servers[engine]
                for mode, channel in MODES.items():
                    results[f"{engine} {mode}"].append(_measured(server, redis, channel, args))
    summary, path = save_medians("history", args, results)
    columns = [
        ("acked publishes/s", "acked_per_s", ",.0f"),
        ("delivered/s", "delivered_per_s", ",.0f"),
        ("server CPU µs/publication", "server_cpu_us_per_pub", ",.0f"),
    ]
    print(ratio_table(summary, f"{engines[0]} plain", columns))
    for mode, row in summary.items():
        if "redis_commands_per_pub" in row:
            print(
                f"{mode}: Redis {row['redis_commands_per_pub']:.2f} commands "
                f"({row['redis_evalsha_per_pub']:.2f} EVALSHA) and "
                f"{row['redis_cpu_us_per_pub']:.0f} µs CPU per publication"
            )
    print(f"full results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
