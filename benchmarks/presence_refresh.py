"""What a worker's presence refresh costs on the Redis hub (``server.redispresence``).

    python -m benchmarks.presence_refresh                      # defaults below
    python -m benchmarks.presence_refresh --members 1000 10000 --per-channel 10 1000

For each shape (``--members`` members held by one worker, ``--per-channel`` of them per
channel), a ``redis-server`` the script starts on a free port holds the members, and
each round refreshes all of them twice, in alternation:

* **scripted**: ``ExpiringSets.refresh`` as a worker runs it (one ``EVALSHA`` per channel
  per 1,000 members, ``HSET``/``ZADD`` of every member inside it, pipelined);
* **baseline**: the same writes without the script, as a client would send them
  (``HSET`` and ``ZADD`` per member, ``EXPIRE`` twice per channel), pipelined on the
  same connection.

Per shape, the median over ``--repeat`` rounds of: Redis commands per member
(``INFO commandstats``: every command run, those inside scripts included), Redis's CPU
per refresh (``INFO cpu``), the refresh's wall time until Redis answered its last
write, and this process's CPU for it; and the scripted/baseline ratios. A JSON file goes
to ``benchmarks/results/presence-refresh.json`` (docs/benchmarks.md, "Presence on the
Redis hub").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from redisproc import RedisServer  # noqa: E402

from shardws.config import RedisConfig  # noqa: E402
from shardws.server.redisconn import RedisCalls  # noqa: E402
from shardws.server.redispresence import (  # noqa: E402
    ExpiringSets,
    SetKeys,
    channel_keys,
    member_value,
)

RESULTS = ROOT / "benchmarks" / "results"
TTL = 30.0


def _fields(answer: Any) -> dict[str, str]:
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    pairs = (line.partition(":") for line in text.splitlines())
    return {key: value for key, sep, value in pairs if sep}


async def _redis_state(calls: RedisCalls) -> tuple[int, float]:
    """(commands run so far but ``INFO`` and ``PING``, Redis's CPU seconds so far)."""
    stats = _fields(await calls.command("INFO", "commandstats"))
    commands = sum(
        int(value.split(",")[0].removeprefix("calls="))
        for key, value in stats.items()
        if key.startswith("cmdstat_") and key not in ("cmdstat_info", "cmdstat_ping")
    )
    cpu = _fields(await calls.command("INFO", "cpu"))
    return commands, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _baseline(calls: RedisCalls, held: dict[SetKeys, dict[str, bytes]]) -> None:
    expires = repr(time.time() + TTL)
    for keys, members in held.items():
        for member, value in members.items():
            calls.command("HSET", keys.members, member, value)
            calls.command("ZADD", keys.expiries, expires, member)
        calls.command("EXPIRE", keys.members, int(TTL))
        calls.command("EXPIRE", keys.expiries, int(TTL))


async def _measure(calls: RedisCalls, refresh: Any, members: int) -> dict[str, float]:
    commands, redis_cpu = await _redis_state(calls)
    wall, cpu = time.perf_counter(), time.process_time()
    refresh()
    await calls.command("PING")  # answered after every write before it
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after, redis_after = await _redis_state(calls)
    return {
        "commands_per_member": (after - commands) / members,
        "redis_cpu_ms": (redis_after - redis_cpu) * 1000,
        "wall_ms": wall * 1000,
        "client_cpu_ms": cpu * 1000,
    }


async def _shape(address: str, members: int, per_channel: int, repeat: int) -> dict[str, Any]:
    calls = RedisCalls(RedisConfig(address=address, timeout=30.0))
    sets = ExpiringSets(calls, TTL)
    calls.start()
    while not calls.up:
        await asyncio.sleep(0.01)
    await calls.command("FLUSHALL")
    held: dict[SetKeys, dict[str, bytes]] = {}
    for n in range(members):
        keys = channel_keys("bench:", f"room:{n // per_channel}")
        value = member_value(f"user-{n}", b'{"name":"someone"}')
        held.setdefault(keys, {})[f"client-{n}"] = value
        sets.put(keys, f"client-{n}", value)
    sets.flush()
    await calls.command("PING")
    rounds: dict[str, list[dict[str, float]]] = {"scripted": [], "baseline": []}
    for _ in range(repeat):
        rounds["scripted"].append(await _measure(calls, sets.refresh, members))
        rounds["baseline"].append(await _measure(calls, lambda: _baseline(calls, held), members))
    await calls.stop()
    result: dict[str, Any] = {"members": members, "per_channel": per_channel}
    for name, runs in rounds.items():
        result[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result["ratio"] = {
        key: result["scripted"][key] / result["baseline"][key]
        for key in result["scripted"]
        if result["baseline"][key]
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--members", type=int, nargs="+", default=[100, 1000, 10000], help="members held, per shape"
    )
    parser.add_argument(
        "--per-channel",
        type=int,
        nargs="+",
        default=[10, 1000],
        help="members per channel, per shape",
    )
    parser.add_argument("--repeat", type=int, default=5, help="refreshes measured per shape")
    args = parser.parse_args()
    results: dict[str, Any] = {"command": " ".join(sys.argv), "ttl": TTL, "shapes": []}
    with (
        tempfile.TemporaryDirectory() as directory,
        RedisServer(Path(directory)).start() as redis,
    ):
        for members in args.members:
            for per_channel in args.per_channel:
                if per_channel > members:
                    continue
                shape = _shape(redis.address, members, per_channel, args.repeat)
                results["shapes"].append(asyncio.run(shape))
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "presence-refresh.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
