"""Soak: every fault at once, for minutes, with every loss explained.

    sudo python -m benchmarks.soak --duration 600 --seed 21      # the figures in docs/benchmarks.md
    sudo python -m benchmarks.soak --each-once --seed 1          # one fault of each kind (CI)

Two hosts (``a``, ``b``) in network namespaces, each a full ``shardws serve`` with 2 workers,
an admin, a bridge and the ZeroMQ ingress; a third namespace (``c``) holds every client, so
cutting the link between the hosts leaves the clients' paths to both. While the load runs:

* ``shardws bench --scenario mixed`` (personal and group channels of the default
  namespace, churn) against both hosts, in rounds of a minute (its publishers do not
  reconnect: each round starts with fresh ones);
* ``benchmarks.soakclients``: recovering ``shardws.client`` subscribers on both hosts on
  three history channels (namespace ``hist``: history and presence), publishers over
  WebSocket, the HTTP API and the ZeroMQ ingress (PUSH and acknowledged) of both hosts,
  and a slow consumer in the ``drop`` and in the ``disconnect`` namespace of each host;

a chaos loop (``random.Random(seed)``; every fault logged with its start, end and target)
SIGKILLs a random worker, the admin or the bridge of a random host, SIGHUP-rolls a host,
changes its worker count (2 <-> 3, by rewriting its config and SIGHUP), and cuts the link
between the hosts for a few seconds (a static ARP entry to a MAC nobody has, on both
sides: packets vanish, as on a pulled cable, while both hosts keep their clients).

Accounting (``benchmarks.soakledger``): ``/metrics`` and ``/health`` of both hosts about
every second; counters summed across the resets of killed processes; every loss counter
increase attributed to the fault whose window (start .. end + ``--window`` s) covers it,
or to the slow consumer of the ``drop`` namespace; anything else is ``unexplained``.

At the end the run fails (exit 1, ``failures`` in the report) unless: no unexplained loss;
every recovering subscriber holds every publication exactly once and in order, or was told
of the gap (``recovered: false`` and its reason, or a new epoch), see
``benchmarks.soakclients``; presence lists exactly the live subscribers; every worker of
both hosts is alive with a fresh heartbeat; the open fds of each host's processes are back
to their baseline (taken before any client connected) and no ``/dev/shm`` entry was left.
RSS per host is reported. The JSON report goes to ``benchmarks/results/soak-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterproc import (  # noqa: E402
    ACKED_INGRESS_PORT,
    ADMIN_PORT,
    API_KEY,
    BRIDGE_PORT,
    INGRESS_PORT,
    WS_PORT,
    Host,
    wait_converged,
)
from netns import Network, netns_unavailable  # noqa: E402
from toolkit import timeout  # noqa: E402

from benchmarks.soakclients import ClientLoad, Endpoint  # noqa: E402
from benchmarks.soakledger import (  # noqa: E402
    UNEXPLAINED,
    CounterLedger,
    Fault,
    attribute,
    bus_losses_by_origin,
)
from shardws.config import default_config  # noqa: E402
from shardws.pure.cluster import host_number, host_of, slot_of  # noqa: E402

T = TypeVar("T")

RESULTS = ROOT / "benchmarks" / "results"
HOSTS = ("a", "b")
WORKER_TITLE = "shardws: worker"  # the processes a reload replaces
KINDS = ("kill_worker", "kill_admin", "kill_bridge", "roll", "scale", "partition")
NOWHERE_MAC = "02:00:00:5e:00:99"  # a locally administered MAC that no interface has
EXTRA = """
[limits]
commands_per_second = 100000.0
command_burst = 100000

[namespaces.drop]
slow_consumer = "drop"

[namespaces.disconnect]
slow_consumer = "disconnect"
"""


@dataclass
class SoakSpec:
    """One soak run. ``each_once``: one fault of each kind, in a seeded order, then the
    end (``duration`` is then only the load's length); otherwise faults at random every
    ``pause`` s (uniform 0.5x..1.5x) until ``duration`` s have passed."""

    duration: float = 600.0
    seed: int = 21
    each_once: bool = False
    pause: float = 8.0
    window: float = 15.0
    rate: float = 10.0  # history publications per second per publisher
    bench_rate: int = 2000  # offered deliveries per second of shardws bench
    bench_clients: int = 100
    bench_round: float = 60.0  # seconds of one shardws bench run
    partition: tuple[float, float] = (2.0, 8.0)  # seconds a cut lasts, uniform


# -- processes of a host ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(p) for p in file.read().split()]
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (alive at the time of the call)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fd_kinds(pid: int) -> Counter[str]:
    """What the open fds of ``pid`` are: socket, pipe, anon_inode:[eventfd], a path."""
    kinds: Counter[str] = Counter()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                kinds[os.readlink(f"/proc/{pid}/fd/{fd}").split(":[")[0]] += 1
    except OSError:
        pass
    return kinds


def _processes(host: Host) -> dict[int, str]:
    """The server's processes on ``host``: {pid: title} (``shardws: worker 1`` and so on;
    not the resource tracker that ``multiprocessing.shared_memory`` starts)."""
    assert host.proc is not None
    titles = {pid: _title(pid) for pid in _tree(host.proc.pid)}
    return {pid: title for pid, title in titles.items() if title.startswith("shardws")}


def _resources(host: Host) -> dict[str, Any]:
    processes = _processes(host)
    return {
        "processes": len(processes),
        "fds": sum(_fds(pid) for pid in processes),
        "fds_by_process": {t: dict(_fd_kinds(p)) for p, t in sorted(processes.items())},
        "rss_mb": round(sum(_rss_kb(pid) for pid in processes) / 1024, 1),
    }


# -- the loop the clients run on, inside namespace c ---------------------------------------


class ClientLoop:
    """An asyncio loop in a thread inside one host's namespace; ``call`` runs a coroutine
    on it from another thread and waits (bounded) for its result."""

    def __init__(self, net: Network, host: str) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=net.call_in, args=(host, self._run), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout(10)):
            raise RuntimeError("the clients' loop did not start")

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], limit: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout(limit))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout(10))


# -- the soak ------------------------------------------------------------------------------


class Soak:
    """One run of a ``SoakSpec`` on a fresh two-host cluster (see the module docstring)."""

    def __init__(self, net: Network, directory: Path, spec: SoakSpec) -> None:
        self.net = net
        self.spec = spec
        self.random = random.Random(spec.seed)
        self.t0 = time.monotonic()
        self.t0_wall = time.time()  # the same instant, for the hosts' log lines
        peers = [f"{net.address(name)}:{BRIDGE_PORT}" for name in HOSTS]
        self.hosts = {
            name: Host(net, name, directory / name, peers, None, extra=EXTRA) for name in HOSTS
        }
        self.workers = dict.fromkeys(HOSTS, 2)
        for host in self.hosts.values():
            # A small per-connection output limit: slow consumers are found in seconds.
            text = host.config_path.read_text()
            host.config_path.write_text(
                text.replace("drain_timeout = 3", "drain_timeout = 3\nmax_pending_bytes = 65536")
            )
        self.faults: list[Fault] = []
        self.ledger = CounterLedger()
        self.scrape_failures = 0
        self.peak_rss_mb = dict.fromkeys(HOSTS, 0.0)  # the most a host's processes held
        self._lock = threading.Lock()
        self._scraping = threading.Event()
        self.log: list[str] = []

    def clock(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def note(self, line: str) -> None:
        stamped = f"[{self.clock():7.1f}] {line}"
        self.log.append(stamped)
        print(stamped, file=sys.stderr, flush=True)

    # -- health and metrics ----------------------------------------------------------------

    def _get(self, host: str, path: str) -> tuple[int, bytes]:
        return self.net.http_get(
            "c", self.net.address(host), ADMIN_PORT, path, 3, headers={"X-API-Key": API_KEY}
        )

    def health(self, host: str) -> dict[str, Any] | None:
        """/health's document while it answers 200 (ok), else None."""
        status, document = self._health_any(host)
        return document if status == 200 else None

    def _health_any(self, host: str) -> tuple[int, dict[str, Any] | None]:
        """/health's status and document, a 503 (degraded) one too; (0, None) if it
        did not answer."""
        try:
            status, body = self._get(host, "/health")
            return status, dict(json.loads(body))
        except (OSError, ValueError):
            return 0, None

    def healthy(self, host: str, not_pids: frozenset[int] | set[int] = frozenset()) -> bool:
        """All configured workers alive (none of ``not_pids``), the bridge alive."""
        body = self.health(host)
        if body is None:
            return False
        pids = {w["pid"] for w in body["per_worker"] if w["alive"]}
        cluster = body.get("cluster") or {}
        return (
            len(pids) == self.workers[host]
            and len(body["per_worker"]) == self.workers[host]
            and not pids & not_pids
            and bool(cluster.get("bridge_alive"))
            and cluster.get("bridge_pid") not in not_pids
        )

    def wait(self, condition: Callable[[], bool], limit: float, what: str) -> float:
        """Poll ``condition`` up to ``limit`` s (scaled); returns the run time it held,
        and notes (never raises) when it did not."""
        deadline = time.monotonic() + timeout(limit)
        while time.monotonic() < deadline:
            if condition():
                return self.clock()
            time.sleep(0.2)
        self.note(f"NOT REACHED in {limit:.0f} s: {what}")
        return self.clock()

    def converged(self) -> bool:
        views = [self.hosts[name].view() for name in HOSTS]
        return len({v for v, _ in views}) == 1 and all(ids == list(HOSTS) for _, ids in views)

    def _scrape_loop(self) -> None:
        while not self._scraping.wait(1.0):
            self.scrape()

    def scrape(self) -> None:
        for name in HOSTS:
            at = self.clock()
            rss = sum(_rss_kb(pid) for pid in _processes(self.hosts[name])) / 1024
            self.peak_rss_mb[name] = round(max(self.peak_rss_mb[name], rss), 1)
            try:
                status, text = self._get(name, "/metrics")
            except (OSError, ValueError):
                status = 0
            # The pids of a degraded host too (a worker draining or booting: every roll
            # and scale change): without them every worker's series would look new and
            # its whole count would be added again, charged to that fault.
            health_status, body = self._health_any(name)
            if status != 200 or health_status == 0:
                self.scrape_failures += 1
                continue
            pids = {str(w["worker"]): w["pid"] for w in (body or {}).get("per_worker", [])}
            with self._lock:
                self.ledger.observe(name, at, text.decode(errors="replace"), pids)

    # -- faults ----------------------------------------------------------------------------

    def _pid_titled(self, host: str, prefix: str) -> int | None:
        pids = [p for p, t in _processes(self.hosts[host]).items() if t.startswith(prefix)]
        return self.random.choice(sorted(pids)) if pids else None

    def inject(self, kind: str, host: str) -> None:
        """One fault, waited out: returns once the host is healthy again (or the link
        healed and the views converged), and logs it as a ``Fault``."""
        start = self.clock()
        detail = ""
        supervisor = self.hosts[host].proc
        assert supervisor is not None
        if kind in ("kill_worker", "kill_admin", "kill_bridge"):
            prefix = {"kill_worker": "shardws: worker", "kill_admin": "shardws: admin"}.get(
                kind, "shardws: bridge"
            )
            pid = self._pid_titled(host, prefix)
            if pid is None:
                self.note(f"{kind}@{host}: no process titled {prefix!r}")
                return
            detail = f"{_title(pid)} pid {pid}"
            os.kill(pid, signal.SIGKILL)
            self.wait(lambda: self.healthy(host, {pid}), 60, f"{host} healthy after {detail}")
        elif kind in ("roll", "scale"):
            # A reload replaces every worker one at a time (the admin and the bridge only
            # when their configuration changes, which these faults never do); it is over
            # (and a next SIGHUP is heard) once none of the old workers is left.
            old = {
                pid
                for pid, title in _processes(self.hosts[host]).items()
                if title.startswith(WORKER_TITLE)
            }
            if kind == "scale":
                count = 3 if self.workers[host] == 2 else 2
                self._set_workers(host, count)
                detail = f"workers {self.workers[host]} -> {count}"
                self.workers[host] = count
            supervisor.send_signal(signal.SIGHUP)
            self.wait(
                lambda: self.healthy(host, old) and not old & set(_processes(self.hosts[host])),
                90,
                f"{host} reloaded after {kind}",
            )
        elif kind == "partition":
            low, high = self.spec.partition
            cut = self.random.uniform(low, high)
            detail = f"{cut:.1f} s"
            self._cut(True)
            time.sleep(cut)
            self._cut(False)
        self.wait(self.converged, 60, "views converged")
        fault = Fault(kind, host, start, self.clock(), detail)
        self.faults.append(fault)
        self.note(f"fault {fault.label()} {detail}: {fault.start:.1f} .. {fault.end:.1f} s")

    def _set_workers(self, host: str, count: int) -> None:
        path = self.hosts[host].config_path
        text = path.read_text()
        path.write_text(text.replace(f"workers = {self.workers[host]}\n", f"workers = {count}\n"))

    def _cut(self, down: bool) -> None:
        """Cut (or heal) the link between the hosts only: each resolves the other to a
        MAC nobody has, so packets between them vanish; the clients keep both."""
        for here, there in (("a", "b"), ("b", "a")):
            ns, address = self.net.ns(here), self.net.address(there)
            command = ["ip", "-n", ns, "neigh"]
            if down:
                command += ["replace", address, "lladdr", NOWHERE_MAC, "dev", "eth0"]
                command += ["nud", "permanent"]
            else:
                command += ["del", address, "dev", "eth0"]
            subprocess.run(command, check=True, capture_output=True, timeout=timeout(10))

    def chaos(self, until: float) -> None:
        """Faults until ``until`` (run time), or one of each kind with ``each_once``."""
        if self.spec.each_once:
            plan = list(KINDS)
            self.random.shuffle(plan)
            for kind in plan:
                self.inject(kind, self.random.choice(HOSTS))
                time.sleep(self.random.uniform(0.5, 1.5))
        while not self.spec.each_once and self.clock() < until:
            time.sleep(self.random.uniform(0.5, 1.5) * self.spec.pause)
            if self.clock() >= until:
                break
            self.inject(self.random.choice(KINDS), self.random.choice(HOSTS))
        for host in HOSTS:  # back to the baseline worker count, itself a logged fault
            if self.workers[host] != 2:
                self.inject("scale", host)

    # -- the run ---------------------------------------------------------------------------

    def explain(self, at: float) -> str | None:
        window = self.spec.window
        matching = [f for f in self.faults if f.start <= at <= f.end + window]
        return max(matching, key=lambda f: f.start).kind if matching else None

    def run(self) -> dict[str, Any]:
        spec = self.spec
        for host in self.hosts.values():
            host.start()
        wait_converged(list(self.hosts.values()), list(HOSTS), limit=60)
        self.wait(lambda: all(self.healthy(h) for h in HOSTS), 30, "both hosts healthy")
        baseline = {name: self._steady_resources(host) for name, host in self.hosts.items()}
        self.note(f"baseline { ({h: (r['fds'], r['rss_mb']) for h, r in baseline.items()}) }")
        self.scrape()  # the counters' starting values
        scraper = threading.Thread(target=self._scrape_loop, daemon=True)
        scraper.start()
        loop = ClientLoop(self.net, "c")
        endpoints = [
            Endpoint(
                name,
                self.net.address(name),
                WS_PORT,
                ADMIN_PORT,
                INGRESS_PORT,
                API_KEY,
                ACKED_INGRESS_PORT,
            )
            for name in HOSTS
        ]
        load = ClientLoad(endpoints, spec.rate, spec.seed, self.clock)
        report: dict[str, Any] = {"spec": asdict(spec)}
        failures: list[str] = []
        try:
            loop.call(load.start(), 60)
            rounds: list[dict[str, Any]] = []
            bench = threading.Thread(target=self._bench_rounds, args=(rounds,), daemon=True)
            bench.start()
            self.note("load running; chaos starts")
            self.chaos(until=spec.duration)
            self.note("chaos over")
            self.wait(lambda: all(self.healthy(h) for h in HOSTS), 60, "healthy after chaos")
            bench.join(timeout(spec.bench_round + 240))
            report["bench"] = _bench_summary(rounds, self.faults, spec.window)
            loop.call(load.stop_publishing(), 60)
            settled = loop.call(load.settle(60), 90)
            if not settled:
                failures.append("subscribers did not catch up with the final markers in 60 s")
            report["presence"] = self._presence(loop, load, endpoints)
            report["clients"] = load.report(self.explain)
            report["workers"] = {h: self.health(h) for h in HOSTS}
            loop.call(load.close(), 30)
        finally:
            loop.stop()
            self._scraping.set()
            scraper.join(timeout(10))
        self.scrape()
        end = {name: self._settled_resources(name, baseline[name]) for name in HOSTS}
        report.update(self._accounting(baseline, end))
        failures += self._verdict(report, baseline, end)
        for host in self.hosts.values():
            host.stop()
        report["host_logs"] = {name: host.logs() for name, host in self.hosts.items()}
        report["bus_lost_by_origin"] = bus_losses_by_origin(
            report["host_logs"], self.t0_wall, self.explain, _member_name
        )
        report["failures"] = failures
        report["log"] = self.log
        return report

    def _steady_resources(self, host: Host) -> dict[str, Any]:
        """The host's resources once two reads a second apart agree (the sockets of the
        health checks just made are closing), at most 10 reads."""
        last = _resources(host)
        for _ in range(10):
            time.sleep(1.0)
            now = _resources(host)
            if now["fds"] == last["fds"]:
                return now
            last = now
        return last

    def _settled_resources(self, name: str, baseline: dict[str, Any]) -> dict[str, Any]:
        """The host's resources once its fds are back to the baseline (or 30 s passed:
        connections of the clients just closed take a moment to be released)."""
        host = self.hosts[name]
        self.wait(lambda: _resources(host)["fds"] == baseline["fds"], 30, f"{name} fds at baseline")
        return _resources(host)

    def _bench_rounds(self, rounds: list[dict[str, Any]]) -> None:
        """``shardws bench --scenario mixed`` in rounds of ``bench_round`` s until
        ``duration``: its publishers do not reconnect, so a round whose publisher's worker
        was killed publishes less; the next round starts afresh. Each round's JSON report
        (or its error) is appended to ``rounds``."""
        spec = self.spec
        while self.clock() + 5 < spec.duration:
            length = min(spec.bench_round, spec.duration - self.clock())
            command = [sys.executable, "-m", "shardws", "bench", "--scenario", "mixed"]
            for name in HOSTS:
                command += ["--url", f"ws://{self.net.address(name)}:{WS_PORT}/ws"]
            command += ["-n", str(spec.bench_clients), "--publishers", "2", "--processes", "1"]
            command += ["--steps", str(spec.bench_rate), "--step-duration", f"{length:.0f}"]
            command += ["--slow-fraction", "0", "--churn", "2", "--json", "--no-progress"]
            command += ["--timeout", f"{length + 120:.0f}"]
            start = self.clock()
            bench = self.net.popen("c", command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = bench.communicate(timeout=timeout(length + 180))
            except subprocess.TimeoutExpired:
                bench.kill()
                out, err = bench.communicate()
            try:
                result = dict(json.loads(out))
            except ValueError:
                result = {"error": err.decode(errors="replace")[-2000:]}
            rounds.append({**result, "start": start, "end": self.clock()})

    def _presence(
        self, loop: ClientLoop, load: ClientLoad, endpoints: list[Endpoint]
    ) -> dict[str, Any]:
        """Presence from both hosts, retried for up to 20 s (a member that just
        reconnected may be between two workers)."""
        result: dict[str, Any] = {}
        deadline = time.monotonic() + timeout(20)
        for endpoint in endpoints:
            while True:
                result[endpoint.name] = loop.call(load.presence(endpoint), 30)
                clean = all(
                    not v["ghosts"] and not v["missing"] for v in result[endpoint.name].values()
                )
                if clean or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        return result

    def _accounting(self, baseline: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
        ledger = self.ledger
        causes = attribute(ledger.increases, self.faults, self.spec.window)
        totals: dict[str, float] = {}
        for (_host, series), value in ledger.totals.items():
            totals[series] = totals.get(series, 0.0) + value
        return {
            "faults": [asdict(f) for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "counters": {k: int(v) for k, v in sorted(totals.items())},
            "losses_by_cause": {k: int(v) for k, v in sorted(causes.items())},
            "scrapes": ledger.scrapes,
            "scrape_failures": self.scrape_failures,
            "counter_resets": ledger.resets,
            "resources": {"baseline": baseline, "end": end, "peak_rss_mb": self.peak_rss_mb},
        }

    def _verdict(
        self, report: dict[str, Any], baseline: dict[str, Any], end: dict[str, Any]
    ) -> list[str]:
        failures = []
        unexplained = {k: v for k, v in report["losses_by_cause"].items() if UNEXPLAINED in k}
        if unexplained:
            failures.append(f"losses no fault explains: {unexplained}")
        if report.get("bench", {}).get("lost_without_fault"):
            failures.append(f"bench lost deliveries in a round without a fault: {report['bench']}")
        clients = report.get("clients", {})
        failures += clients.get("problems", [])[:50]
        missing = {
            k: v
            for k, v in clients.get("backend_publications_missing_without_gap", {}).items()
            if UNEXPLAINED in k
        }
        if missing:
            failures.append(f"backend publications lost with no fault and no gap: {missing}")
        for host, channels in report.get("presence", {}).items():
            for channel, diff in channels.items():
                if diff["ghosts"] or diff["missing"]:
                    failures.append(f"presence on {host} {channel}: {diff}")
        for host, body in report.get("workers", {}).items():
            if body is None or not all(
                w["alive"] and w["heartbeat_age"] < 5 for w in body["per_worker"]
            ):
                failures.append(f"{host}: a worker is not alive with a fresh heartbeat: {body}")
        for host in HOSTS:
            if end[host]["fds"] != baseline[host]["fds"]:
                failures.append(
                    f"{host}: {end[host]['fds']} open fds, baseline {baseline[host]['fds']}:"
                    f" {_fd_difference(baseline[host], end[host])}"
                )
        return failures


def _bench_summary(
    rounds: list[dict[str, Any]], faults: list[Fault], window: float
) -> dict[str, Any]:
    """The bench rounds added up: publications, deliveries expected by and received at
    the healthy clients (its definition, see ``shardws.tools.loadgen``), and problems.
    Its losses are the default namespace's (at most once): a round that overlaps no
    fault window must have lost nothing (``lost_without_fault``)."""
    steps = [step for r in rounds for step in r.get("steps", [])]
    total = {
        key: sum(int(step.get(key, 0)) for step in steps)
        for key in ("published", "expected_healthy", "received_healthy", "lost_healthy")
    }
    quiet = [
        r
        for r in rounds
        if not any(f.start <= r["end"] and r["start"] <= f.end + window for f in faults)
    ]
    return {
        "rounds": len(rounds),
        **total,
        "lost_without_fault": sum(
            int(step.get("lost_healthy", 0)) for r in quiet for step in r.get("steps", [])
        ),
        "problems": [p for r in rounds for p in r.get("problems", [])]
        + [r["error"] for r in rounds if "error" in r],
    }


def _fd_difference(baseline: dict[str, Any], end: dict[str, Any]) -> dict[str, int]:
    """{"process title: fd kind": end minus baseline} where they differ (paths of the
    run directory and shared blocks differ per process, so only kinds are compared)."""
    difference: Counter[str] = Counter()
    for sign, resources in ((-1, baseline), (1, end)):
        for title, kinds in resources["fds_by_process"].items():
            for kind, count in kinds.items():
                difference[f"{title}: {kind}"] += sign * count
    return {key: value for key, value in sorted(difference.items()) if value}


def run_soak(spec: SoakSpec) -> dict[str, Any]:
    """Run one soak (root needed) and return its report; ``report["failures"]`` is empty
    when every check held."""
    reason = netns_unavailable()
    if reason:
        raise RuntimeError(f"cannot run the soak: {reason}")
    shm_before = set(os.listdir("/dev/shm"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, Network(["a", "b", "c"]) as net:
        report = Soak(net, Path(tmp), spec).run()
    left = sorted(set(os.listdir("/dev/shm")) - shm_before)
    report["dev_shm_left"] = left
    if left:
        report["failures"].append(f"/dev/shm entries left behind: {left}")
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def summary(report: dict[str, Any]) -> str:
    """The figures docs/benchmarks.md shows, as text."""
    clients = report.get("clients", {})
    lines = [
        f"seed {report['spec']['seed']}, {report['seconds']} s",
        f"faults: {report['faults_by_kind']}",
        f"counters: {report['counters']}",
        f"losses by cause: {report['losses_by_cause']}",
        f"history publications sent: {clients.get('publications_sent')}, acknowledged"
        f" {clients.get('publications_acknowledged')}, delivered to recovering clients"
        f" {clients.get('deliveries_to_recovering_clients')}",
        f"gaps: {clients.get('gaps_by_reason')} by fault {clients.get('gaps_by_fault')}",
        f"recoveries: {clients.get('recoveries')}, reconnects {clients.get('reconnects')}",
        f"backend publications missing without a gap: "
        f"{clients.get('backend_publications_missing_without_gap')}",
        f"told stored, acknowledged by kind: {clients.get('publications_acknowledged_by_kind')}",
        f"told stored and no subscriber got it: {clients.get('told_stored_no_subscriber_got')},"
        f" of those without a gap: {clients.get('told_stored_no_subscriber_got_without_gap')}",
        f"bus losses by fault, receiver and origin: {report.get('bus_lost_by_origin')}",
        f"slow consumers: {clients.get('slow_consumers')}",
        f"bench: {report.get('bench')}",
        "resources: " + ", ".join(_resource_line(host, report["resources"]) for host in HOSTS),
        f"failures: {report['failures'] or 'none'}",
    ]
    return "\n".join(lines)


def _member_name(member: int) -> str:
    """``host/process`` of a bus member id (the hosts' ids are their names)."""
    slot = slot_of(member)
    host = next((h for h in HOSTS if host_number(h) == host_of(member)), "?")
    capacity = default_config().server.max_workers  # the hosts' configs keep the default
    names = {capacity: "admin", capacity + 1: "bridge"}
    return f"{host}/{names.get(slot, f'worker {slot}')}"


def _resource_line(host: str, resources: dict[str, Any]) -> str:
    start, end = resources["baseline"][host], resources["end"][host]
    return (
        f"{host}: fds {end['fds']} (baseline {start['fds']}), RSS {start['rss_mb']} MB at the"
        f" start, {resources['peak_rss_mb'][host]} MB at the most, {end['rss_mb']} MB at the end"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of soak")
    parser.add_argument("--seed", type=int, default=21, help="the faults' random seed")
    parser.add_argument("--each-once", action="store_true", help="one fault of each kind")
    parser.add_argument("--pause", type=float, default=8.0, help="mean seconds between faults")
    parser.add_argument("--window", type=float, default=15.0, help="seconds after a fault")
    parser.add_argument("--rate", type=float, default=10.0, help="history pubs/s per publisher")
    args = parser.parse_args()
    spec = SoakSpec(
        duration=args.duration,
        seed=args.seed,
        each_once=args.each_once,
        pause=args.pause,
        window=args.window,
        rate=args.rate,
    )
    try:
        report = run_soak(spec)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for name, text in report.pop("host_logs").items():  # beside the report, not in it
        path.with_suffix(f".{name}.log").write_text(text)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))
    print(f"report: {path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
