"""Overload: a host offered far more connections than it can serve keeps every one it
accepted, refuses the excess, and kills none of its busy workers.

    python -m benchmarks.macro overload           # the full run (root, for the port range)
    python -m benchmarks.macro overload --connections 20000 --workers 4 --processes 4 \\
        --offer 60 --hold 20                      # a rehearsal
    python -m benchmarks.macro overload --server-src DIR   # the server from another checkout
                                                  # (its extension built in place): before/after

What it does, in order:

1. The preflight of the C250K scenario: waits for a quiet box, checks free memory, widens
   the port range if needed (``benchmarks.c250k``); a watchdog ends the run if memory runs
   low.
2. Starts ``shardws serve`` with ``--workers`` workers and the production defaults for
   everything a saturated host exercises: ``heartbeat_timeout`` 10 s, ``handshake_timeout``
   5 s, ``[limits] overload_loop_lag`` 1 s, ``connections_per_worker`` as the open-files
   limit allows. Only the keepalive is denser: ``--ping-interval`` (default 5 s) makes each
   connection cost what five cost at the default 25 s, so the keepalive load of
   ``5 x --connections`` (the pongs that took a large share of the CPU at 650,000
   connections) is reached with the connections this box's file limits allow.
3. ``--connections`` clients over ``--processes`` client processes, opened flat out
   (``--connect-concurrency`` in flight each), each subscribing to one of ``--channels``
   channels and to one they all share. A refused attempt is retried after the 503's
   ``Retry-After`` (with jitter) or a back-off, until ``--offer`` seconds have passed; a
   client dropped without a hint (a killed worker, an idle timeout) comes back at once
   and is counted. Then every connection is held ``--hold`` s.
4. A thread samples the admin's ``/health`` every ``SAMPLE_EVERY`` s: connections held,
   workers alive, workers refusing for lag, restarts, the largest loop lag.

Bars (``bars`` in the result file): no worker restarted; no accepted connection dropped
(clients that lost their connection without a hint, by the server's close code); the
excess refused with 503 and retried (at least one refusal); the held count levelled off
instead of falling (at the end at least ``LEVEL_OFF`` of its peak).

Result: ``benchmarks/results/overload-<time>.json`` and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.c250k import (
    MemoryWatchdog,
    add_box_options,
    check_memory,
    host_facts,
    port_range,
    save,
    server_log_summary,
    wait_for_a_quiet_box,
)
from benchmarks.macro import UNLIMITED, serve
from shardws.tools.loadgen import LoadSpec, run
from shardws.tools.tune import FD_RESERVE

SAMPLE_EVERY = 2.0  # seconds between /health samples
LEVEL_OFF = 0.95  # held at the end / peak held, at least
LOG_MARKERS = {
    "kills": "killing it",
    "late_but_working": "late but still working",
    "refused_upgrades": "upgrade refused",
    "warnings": " WARNING ",
    "errors": " ERROR ",
}


class HealthSampler(threading.Thread):
    """``/health`` every ``SAMPLE_EVERY`` s, until ``done`` is set."""

    def __init__(self, admin_url: str) -> None:
        super().__init__(daemon=True)
        self.url = admin_url + "/health"
        self.samples: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            sample: dict[str, Any] = {"t": round(time.monotonic() - self.started_at, 1)}
            try:
                with urllib.request.urlopen(self.url, timeout=SAMPLE_EVERY) as response:
                    body = json.loads(response.read())
            except urllib.error.HTTPError as exc:  # 503 degraded still has the document
                body = json.loads(exc.read())
            except (OSError, ValueError) as exc:
                sample["error"] = f"{type(exc).__name__}: {exc}"
                self.samples.append(sample)
                continue
            workers = body["per_worker"]
            sample.update(
                held=body["connections"],
                alive=body["workers_alive"],
                refusing=sum(1 for w in workers if w.get("overloaded")),
                restarts=sum(w["restarts"] for w in workers),
                loop_lag_max=max((w.get("loop_lag", 0.0) for w in workers), default=0.0),
                heartbeat_age_max=max(w["heartbeat_age"] for w in workers),
            )
            self.samples.append(sample)


def headline(report: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    conns = report.get("connections", {})
    held = [s["held"] for s in samples if "held" in s]
    live_at_end = report.get("idle", {}).get("live_at_end") or 0
    return {
        "offered": conns.get("requested"),
        "connected": conns.get("connected"),
        "subscribed": conns.get("subscribed"),
        "held_peak": max(held, default=0),
        # The clients' own count at the end of the hold (the last samples may be taken
        # while the generator closes its connections).
        "held_end": live_at_end,
        "restarts": max((s["restarts"] for s in samples if "restarts" in s), default=0),
        "dropped": conns.get("unexpected_disconnects"),
        "dropped_by_cause": conns.get("dropped_by_cause"),
        "refused_503": conns.get("refused_503"),
        "connect_retries": conns.get("connect_retries"),
        "subscribe_retries": conns.get("subscribe_retries"),
        "loop_lag_max_s": max((s.get("loop_lag_max", 0.0) for s in samples), default=0.0),
        "heartbeat_age_max_s": max((s.get("heartbeat_age_max", 0.0) for s in samples), default=0.0),
        "workers_refusing_max": max((s.get("refusing", 0) for s in samples), default=0),
        "server_rss_mb_end": report.get("server", {}).get("rss_mb_end"),
        "cpu": report.get("cpu"),
    }


def bars(h: dict[str, Any]) -> dict[str, bool]:
    return {
        "no_worker_restarted": h["restarts"] == 0,
        "no_accepted_connection_dropped": h["dropped"] == 0,
        "excess_refused_with_503_and_retried": (h["refused_503"] or 0) > 0,
        "held_count_levelled_off": h["held_peak"] > 0
        and h["held_end"] >= LEVEL_OFF * h["held_peak"],
    }


def markdown(result: dict[str, Any]) -> str:
    a, h, ok = result["args"], result["headline"], result["bars"]
    missed = [name for name, met in ok.items() if not met]
    per_kb = (
        round(h["server_rss_mb_end"] * 1024 / h["held_end"], 2)
        if h["held_end"] and h["server_rss_mb_end"]
        else None
    )
    log = result["server_log"]
    rows = [
        ("offered (clients, retrying until the offer ends)", f"{h['offered']:,}"),
        ("held at the peak / at the end", f"{h['held_peak']:,} / {h['held_end']:,}"),
        ("worker restarts", h["restarts"]),
        ("accepted connections dropped (by close code)", f"{h['dropped']} {h['dropped_by_cause']}"),
        ("connect attempts answered 503", f"{h['refused_503']:,}"),
        ("connect retries", f"{h['connect_retries']:,}"),
        ("subscribes answered 108 and retried", h["subscribe_retries"]),
        ("event loop lag: largest tick", f"{h['loop_lag_max_s']} s"),
        ("event loop lag: oldest heartbeat", f"{h['heartbeat_age_max_s']} s"),
        ("server RSS at the end", f"{h['server_rss_mb_end']} MB ({per_kb} KB per connection)"),
        ("server log: kills", log.get("kills", 0)),
        ("server log: late but working", log.get("late_but_working", 0)),
    ]
    lines = [
        f"{a['connections']:,} clients offered for {a['offer']:.0f} s, {a['workers']} workers,"
        f" {a['processes']} client processes, ping_interval {a['ping_interval']} s;"
        f" server from {a['server_src'] or 'this checkout'};"
        f" {'every bar met' if not missed else f'bars not met: {missed}'}.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.macro overload", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--connections", type=int, default=300_000, help="clients offered")
    parser.add_argument("--workers", type=int, default=16, help="shardws workers")
    parser.add_argument("--processes", type=int, default=16, help="client processes")
    add_box_options(parser)
    parser.add_argument("--connect-concurrency", type=int, default=400, help="per process")
    parser.add_argument("--offer", type=float, default=300, help="seconds clients keep trying")
    parser.add_argument("--hold", type=float, default=60, help="seconds held after the offer")
    parser.add_argument("--ping-interval", type=float, default=5, help="server ping_interval")
    parser.add_argument(
        "--server-src", default="", help="run the server from this checkout (PYTHONPATH)"
    )
    args = parser.parse_args(argv)
    n = args.connections

    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if -(-n // args.processes) > fd_limit - FD_RESERVE:
        raise SystemExit(f"{n} clients over {args.processes} processes pass the file limit")
    wait_for_a_quiet_box(args.wait)
    check_memory(n, args.min_free_gib)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    log_path = Path(tempfile.gettempdir()) / f"overload-server-{time.strftime('%Y%m%d-%H%M%S')}.log"
    source = os.path.abspath(args.server_src) if args.server_src else None
    env = {"PYTHONPATH": source} if source else None
    with (
        port_range(n, args.source_ips) as setup,
        serve(
            "shardws",
            args.workers,
            extra=UNLIMITED,
            unlimited=False,
            server=f"ping_interval = {args.ping_interval}\nmax_workers = {args.workers}",
            stop_timeout=60,
            log_path=log_path,
            env=env,
            cwd=source,
        ) as server,
    ):
        watchdog = MemoryWatchdog(args.min_free_gib, server.pid)
        watchdog.start()
        sampler = HealthSampler(server.admin_url)
        sampler.start()
        try:
            report = run(
                LoadSpec(
                    scenario="idle",
                    url=[server.url],
                    connections=n,
                    processes=args.processes,
                    source_ips=args.source_ips,
                    channels=args.channels,
                    shared_channel="everyone",
                    reconnect=True,
                    connect_concurrency=args.connect_concurrency,
                    connect_timeout=args.offer,
                    connect_attempts=0,
                    duration=args.hold,
                    drain=2.0,
                    server_pid=[server.pid],
                    progress=True,
                )
            )
        finally:
            sampler.done.set()
            watchdog.done.set()
    h = headline(report, sampler.samples)
    result: dict[str, Any] = {
        "started": started,
        "args": vars(args),
        "host": host_facts(fd_limit, watchdog),
        "setup": setup,
        "server_log": server_log_summary(log_path, LOG_MARKERS),
        "headline": h,
        "bars": bars(h),
        "samples": sampler.samples,
        "report": report,
    }
    save("overload", result, markdown(result))
    return 0 if all(result["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
