"""Macro scenarios: shardws and the servers users would pick instead, in one run.

Every scenario starts each server fresh on a free loopback port, drives it with the load
generator (``shardws.tools.loadgen``), stops it, and reports each figure as a ratio against
the raw picows broadcast server measured in the same run (the baseline: a Python loop
over ``transport.send``). Nothing is compared across runs or machines.

    python -m benchmarks.macro                     # all six scenarios, all servers
    python -m benchmarks.macro --scenario 1 4      # some of them
    python -m benchmarks.macro --servers shardws raw_picows --quick
    python -m benchmarks.macro c250k [OPTIONS]     # the C250K scenario (benchmarks/c250k.py)
    python -m benchmarks.macro overload [OPTIONS]  # a saturated host (benchmarks/overload.py)

The C250K scenario runs under this module's name too, so the check engineers sharing a
box make before a heavy run (``pgrep -f benchmarks.macro``) sees it.

Results: one JSON file per run in ``benchmarks/results/`` and a Markdown table on stdout
(pasted into ``docs/benchmarks.md``).

Scenarios (the generator shares the machine's cores with the server, so per server
CPU-second figures are the steadier ones):

1. fan-out, 1 worker, 10,000 subscribers, 100-byte messages, one publish at a time;
2. the same with the publisher flat out (256 publishes in flight), p99 latency;
3. mixed load, shardws with 2 workers only: 10,000 clients on a personal and a
   group-of-10 channel, offered rate stepping 5k -> 80k deliveries/s, 1 % slow readers,
   30 connects/s churn;
4. idle density: 19,000 idle connections with one subscription each, RSS per connection;
5. round trip: one connection publishing to a channel it subscribes to;
6. Pusher against native, shardws with 1 worker: the same paced fan-out (subscribers on
   one channel, publications through the HTTP API) run twice on one server, once with
   native subscribers (``/ws``) and ``POST /api/publish``, once with Pusher subscribers
   (``/app/{key}``) and Pusher's signed ``POST /apps/{id}/events``; the ratios are
   Pusher / native.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peers.launch import PeerUnavailable, start_peer, stop_peer
from shardws.tools.loadgen import LoadSpec, run

RESULTS = Path(__file__).parent / "results"
PEERS = ["raw_picows", "websockets", "aiohttp", "node_ws"]
BASELINE = "raw_picows"
UNLIMITED = "[limits]\ncommands_per_second = 1e9\ncommand_burst = 1000000000\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    pid: int
    admin_url: str = ""  # shardws only


@contextlib.contextmanager
def serve(
    name: str,
    workers: int = 1,
    extra: str = "",
    unlimited: bool = True,
    admin: str = "",
    server: str = "",
    stop_timeout: float = 30,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[Server]:
    """Start ``name`` (``shardws`` or a peer) and stop it afterwards. For shardws,
    ``extra`` is TOML appended to its config, ``admin`` and ``server`` TOML added to its
    ``[admin]`` and ``[server]`` sections, and ``unlimited`` lifts the per-connection
    command limit (publishers run flat out; the peers have no such limit either); it gets
    ``stop_timeout`` s to drain and exit once told to stop, and writes its log to
    ``log_path`` (default: this process's stdout and stderr). ``server`` may set
    ``ping_interval`` and ``idle_timeout`` (otherwise: no pings during a run); ``env``
    is added to the server's environment and ``cwd`` is its directory (another
    checkout's, with ``PYTHONPATH`` pointing there: ``python -m`` looks in ``cwd`` first)."""
    if name != "shardws":
        proc = start_peer(name, _free_port())
        try:
            yield Server(name, proc.url, proc.pid)
        finally:
            stop_peer(proc)
        return
    port, admin_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f"[server]\nport = {port}\nworkers = {workers}\n"
            # Benchmarks measure fan-out, not keepalive: no pings during a run.
            + ("" if "ping_interval" in server else "ping_interval = 600\nidle_timeout = 1200\n")
            + f"{server}\n"
            f'[admin]\nport = {admin_port}\n{admin}\n[log]\nlevel = "warning"\n'
            + (UNLIMITED if unlimited else "")
            + extra
        )
        log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardws", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
        admin_url = f"http://127.0.0.1:{admin_port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{admin_url}/health", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("shardws did not become healthy") from None
                    time.sleep(0.1)
            yield Server("shardws", f"ws://127.0.0.1:{port}/ws", proc.pid, admin_url)
        finally:
            proc.terminate()
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL reaches its workers too (PR_SET_PDEATHSIG)
                proc.wait(10)
            if log is not None:
                log.close()


def save_medians(
    prefix: str, args: Any, runs: dict[str, list[dict[str, float]]]
) -> tuple[dict[str, dict[str, float]], Path]:
    """The median of each figure per mode over its rounds, and the JSON file (under
    ``RESULTS``, named ``prefix-<time>.json``) holding the arguments, rounds and medians."""
    summary = {
        mode: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for mode, rounds in runs.items()
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime(f"{prefix}-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"args": vars(args), "runs": runs, "median": summary}, indent=1))
    return summary, path


def fanout_cost(server: Server, connections: int, duration: float) -> dict[str, float]:
    """A flat-out fan-out from one publisher to ``connections`` subscribers of
    ``server`` for ``duration`` s: deliveries per server CPU-second (every thread of
    its process tree over the measured window), per second, and the server's CPU-s."""
    report = run(
        LoadSpec(
            scenario="fanout",
            url=[server.url],
            connections=connections,
            processes=1,
            duration=duration,
            server_pid=[server.pid],
            progress=False,
        )
    )
    return {
        "deliveries_per_cpu_s": float(report["server"]["deliveries_per_cpu_s"]),
        "deliveries_per_s": float(report["deliveries_per_s"]),
        "server_cpu_s": float(report["server"]["cpu_s"]),
    }


def interleaved_rounds(
    rounds: int,
    modes: tuple[str, ...],
    measure: Callable[[str], dict[str, float]],
    note: Callable[[dict[str, float]], str] = lambda _figures: "",
) -> dict[str, list[dict[str, float]]]:
    """``rounds`` rounds of ``measure(mode)`` for every mode, the order rotating from
    round to round (so no mode always runs first on a warm or cold machine); each
    measurement printed with ``note(figures)``. Returns the figures by mode, in order."""
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for number in range(rounds):
        for mode in modes[number % len(modes) :] + modes[: number % len(modes)]:
            figures = measure(mode)
            runs[mode].append(figures)
            print(
                f"round {number + 1}/{rounds} {mode}:"
                f" {figures['deliveries_per_cpu_s']:,.0f} deliveries per server CPU-s"
                f"{note(figures)}",
                flush=True,
            )
    return runs


def against_baseline(
    runs: dict[str, list[dict[str, float]]],
    summary: dict[str, dict[str, float]],
    baseline: str,
    key: str = "deliveries_per_cpu_s",
) -> list[str]:
    """One line per mode of interleaved rounds: its median of ``key``, its spread, and,
    but for ``baseline``, the median of its differences to ``baseline`` within each
    round, in percent (with every round's)."""
    lines = []
    for mode, rounds in runs.items():
        values = [r[key] for r in rounds]
        line = (
            f"{mode}: median {summary[mode][key]:,.0f} deliveries per server CPU-s,"
            f" spread {min(values):,.0f}..{max(values):,.0f}"
            f" ({(max(values) - min(values)) / summary[mode][key] * 100:.1f}% of the median)"
        )
        if mode != baseline:
            differences = [
                (r[key] - b[key]) / b[key] * 100
                for b, r in zip(runs[baseline], rounds, strict=True)
            ]
            line += (
                f"; vs {baseline} in the same round: median"
                f" {statistics.median(differences):+.1f}%"
                f" ({', '.join(f'{d:+.1f}%' for d in differences)})"
            )
        lines.append(line)
    return lines


def ratio_table(
    summary: dict[str, dict[str, float]], base: str, columns: list[tuple[str, str, str]]
) -> str:
    """A markdown table of ``summary`` (figures per mode): for each column ``(label, key,
    format)`` the figure and its ratio to the ``base`` mode's."""
    head = "| mode | " + " | ".join(f"{label} | vs {base}" for label, _k, _f in columns) + " |"
    lines = [head, "|---" * (1 + 2 * len(columns)) + "|"]
    for mode, row in summary.items():
        cells = [
            f"{row[key]:{form}} | {row[key] / summary[base][key]:.2f}x"
            for _label, key, form in columns
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spec(server: Server, **fields: Any) -> LoadSpec:
    return LoadSpec(url=[server.url], server_pid=[server.pid], progress=False, **fields)


def scenario_1(server: Server, quick: bool) -> dict[str, Any]:
    return run(
        _spec(
            server,
            scenario="fanout",
            connections=2000 if quick else 10_000,
            processes=2,
            source_ips=2,
            window=1,
            duration=5 if quick else 10,
        )
    )


def scenario_2(server: Server, quick: bool) -> dict[str, Any]:
    return run(
        _spec(
            server,
            scenario="fanout",
            connections=2000 if quick else 10_000,
            processes=2,
            source_ips=2,
            window=256,
            duration=5 if quick else 10,
        )
    )


def scenario_3(server: Server, quick: bool) -> dict[str, Any]:
    return run(
        _spec(
            server,
            scenario="mixed",
            connections=2000 if quick else 10_000,
            processes=2,
            source_ips=2,
            steps=[5000, 10000, 20000, 40000, 80000],
            step_duration=4 if quick else 10,
            slow_fraction=0.01,
            churn=30,
        )
    )


def scenario_4(server: Server, quick: bool) -> dict[str, Any]:
    return run(
        _spec(
            server,
            scenario="idle",
            connections=3000 if quick else 19_000,
            processes=3,
            source_ips=3,
            duration=5,
        )
    )


API_KEY = "bench-api-key-0123456789"
PUSHER_APP = ("1", "bench-key", "bench-secret-0123456789")
#: What scenario 6's server needs beyond the defaults: a Pusher app and the admin API key.
PUSHER_CONFIG = {
    "extra": '\n[[pusher.apps]]\nid = "{}"\nkey = "{}"\nsecret = "{}"\n'.format(*PUSHER_APP),
    "admin": f'api_key = "{API_KEY}"',
}


def scenario_6(server: Server, quick: bool) -> dict[str, Any]:
    """The same fan-out, native then Pusher, on one server (see the module doc)."""
    host_port = server.url.removeprefix("ws://").partition("/")[0]
    common = {
        "scenario": "fanout",
        "connections": 1000 if quick else 5000,
        "processes": 2,
        "rate": 50 if quick else 20,
        "duration": 5 if quick else 10,
        "http_publish": server.admin_url,
    }
    native = run(_spec(server, **common, api_key=API_KEY))
    pusher_url = f"ws://{host_port}/app/{PUSHER_APP[1]}?protocol=7"
    pusher = run(
        LoadSpec(
            url=[pusher_url],
            server_pid=[server.pid],
            progress=False,
            protocol="pusher",
            pusher_app=":".join(PUSHER_APP),
            **common,
        )
    )
    return {
        "ok": native["ok"] and pusher["ok"],
        "problems": [*native.get("problems", []), *pusher.get("problems", [])],
        "native": native,
        "pusher": pusher,
    }


def scenario_5(server: Server, quick: bool) -> dict[str, Any]:
    return run(
        _spec(server, scenario="roundtrip", connections=1, processes=1, duration=5 if quick else 10)
    )


SCENARIOS: dict[int, tuple[Callable[[Server, bool], dict[str, Any]], list[str], int]] = {
    # number: (runner, servers, shardws workers)
    1: (scenario_1, ["shardws", *PEERS], 1),
    2: (scenario_2, ["shardws", *PEERS], 1),
    3: (scenario_3, ["shardws"], 2),
    4: (scenario_4, ["shardws", *PEERS], 1),
    5: (scenario_5, ["shardws", *PEERS], 1),
    6: (scenario_6, ["shardws"], 1),
}
#: Configuration a scenario's shardws needs (``serve``'s ``extra`` and ``admin``).
SCENARIO_CONFIG: dict[int, dict[str, str]] = {6: PUSHER_CONFIG}


def headline(number: int, report: dict[str, Any]) -> dict[str, Any]:
    """The figures each scenario is judged by."""
    server = report.get("server", {})
    if number in (1, 2):
        return {
            "deliveries_per_s": report.get("deliveries_per_s"),
            "deliveries_per_cpu_s": server.get("deliveries_per_cpu_s"),
            "p50_ms": report.get("latency_ms", {}).get("p50"),
            "p99_ms": report.get("latency_ms", {}).get("p99"),
            "lost": report.get("lost"),
        }
    if number == 3:
        held = [
            s["offered_deliveries_per_s"]
            for s in report.get("steps", [])
            # lost_healthy < 0 means more arrived than the generator expected (its
            # expected count is approximate at churn boundaries), never a loss.
            if s["lost_healthy"] <= 0 and (s["latency_ms"]["p99"] or 1e9) <= 200
        ]
        return {
            "highest_rate_held": max(held, default=0),
            "steps": [
                {
                    "offered": s["offered_deliveries_per_s"],
                    "achieved": s["achieved_deliveries_per_s"],
                    "p99_ms": s["latency_ms"]["p99"],
                    "lost_healthy": s["lost_healthy"],
                    "rss_mb": s["server_rss_mb"],
                }
                for s in report.get("steps", [])
            ],
        }
    if number == 6:
        paths = {
            path: {
                "deliveries_per_s": report[path].get("deliveries_per_s"),
                "deliveries_per_cpu_s": report[path].get("server", {}).get("deliveries_per_cpu_s"),
                "p50_ms": report[path].get("latency_ms", {}).get("p50"),
                "p99_ms": report[path].get("latency_ms", {}).get("p99"),
                "lost": report[path].get("lost"),
            }
            for path in ("native", "pusher")
        }
        return {
            **paths,
            "pusher_vs_native_per_cpu_s": _ratio(
                paths["pusher"]["deliveries_per_cpu_s"], paths["native"]["deliveries_per_cpu_s"]
            ),
        }
    if number == 4:
        return {
            "connections": report.get("connections", {}).get("connected"),
            "rss_kb_per_connection": report.get("idle", {}).get("rss_kb_per_connection"),
            "connect_rate_per_s": report.get("connections", {}).get("connect_rate_per_s"),
        }
    return {
        "roundtrips_per_s": report.get("roundtrips_per_s"),
        "roundtrips_per_cpu_s": server.get("roundtrips_per_cpu_s"),
        "p50_ms": report.get("latency_ms", {}).get("p50"),
        "p99_ms": report.get("latency_ms", {}).get("p99"),
    }


def run_all(
    numbers: list[int], servers: list[str] | None, quick: bool, path: Path | None = None
) -> dict[str, Any]:
    """Run the scenarios; with ``path``, the results so far are saved after every server
    (a long run that dies half-way keeps what it measured)."""
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    for number in numbers:
        runner, names, workers = SCENARIOS[number]
        rows: dict[str, Any] = {}
        for name in names:
            if servers and name not in servers:
                continue
            print(f"scenario {number}: {name} ...", file=sys.stderr, flush=True)
            try:
                config = SCENARIO_CONFIG.get(number, {})
                with serve(name, workers if name == "shardws" else 1, **config) as server:
                    report = runner(server, quick)
            except PeerUnavailable as exc:
                rows[name] = {"skipped": str(exc)}
                continue
            rows[name] = {
                "headline": headline(number, report),
                "ok": report["ok"],
                "problems": report.get("problems", []),
                "report": report,
            }
            results[f"scenario_{number}"] = rows
            if path is not None:
                path.write_text(json.dumps(results, indent=1, default=str))
        results[f"scenario_{number}"] = rows
    return results


def _ratio(value: Any, base: Any) -> str:
    if not value or not base:
        return "-"
    return f"{value / base:.2f}x"


def markdown(results: dict[str, Any]) -> str:
    """Tables for docs/benchmarks.md: each figure and its ratio to the raw picows loop."""
    out = []
    keys = {1: "deliveries_per_s", 2: "deliveries_per_s", 5: "roundtrips_per_s"}
    for number in (1, 2, 4, 5):
        rows = results.get(f"scenario_{number}")
        if not rows:
            continue
        base = rows.get(BASELINE, {}).get("headline", {})
        out.append(f"\n#### Scenario {number}\n")
        if number == 4:
            out.append("| server | connections | RSS per connection | vs raw picows | connects/s |")
            out.append("|---|---|---|---|---|")
            for name, row in rows.items():
                h = row.get("headline")
                if h is None:
                    out.append(f"| {name} | skipped: {row.get('skipped')} | | | |")
                    continue
                out.append(
                    f"| {name} | {h['connections']} | {h['rss_kb_per_connection']} KB | "
                    f"{_ratio(h['rss_kb_per_connection'], base.get('rss_kb_per_connection'))}"
                    f" | {h['connect_rate_per_s']} |"
                )
            continue
        key = keys[number]
        cpu_key = "roundtrips_per_cpu_s" if number == 5 else "deliveries_per_cpu_s"
        out.append(
            f"| server | {key} | vs raw picows | per server CPU-s | vs raw picows "
            "| p50 ms | p99 ms |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            h = row.get("headline")
            if h is None:
                out.append(f"| {name} | skipped: {row.get('skipped')} | | | | | |")
                continue
            out.append(
                f"| {name} | {h[key]} | {_ratio(h[key], base.get(key))} | {h[cpu_key]} | "
                f"{_ratio(h[cpu_key], base.get(cpu_key))} | {h['p50_ms']} | {h['p99_ms']} |"
            )
    rows = results.get("scenario_6")
    if rows and "shardws" in rows and "headline" in rows["shardws"]:
        h = rows["shardws"]["headline"]
        out.append("\n#### Scenario 6 (Pusher against native, shardws, 1 worker)\n")
        out.append(
            "| path | deliveries/s | per server CPU-s | vs native | p50 ms | p99 ms | lost |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for path in ("native", "pusher"):
            p = h[path]
            out.append(
                f"| {path} | {p['deliveries_per_s']} | {p['deliveries_per_cpu_s']} | "
                f"{_ratio(p['deliveries_per_cpu_s'], h['native']['deliveries_per_cpu_s'])} | "
                f"{p['p50_ms']} | {p['p99_ms']} | {p['lost']} |"
            )
    rows = results.get("scenario_3")
    if rows and "shardws" in rows and "headline" in rows["shardws"]:
        h = rows["shardws"]["headline"]
        out.append("\n#### Scenario 3 (shardws, 2 workers)\n")
        out.append(
            f"Highest offered rate held at p99 ≤ 200 ms with zero loss for healthy "
            f"clients: **{h['highest_rate_held']} deliveries/s**.\n"
        )
        out.append("| offered/s | achieved/s | p99 ms | lost (healthy) | server RSS MB |")
        out.append("|---|---|---|---|---|")
        for s in h["steps"]:
            out.append(
                f"| {s['offered']} | {s['achieved']} | {s['p99_ms']} | "
                f"{s['lost_healthy']} | {s['rss_mb']} |"
            )
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["c250k"]:
        from benchmarks import c250k

        sys.exit(c250k.main(sys.argv[2:]))
    if sys.argv[1:2] == ["overload"]:
        from benchmarks import overload

        sys.exit(overload.main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", type=int, nargs="*", default=sorted(SCENARIOS), help="scenario numbers"
    )
    parser.add_argument("--servers", nargs="*", help="subset of shardws + peers")
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"macro-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = run_all(args.scenario, args.servers, args.quick, path)
    print(markdown(results))
    print(f"\nfull results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
