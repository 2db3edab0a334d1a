"""What one connect + subscribe costs the server, as the worker count grows.

    python -m benchmarks.subscribe_cost --workers 2 16 32 64 --connections 20000

For each worker count: start ``shardws serve`` with that many workers, measure the idle
CPU rate of its whole process tree (supervisor, workers, admin: every thread, from
``/proc/<pid>/task/*/schedstat``, nanosecond resolution) over ``--idle`` s, then open
``--connections`` connections with ``shardws bench --scenario idle``, each subscribed to
a channel of its own (so every subscribe is a new bus subscription and a barrier round),
and take the server CPU of that connect phase. The figure is

    (connect-phase server CPU - idle rate x connect-phase wall time) / connections

and each count's ratio to the first count of the run (with ``--repeat``, of the
medians; the rounds interleave the counts). The generator shares the cores
with the server: compare ratios within one run, not absolute figures across machines.

By default the clients connect flat out; ``--rate`` paces them (connections per second,
the same for every count). Compare worker counts at one rate: flat out, fewer workers
carry more events per wake-up of their loops, and the run offers them a higher rate,
so their figure is lower for reasons that are not what a subscription costs
(``docs/architecture.md``, "The host bus").

The result is written to ``benchmarks/results/subscribe-cost-<time>.json`` and printed
as the Markdown table ``docs/architecture.md`` shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.macro import RESULTS, serve
from shardws.tools.loadgen import LoadSpec, cpu_by_thread_kind, run, server_threads

SETTLE_SECONDS = 2.0  # after /health is ok: the last workers finish their barrier rounds


def idle_rates(pid: int, seconds: float) -> dict[str, dict[str, float]]:
    """Server CPU-seconds and runs on a CPU per second with no client connected, per
    kind of thread (``loadgen.server_threads``)."""
    before = server_threads([pid])
    time.sleep(seconds)
    spent = cpu_by_thread_kind(before, server_threads([pid]))
    return {
        where: {name: value / seconds for name, value in figures.items()}
        for where, figures in spent.items()
    }


def idle_rate(pid: int, seconds: float) -> float:
    """Server CPU-seconds per second with no client connected, all threads together."""
    return sum(figures["cpu_s"] for figures in idle_rates(pid, seconds).values())


def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    # Many workers on few cores: a loop may not run for seconds during the ramp, which
    # is not what is measured here (the supervisor would replace it as stuck).
    with serve("shardws", workers, server="heartbeat_timeout = 120") as server:
        time.sleep(SETTLE_SECONDS)
        idle_by_thread = idle_rates(server.pid, args.idle)
        idle = sum(figures["cpu_s"] for figures in idle_by_thread.values())
        report = run(
            LoadSpec(
                scenario="idle",
                url=[server.url],
                server_pid=[server.pid],
                connections=args.connections,
                # One channel per connection, or (--shared) one for all: the cost of
                # connecting with one bus subscription per worker, the floor under it.
                channels=1 if args.shared else args.connections,
                processes=args.processes,
                connect_rate=args.rate,
                duration=1.0,
                progress=False,
            )
        )
    connections = report.get("connections", {})
    phase = report["cpu"]["connect"]
    cpu = phase["server_cpu_s"] - idle * phase["wall_s"]
    subscribed = connections.get("subscribed") or 0
    # Where the CPU went, per connection: each kind of thread's connect-phase CPU less
    # its own idle rate over the phase (ms; the rows add up to ms_per_connection), and
    # how often its threads were put on a CPU (wake-ups: the batching per wake-up).
    by_thread: dict[str, dict[str, float]] = {}
    wall, per = phase["wall_s"], max(subscribed, 1)
    for where, figures in phase.get("server_by_thread", {}).items():
        idle_where = idle_by_thread.get(where, {"cpu_s": 0.0, "runs": 0.0})
        by_thread[where] = {
            "ms": round(1000 * (figures["cpu_s"] - idle_where["cpu_s"] * wall) / per, 4),
            "runs": round((figures["runs"] - idle_where["runs"] * wall) / per, 3),
        }
    return {
        "workers": workers,
        "connections": args.connections,
        "subscribed": subscribed,
        "failed": connections.get("failed"),
        "connect_wall_s": phase["wall_s"],
        "connect_rate_per_s": connections.get("connect_rate_per_s"),
        "idle_cpu_per_s": round(idle, 4),
        "server_cpu_s": round(phase["server_cpu_s"], 3),
        "client_cpu_s": phase["client_cpu_s"],
        "ms_per_connection": round(1000 * cpu / subscribed, 4) if subscribed else None,
        "ms_per_connection_by_thread": by_thread,
    }


def medians(rows: list[dict[str, Any]]) -> dict[int, float | None]:
    """Per worker count (in the order of the run), the median of its runs' figures."""
    runs: dict[int, list[float]] = {}
    for row in rows:
        figures = runs.setdefault(row["workers"], [])
        if row["ms_per_connection"] is not None:
            figures.append(row["ms_per_connection"])
    return {workers: statistics.median(f) if f else None for workers, f in runs.items()}


def table(rows: list[dict[str, Any]]) -> str:
    """One line per worker count: the median over ``--repeat`` runs (each run's figure
    in brackets when there are several) and its ratio to the first count's median."""
    middle = medians(rows)
    base = next(iter(middle.values()))
    lines = [
        "| workers | connections subscribed | server CPU per connect + subscribe | vs first |"
        " connects/s |",
        "|---|---|---|---|---|",
    ]
    for workers, ms in middle.items():
        mine = [row for row in rows if row["workers"] == workers]
        each = (
            f" ({', '.join(str(row['ms_per_connection']) for row in mine)})"
            if len(mine) > 1
            else ""
        )
        ratio = f"{ms / base:.2f}x" if ms and base else "-"
        lines.append(
            f"| {workers} | {min(row['subscribed'] for row in mine):,} | {ms} ms{each} |"
            f" {ratio} | {statistics.median(row['connect_rate_per_s'] or 0 for row in mine)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 16, 32, 64], help="worker counts"
    )
    parser.add_argument("--connections", type=int, default=20_000, help="connections per count")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="connects/s, paced (the same for every worker count); 0 = flat out",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over the worker counts (median shown)"
    )
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    parser.add_argument(
        "--shared", action="store_true", help="every connection on one channel (the floor)"
    )
    parser.add_argument("--label", default="", help="added to the result (e.g. the bus)")
    args = parser.parse_args()
    # Rounds interleave the counts, so a slow spell of a shared box does not fall on one
    # count only; the table shows medians.
    rows = [
        {**measure(workers, args), "round": n}
        for n in range(args.repeat)
        for workers in args.workers
    ]
    result = {
        "benchmark": "subscribe_cost",
        "label": args.label,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m benchmarks.subscribe_cost "
        + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v not in ("", False)
        ),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"subscribe-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    for row in rows:
        top = list(row["ms_per_connection_by_thread"].items())[:5]
        print(
            f"{row['workers']} workers, per connection (ms, runs on a CPU): "
            + ", ".join(f"{where} {f['ms']} {f['runs']}" for where, f in top)
        )
    print(f"\nresult: {path}")


if __name__ == "__main__":
    main()
