"""Cross-host fan-out through the Redis hub against the mesh, in one run on one machine.

    python -m benchmarks.hub                                   # defaults below
    python -m benchmarks.hub --subscribers 100 --duration 5 --repeat 3

Two two-host clusters on loopback (``tests/serverproc.loopback_cluster``, one worker per
host), both running for the whole run: one joined by the mesh (the bridges), one by the
hub through a ``redis-server`` the script starts on a free port. Each round is one
``shardws bench --scenario fanout`` (flat out, one publisher on host a, ``--subscribers``
subscribers on host b: every delivery crossed hosts), mesh and hub rounds alternating so
both see the same machine noise. Per engine, the median over ``--repeat`` rounds of:

* ``deliveries_per_s`` and ``deliveries_per_cpu_s``: deliveries per CPU-second of both
  hosts' servers (every process of both process trees: workers, admins, forwarders,
  bridges or hubs), as ``shardws bench --server-pid`` measures it;
* for the hub, beside it and not inside it: ``redis_cpu_s`` (Redis's own CPU over the
  round, ``/proc``), ``deliveries_per_cpu_s_with_redis``, and Redis commands per
  publication (``INFO commandstats`` before and after: ``PUBLISH`` calls, and every
  command, heartbeats and subscriptions included, over the publications made).

The load generator shares the machine's cores with both clusters, so absolute rates are
the whole machine's; the ratio hub/mesh is the figure (docs/benchmarks.md, "Across hosts:
the Redis hub against the mesh"). A JSON file goes to ``benchmarks/results/hub.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from redisproc import EngineRun, RedisServer  # noqa: E402
from serverproc import ServerProcess, loopback_cluster  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
UNLIMITED = """
[limits]
commands_per_second = 1000000.0
command_burst = 1000000
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commandstats(redis: RedisServer) -> dict[str, int]:
    text = redis.command("INFO", "commandstats").decode(errors="replace")
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_([a-z|]+):calls=(\d+)", text)}


def _fanout(hosts: tuple[ServerProcess, ServerProcess], args: argparse.Namespace) -> dict[str, Any]:
    a, b = hosts
    command = [sys.executable, "-m", "shardws", "bench", "--scenario", "fanout"]
    for url in [b.url] * args.subscribers + [a.url]:  # the publisher takes the last
        command += ["--url", url]
    command += ["-n", str(args.subscribers), "--publishers", "1", "--processes", "2"]
    command += ["--duration", str(args.duration), "--json", "--no-progress"]
    for host in hosts:
        assert host.proc is not None
        command += ["--server-pid", str(host.proc.pid)]
    done = subprocess.run(command, capture_output=True, timeout=args.duration + 120)
    if done.returncode not in (0, 1):  # 1: a report that lists problems (kept in it)
        raise RuntimeError(f"shardws bench failed: {done.stderr.decode()[-2000:]}")
    return dict(json.loads(done.stdout))


def _round(
    engine: str,
    hosts: tuple[ServerProcess, ServerProcess],
    redis: RedisServer,
    args: argparse.Namespace,
) -> dict[str, Any]:
    assert redis.proc is not None
    stats_before, cpu_before = _commandstats(redis), _cpu_seconds(redis.proc.pid)
    report = _fanout(hosts, args)
    stats_after, cpu_after = _commandstats(redis), _cpu_seconds(redis.proc.pid)
    result = {
        "deliveries_per_s": report["deliveries_per_s"],
        "deliveries_per_cpu_s": report["server"]["deliveries_per_cpu_s"],
        "server_cpu_s": report["server"].get("cpu_s"),
        "published": report["published"],
        "lost": report["lost"],
        "latency_ms": report["latency_ms"],
        "problems": report.get("problems", []),
    }
    if engine == "redis":
        published = max(1, report["published"])
        calls = {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after}
        redis_cpu = cpu_after - cpu_before
        server_cpu = report["received"] / max(1, report["server"]["deliveries_per_cpu_s"] or 1)
        result |= {
            "redis_cpu_s": round(redis_cpu, 2),
            "deliveries_per_cpu_s_with_redis": round(report["received"] / (server_cpu + redis_cpu)),
            "redis_publish_per_publication": round(calls.get("publish", 0) / published, 4),
            "redis_commands_per_publication": round(sum(calls.values()) / published, 4),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument(
        "--subscribers",
        type=int,
        default=100,
        help="subscribers on host b (every delivery crosses hosts)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds per engine (the median is reported)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as redis:
        redis.start()
        for name in ("mesh", "hub"):
            (Path(tmp) / name).mkdir()
        clusters = {
            "mesh": loopback_cluster(Path(tmp) / "mesh", UNLIMITED, engine="mesh"),
            "redis": loopback_cluster(
                Path(tmp) / "hub", UNLIMITED, engine=EngineRun("redis", redis.address)
            ),
        }
        try:
            for hosts in clusters.values():
                for host in hosts:
                    host.start()
            time.sleep(5)  # the views converge (peer heartbeats every 0.5 s)
            rounds: dict[str, list[dict[str, Any]]] = {engine: [] for engine in clusters}
            for repeat in range(args.repeat):
                for engine in sorted(clusters, reverse=repeat % 2 == 1):
                    rounds[engine].append(_round(engine, clusters[engine], redis, args))
        finally:
            for hosts in clusters.values():
                for host in hosts:
                    host.stop()
    results: dict[str, Any] = {}
    for engine, runs in rounds.items():
        rates = [r["deliveries_per_cpu_s"] or 0 for r in runs]
        median = runs[rates.index(sorted(rates)[len(rates) // 2])]
        results[engine] = {
            **median,
            "rounds_deliveries_per_cpu_s": rates,
            "rounds_deliveries_per_s": [r["deliveries_per_s"] for r in runs],
            "median_deliveries_per_s": round(
                statistics.median(r["deliveries_per_s"] for r in runs)
            ),
        }
    results["hub_over_mesh_per_cpu_s"] = round(
        results["redis"]["deliveries_per_cpu_s"] / max(1, results["mesh"]["deliveries_per_cpu_s"]),
        3,
    )
    results["settings"] = vars(args)
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
