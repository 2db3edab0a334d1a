"""C250K: a quarter million subscribed connections on one box, held, published to and
rolled, measured with shardws's own load generator.

    python -m benchmarks.macro c250k              # the full run (root for the setup below)
    python -m benchmarks.macro c250k --connections 8000 --workers 16 --processes 8 \
        --channels 800                            # a rehearsal
    python -m benchmarks.c250k ...                # the same, but invisible to the usual
                                                  # ``pgrep -f benchmarks.macro`` check

What it does, in order (every figure is from ``shardws bench --scenario idle``, whose
report is saved whole):

1. Refuses to start while another benchmark runs on the box (``--wait`` s, polled every
   30 s) or with less free memory than the run needs (``--min-free-gib`` plus an
   estimate); a watchdog ends the run if ``MemAvailable`` drops under ``--min-free-gib``.
2. Setup. Client sockets are spread over ``--source-ips`` loopback addresses
   (127.0.0.1 ... 127.0.0.K) and bound with ``IP_BIND_ADDRESS_NO_PORT``: each address
   has the whole ephemeral range towards the server. If that range is too narrow for
   ``connections / source-ips`` with room for the roll (x ``PORT_HEADROOM``: reconnected
   clients take new ports while old ones linger in TIME_WAIT) and this runs as root,
   ``net.ipv4.ip_local_port_range`` is widened to ``WIDE_PORT_RANGE`` and restored at the
   end (also on failure); not as root, it stops and says what to set. With the defaults
   (250,000 over 20 addresses, 12,500 each) the stock range 32768-60999 is enough and
   nothing is changed.
3. Starts ``shardws serve`` with ``--workers`` workers, its log in the temporary
   directory (the result counts its warnings, heartbeat kills and refused upgrades).
   The open-files limit here is 20,000 per process and cannot be raised, so 250,000
   connections need more workers than this box has cores: this is a workaround for the
   file limit, not how to run a host (one worker per core, and LimitNOFILE raised;
   ``docs/operations.md``).
   ``connections_per_worker`` stays below the limit with room for the roll: a roll
   replaces one worker at a time and its clients land on the others, so the worker
   replaced last holds about 2.7 even shares just before its own drain
   (``shardws.tools.tune.roll_peak_per_worker``): 36 workers, 18,615 each at the peak.
   With that many workers on two cores a worker's loop can go more than the default
   10 s without running while the box is saturated (a roll's reconnect storm), and the
   supervisor would kill it as stuck, so
   ``heartbeat_timeout`` is raised to ``--heartbeat-timeout`` (60 s): part of the same
   workaround. So is ``handshake_timeout`` (``--handshake-timeout``, 30 s): the 16
   client processes share those two cores, and in the roll's reconnect storm their event
   loops run seconds late (``client_loop_lag_max_s`` in the roll's figures), so a client
   sends its upgrade request seconds after its TCP connect was accepted; the server's
   default 5 s would close such handshakes, which the generator counts as refused.
   ``drain_timeout`` (``--drain-timeout``, 15 s) bounds how long a draining worker waits
   for such late handshakes (and spreads its clients' reconnects over half of it).
4. ``--connections`` clients over ``--processes`` client processes, each subscribed to
   one of ``--channels`` channels and to one channel they all share; the connect ramp is
   reported in tenths. Held ``--hold`` s: ``--broadcasts`` publications to the shared
   channel, each timed until all connections had it, then publications at
   ``--probe-rate``/s to a channel with a single subscriber (their latency while every
   other connection is held). Then SIGHUP to the supervisor: every worker is replaced
   and every client, sent away with a reconnect hint and close 1001, comes back; the
   roll is timed until the last old process is gone and every client is subscribed
   again, and refused reconnect attempts are counted.

Bars (``bars`` in the result file): every connection held and subscribed, each
broadcast delivered to all of them, connects/s in the last tenth of the ramp at least
half of the first tenth, and the roll with every client back and none refused.

Result: ``benchmarks/results/c250k-<time>.json`` and a Markdown summary on stdout (the
section in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.macro import RESULTS, UNLIMITED, serve
from shardws.tools.loadgen import LoadSpec, run
from shardws.tools.tune import FD_RESERVE, roll_peak_per_worker

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WIDE_PORT_RANGE = "1024 65535"
PORT_HEADROOM = 1.5  # ports per source address: connections x this, for the roll
CLIENT_KB_PER_CONNECTION = 12  # generator memory per connection, for the preflight
SERVER_KB_PER_CONNECTION = 8  # server RSS per connection plus kernel socket share
LOG_MARKERS = {
    "warnings": " WARNING ",
    "errors": " ERROR ",
    "heartbeat_kills": "heartbeat is",
    "bus_barrier_timeouts": "subscribe barrier timed out",
    "refused_upgrades": "upgrade refused",
}
OTHER_BENCHMARKS = r"benchmarks\.(macro|c250k|cluster|ingress|history|compression)"


def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _other_benchmarks() -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", OTHER_BENCHMARKS], capture_output=True, text=True, check=False
    ).stdout
    mine = {os.getpid(), os.getppid()}
    return [line for line in out.splitlines() if int(line.split()[0]) not in mine]


def add_box_options(parser: argparse.ArgumentParser) -> None:
    """The options of a whole-box run: source addresses, channels, memory floor, wait."""
    parser.add_argument("--source-ips", type=int, default=20, help="127.0.0.1..K")
    parser.add_argument("--channels", type=int, default=25_000, help="besides the shared one")
    parser.add_argument("--min-free-gib", type=float, default=3, help="memory floor")
    parser.add_argument("--wait", type=float, default=1800, help="s to wait for other runs")


def check_memory(connections: int, floor_gib: float) -> None:
    """Refuse to start without the memory ``connections`` need above ``floor_gib``."""
    need_gib = connections * (CLIENT_KB_PER_CONNECTION + SERVER_KB_PER_CONNECTION) / 2**20
    if _mem_available_gib() < floor_gib + need_gib:
        raise SystemExit(
            f"{_mem_available_gib():.1f} GiB available, the run needs about"
            f" {need_gib:.1f} GiB plus the {floor_gib} GiB floor"
        )


def wait_for_a_quiet_box(wait: float) -> None:
    """Never two heavy runs at once: poll every 30 s for at most ``wait`` s."""
    deadline = time.monotonic() + wait
    while others := _other_benchmarks():
        if time.monotonic() >= deadline:
            raise SystemExit(f"another benchmark is running, not starting: {others}")
        print(f"waiting for another benchmark to finish: {others[0]}", file=sys.stderr)
        time.sleep(30)


@contextlib.contextmanager
def port_range(connections: int, source_ips: int) -> Iterator[dict[str, Any]]:
    """Make sure each source address has the ports it needs (see the module docstring);
    yields what was found and done, and restores a widened range on the way out."""
    low, high = (int(v) for v in PORT_RANGE.read_text().split())
    needed = math.ceil(connections / source_ips * PORT_HEADROOM)
    setup = {"port_range": f"{low} {high}", "ports_needed_per_source": needed, "changed": False}
    if high - low + 1 >= needed:
        yield setup
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"{needed} ports per source address needed, the range {low}-{high} has"
            f" {high - low + 1}: use more --source-ips or, as root, sysctl -w"
            f' net.ipv4.ip_local_port_range="{WIDE_PORT_RANGE}"'
        )
    PORT_RANGE.write_text(WIDE_PORT_RANGE)
    setup.update(changed=True, widened_to=WIDE_PORT_RANGE)
    print(f"ip_local_port_range {low} {high} -> {WIDE_PORT_RANGE}", file=sys.stderr)
    try:
        yield setup
    finally:
        PORT_RANGE.write_text(f"{low} {high}")
        print(f"ip_local_port_range restored to {low} {high}", file=sys.stderr)


class MemoryWatchdog(threading.Thread):
    """Ends the run (server and client processes) if free memory drops too low."""

    def __init__(self, floor_gib: float, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.floor = floor_gib
        self.server_pid = server_pid
        self.lowest = _mem_available_gib()
        self.tripped = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(2.0):
            available = _mem_available_gib()
            self.lowest = min(self.lowest, available)
            if available < self.floor and not self.tripped:
                self.tripped = True
                print(f"MemAvailable {available:.1f} GiB: stopping the run", file=sys.stderr)
                for child in multiprocessing.active_children():
                    child.terminate()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.server_pid, 15)


def host_facts(fd_limit: int, watchdog: MemoryWatchdog) -> dict[str, Any]:
    """What a result file says of the box it ran on."""
    return {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "open_files_limit": fd_limit,
        "mem_available_gib_lowest": round(watchdog.lowest, 1),
        "memory_watchdog_tripped": watchdog.tripped,
    }


def save(name: str, result: dict[str, Any], summary: str) -> None:
    """``result`` to ``benchmarks/results/<name>-<time>.json``, ``summary`` to stdout."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(summary)
    print(f"\nfull results: {path}", file=sys.stderr)


def server_log_summary(path: Path, markers: dict[str, str] = LOG_MARKERS) -> dict[str, Any]:
    """Counts of the server's log lines holding each of ``markers`` (the log itself stays
    in the temporary directory: tens of thousands of lines on a starved box)."""
    counts: dict[str, int] = {}
    with open(path, errors="replace") as log:
        for line in log:
            for kind, marker in markers.items():
                if marker in line:
                    counts[kind] = counts.get(kind, 0) + 1
    return {"path": str(path), **counts}


def headline(report: dict[str, Any], n: int) -> dict[str, Any]:
    conns = report.get("connections", {})
    idle = report.get("idle", {})
    ramp = conns.get("ramp", {})
    first, last = ramp.get("first_tenth_per_s"), ramp.get("last_tenth_per_s")
    roll = idle.get("roll", {})
    broadcasts = idle.get("broadcasts", [])
    return {
        "connections_held": idle.get("live_at_end"),
        "connected": conns.get("connected"),
        "subscribed": conns.get("subscribed"),
        "connect_s": conns.get("connect_s"),
        "connect_rate_per_s": conns.get("connect_rate_per_s"),
        "ramp_tenths_per_s": ramp.get("tenths_per_s"),
        "last_to_first_tenth": round(last / first, 2) if first and last is not None else None,
        "rss_kb_per_connection": idle.get("rss_kb_per_connection"),
        "server_rss_mb_after_connect": report.get("server", {}).get("rss_mb_after_connect"),
        "broadcast_delivered": [b.get("delivered") for b in broadcasts],
        "broadcast_time_to_all_ms": [b.get("time_to_all_ms") for b in broadcasts],
        "probe_latency_ms": idle.get("probe_latency_ms"),
        "roll": roll,
        "cpu": report.get("cpu"),
        "bottleneck": report.get("bottleneck"),
        "unexpected_disconnects": conns.get("unexpected_disconnects"),
    }


def bars(h: dict[str, Any], n: int) -> dict[str, bool]:
    roll = h["roll"]
    return {
        "all_held_and_subscribed": h["connected"] is not None
        and h["connected"] >= n
        and (h["subscribed"] or 0) >= n
        and h["connections_held"] == n,
        "one_publication_to_all": bool(h["broadcast_delivered"])
        and all(d == n for d in h["broadcast_delivered"]),
        "ramp_last_tenth_at_least_half_the_first": (h["last_to_first_tenth"] or 0) >= 0.5,
        "roll_every_client_back_none_refused": roll.get("seconds") is not None
        and roll.get("refused") == 0
        and roll.get("gave_up") == 0
        and roll.get("live_after") == n,
    }


def markdown(result: dict[str, Any]) -> str:
    a, h, ok = result["args"], result["headline"], result["bars"]
    roll, probe = h["roll"], h["probe_latency_ms"] or {}
    cpu = (h["cpu"] or {}).get("connect", {})
    missed = [name for name, met in ok.items() if not met]
    tenths = ", ".join(f"{r:,}" for r in h["ramp_tenths_per_s"] or [])
    delivered = ", ".join(
        f"{d:,} in {t} ms"
        for d, t in zip(h["broadcast_delivered"], h["broadcast_time_to_all_ms"], strict=True)
    )
    rows = [
        ("held, each subscribed to 2 channels", f"{h['connections_held']:,}"),
        ("ramp", f"{h['connect_s']} s, {h['connect_rate_per_s']:,} connects/s"),
        ("connects/s per tenth of the ramp", tenths),
        ("last tenth / first tenth", h["last_to_first_tenth"]),
        (
            "CPU over the ramp, server / clients (% of one core)",
            f"{cpu.get('server_percent')} / {cpu.get('client_percent')}",
        ),
        (
            "server RSS per connection",
            f"{h['rss_kb_per_connection']} KB ({h['server_rss_mb_after_connect']:,} MB in all)",
        ),
        ("one publication to all: delivered, until the last", delivered),
        (
            "single-subscriber channel while all are held: p50 / p99 / max",
            f"{probe.get('p50')} / {probe.get('p99')} / {probe.get('max')} ms"
            f" ({probe.get('samples')} samples)",
        ),
        (
            f"SIGHUP roll of {roll.get('server_processes_before')} server processes",
            f"{roll.get('seconds')} s; {roll.get('clients_sent_away')} clients sent away,"
            f" {roll.get('reconnected')} back, {roll.get('refused')} refused,"
            f" {roll.get('dropped_without_hint')} dropped without a hint,"
            f" {roll.get('timed_out_attempts')} attempts timed out (retried); client loops"
            f" up to {roll.get('client_loop_lag_max_s')} s late",
        ),
        ("unexpected disconnects", h["unexpected_disconnects"]),
    ]
    lines = [
        f"{a['connections']:,} connections, {a['workers']} workers, {a['processes']} client"
        f" processes, {a['source_ips']} source addresses, {a['channels']:,} channels + one"
        f" shared; {'every bar met' if not missed else f'bars not met: {missed}'}.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    lines += [f"\nBottleneck: {line}" for line in h["bottleneck"] or []]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.macro c250k", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--connections", type=int, default=250_000, help="clients held")
    parser.add_argument("--workers", type=int, default=36, help="shardws workers")
    parser.add_argument("--processes", type=int, default=16, help="client processes")
    add_box_options(parser)
    parser.add_argument("--hold", type=float, default=20, help="seconds held before the roll")
    parser.add_argument("--broadcasts", type=int, default=3, help="timed shared publications")
    parser.add_argument("--probe-rate", type=float, default=20, help="single-channel pubs/s")
    parser.add_argument("--drain-timeout", type=float, default=15, help="server drain_timeout")
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=60, help="server heartbeat_timeout"
    )
    parser.add_argument(
        "--handshake-timeout", type=float, default=30, help="server handshake_timeout"
    )
    args = parser.parse_args(argv)
    n = args.connections

    wait_for_a_quiet_box(args.wait)
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    peak = roll_peak_per_worker(args.workers, n)
    per_worker = min(20_000, fd_limit) - FD_RESERVE  # 20,000: the default cap
    if peak > per_worker:
        raise SystemExit(
            f"{args.workers} workers would hold up to {peak} connections each during the"
            f" roll, above {per_worker} (the open-files limit {fd_limit} less a reserve):"
            " use more --workers"
        )
    check_memory(n, args.min_free_gib)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    log_path = Path(tempfile.gettempdir()) / f"c250k-server-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with port_range(n, args.source_ips) as setup:
        limits = UNLIMITED + f"connections_per_worker = {per_worker}\n"
        server_toml = (
            f"drain_timeout = {args.drain_timeout}\nmax_workers = {args.workers}\n"
            f"heartbeat_timeout = {args.heartbeat_timeout}\n"
            f"handshake_timeout = {args.handshake_timeout}"
        )
        with serve(
            "shardws",
            args.workers,
            extra=limits,
            unlimited=False,
            server=server_toml,
            stop_timeout=args.drain_timeout + 60,
            log_path=log_path,
        ) as server:
            watchdog = MemoryWatchdog(args.min_free_gib, server.pid)
            watchdog.start()
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
                        broadcasts=args.broadcasts,
                        probe_rate=args.probe_rate,
                        reconnect=True,
                        roll_pid=server.pid,
                        duration=args.hold,
                        drain=5.0,
                        server_pid=[server.pid],
                        progress=True,
                    )
                )
            finally:
                watchdog.done.set()
    h = headline(report, n)
    result: dict[str, Any] = {
        "started": started,
        "args": vars(args),
        "host": host_facts(fd_limit, watchdog),
        "setup": {**setup, "connections_per_worker": per_worker, "roll_peak_per_worker": peak},
        "server_log": server_log_summary(log_path),
        "headline": h,
        "bars": bars(h, n),
        "report": report,
    }
    save("c250k", result, markdown(result))
    return 0 if all(result["bars"].values()) and report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
