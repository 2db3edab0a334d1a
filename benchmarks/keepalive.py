"""Keepalive at density: what the server's pings and the clients' pongs cost per idle
connection, measured against the same connections held with no pings, in one run.

    python -m benchmarks.keepalive                       # 20,000 connections, 2 workers
    python -m benchmarks.keepalive --connections 4000 --hold 10   # a quick look

Each round starts ``shardws serve`` fresh, opens ``--connections`` idle connections with
the load generator (each subscribed to one channel), and holds them ``--hold`` s while it
measures the server's CPU (all its processes, from ``/proc``): once with
``ping_interval = 600`` (no ping falls in the hold: the baseline) and once with
``--ping-interval``. The difference, divided by the pings the hold needed (connections x
hold / ping interval), is the server CPU of one ping round trip (the sweep's look at the
connection, the ping frame sent, the pong read and handled); divided by the ping
interval it is what keepalive costs per idle connection per second. Rounds alternate
(``--repeat``), and the medians are reported.

Result: ``benchmarks/results/keepalive-<time>.json`` and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from benchmarks.macro import RESULTS, serve
from shardws.tools.loadgen import LoadSpec, run

NO_PINGS = 600.0  # a ping_interval no hold reaches


def hold(connections: int, workers: int, ping_interval: float, seconds: float) -> dict[str, Any]:
    """One round: the server's CPU-seconds over ``seconds`` of holding the connections."""
    server = f"ping_interval = {ping_interval}\nidle_timeout = {max(60.0, 3 * ping_interval)}"
    with serve("shardws", workers, server=server) as shardws:
        report = run(
            LoadSpec(
                scenario="idle",
                url=[shardws.url],
                connections=connections,
                processes=2,
                duration=seconds,
                server_pid=[shardws.pid],
                progress=False,
            )
        )
    measured = report["cpu"]["measured"]
    return {
        "ping_interval": ping_interval,
        "held": report["idle"]["live_at_end"],
        "held_s": measured["wall_s"],
        "server_cpu_s": measured["server_cpu_s"],
        "client_cpu_s": measured["client_cpu_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.keepalive", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--connections", type=int, default=20_000, help="idle connections")
    parser.add_argument("--workers", type=int, default=2, help="shardws workers")
    parser.add_argument("--hold", type=float, default=30, help="seconds measured per round")
    parser.add_argument("--ping-interval", type=float, default=5, help="the pinged rounds'")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each, alternating")
    args = parser.parse_args(argv)
    rounds = []
    for _ in range(args.repeat):
        for interval in (NO_PINGS, args.ping_interval):
            rounds.append(hold(args.connections, args.workers, interval, args.hold))
            print(json.dumps(rounds[-1]), file=sys.stderr)

    def median_rate(interval: float) -> float:
        return statistics.median(
            r["server_cpu_s"] / r["held_s"] for r in rounds if r["ping_interval"] == interval
        )

    base, pinged = median_rate(NO_PINGS), median_rate(args.ping_interval)
    pings_per_s = args.connections / args.ping_interval
    per_ping_us = (pinged - base) / pings_per_s * 1e6
    summary = {
        "server_cpu_percent_no_pings": round(base * 100, 2),
        "server_cpu_percent_pinged": round(pinged * 100, 2),
        "pings_per_s": round(pings_per_s),
        "server_us_per_ping_round_trip": round(per_ping_us, 2),
        "server_us_per_idle_connection_per_s_at_25s": round(per_ping_us / 25, 3),
    }
    result = {"args": vars(args), "summary": summary, "rounds": rounds}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"keepalive-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(
        f"{args.connections:,} idle connections, {args.workers} workers, ping_interval"
        f" {args.ping_interval} s against none, medians of {args.repeat}:\n\n"
        "| figure | value |\n|---|---|\n"
        + "\n".join(f"| {key} | {value} |" for key, value in summary.items())
    )
    print(f"\nfull results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
