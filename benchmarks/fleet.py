"""A fleet on one box: N hosts in network namespaces, joined by each engine in turn, and
what each costs per unit (not capacities: the box has 2 cores and is shared).

    sudo python -m benchmarks.fleet                         # 16 hosts, every engine
    sudo python -m benchmarks.fleet --hosts 32 --engines mesh,redis --json /tmp/fleet32.json

Each engine of ``ENGINES`` gets its own network (``tests/netns.py``): ``--hosts`` hosts
``h0``, ``h1``, ... each a full ``shardws serve`` with one worker (``tests/clusterproc.py``,
the mesh over CurveZMQ), and a namespace ``r`` for what the hosts join through (a
``redis-server`` for the hub; a Redis Cluster of 3 masters and 3 replicas for
``redis-cluster``, sharded pub/sub; empty for the mesh). ``heartbeat_interval`` and
``peer_timeout`` are the config's defaults unless given. Hosts boot ``--start-batch`` at
a time (all at once, 32 hosts starve 2 cores past their supervisors' patience), then
every view must agree. The phases (``Phases``), in order:

1. **idle** (``--idle`` s, no clients): CPU seconds of every host process (supervisor,
   worker, admin, bus forwarder, bridge or hub; ``/proc/PID/task/*/schedstat``) and of the
   broker; bytes the hosts sent each other (the switch's port counters: every byte
   between namespaces, counted once by its sender); Redis commands (``INFO
   commandstats``).
2. **subscribe latency**: one client per host subscribes to ``--subscribes`` fresh
   channels, hosts in turn, one at a time; p50/p99 of the reply's round trip.
3. **load** (``--window`` s): ``--subscribers`` clients on every host subscribe to one
   channel; one publisher on each of ``--publishers`` hosts publishes at ``--rate``
   publications per second in all. CPU, bytes and commands over the window less the
   idle rate over the same time, per cross-host delivery (a publication reaching a
   subscriber on another host) and per publication; deliveries missing after a settle.
4. **a host dies**: the same load; after 1 s the last host is SIGKILLed (every
   process). How long until every survivor's ``/health`` view has dropped it (polled,
   all hosts at once; the sweep's duration is the resolution), the survivors' CPU in
   the ``peer_timeout + --after-kill`` s after the kill against their load-phase rate (without the
   admin, which answers the polls), and the deliveries the survivors' subscribers
   missed.
5. **it comes back**: the killed host is started again; how long until its own view
   shows it (boot) and until every host's view does.

A figure per engine, and each engine's figures as a ratio of the first engine's (the
baseline, the mesh) measured in the same run. ``--json PATH`` writes them (the default
``benchmarks/results/fleet-N.json``). Needs root. Everything it starts is killed by PID and
every namespace deleted on the way out, failures included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterproc import BRIDGE_PORT, REDIS_PORT, Host, keygen, redis_in  # noqa: E402
from netns import Network, netns_unavailable  # noqa: E402
from serverproc import terminate  # noqa: E402
from wsclient import Client  # noqa: E402

from shardws.server.progress import rss_bytes  # noqa: E402
from shardws.tools.loadgen import process_cpu_seconds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BROKER = "r"  # the namespace of what the hosts join through
CHANNEL = "fleet"


# --- what the hosts join through: one entry per engine ----------------------------------


class Broker:
    """What the hosts of one engine join through, running in namespace ``r``: nothing
    for the mesh. ``address`` or ``nodes`` go into the hosts' ``[cluster.redis]``."""

    address = ""
    nodes: tuple[str, ...] = ()

    def pids(self) -> list[int]:
        return []

    def stats(self) -> dict[str, int]:
        """Counters to difference over a phase (bytes, commands by name)."""
        return {}

    def stop(self) -> None:
        pass


class RedisBroker(Broker):
    """``redis-server`` processes (``clusterproc.redis_in``) at ``ports``, one by default;
    their counters are summed."""

    def __init__(
        self, net: Network, directory: Path, ports: tuple[int, ...] = (REDIS_PORT,), *extra: str
    ) -> None:
        self.net = net
        self.ports = ports
        directory.mkdir()
        self.procs = [redis_in(net, BROKER, directory / str(port), port, *extra) for port in ports]
        self.address = f"{net.address(BROKER)}:{ports[0]}"

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def cli(self, *args: str) -> str:
        """``redis-cli ARGS`` from inside the broker's namespace (bounded); its output."""
        cli = self.net.popen(
            BROKER,
            ["redis-cli", "-h", self.net.address(BROKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = cli.communicate(timeout=60)
        if cli.returncode != 0 or not out:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {err.decode()[-500:]}")
        return out.decode()

    def stats(self) -> dict[str, int]:
        counters: dict[str, int] = {}
        for port in self.ports:
            text = self.cli("-p", str(port), "INFO", "all")
            for name, value in re.findall(r"cmdstat_([a-z|]+):calls=(\d+)", text):
                counters[f"command:{name}"] = counters.get(f"command:{name}", 0) + int(value)
            for name in ("total_net_input_bytes", "total_net_output_bytes"):
                found = re.search(rf"^{name}:(\d+)", text, re.MULTILINE)
                counters[name] = counters.get(name, 0) + int(found[1] if found else 0)
        return counters

    def stop(self) -> None:
        for proc in self.procs:
            terminate(proc)


class RedisClusterBroker(RedisBroker):
    """A Redis Cluster of 3 masters with a replica each, every node in namespace ``r``
    (``redis-cli --cluster create``); the hosts get every node as a seed."""

    PORTS = (7000, 7001, 7002, 7003, 7004, 7005)

    def __init__(self, net: Network, directory: Path) -> None:
        super().__init__(net, directory, self.PORTS, "--cluster-enabled", "yes")
        self.nodes = tuple(f"{net.address(BROKER)}:{port}" for port in self.PORTS)
        for port in self.PORTS:
            self._wait_for(port, "PONG", "PING")
        self.cli("--cluster", "create", *self.nodes, "--cluster-replicas", "1", "--cluster-yes")
        for port in self.PORTS:
            self._wait_for(port, "cluster_state:ok", "CLUSTER", "INFO")

    def _wait_for(self, port: int, answer: str, *command: str, limit: float = 30) -> None:
        """Until the node on ``port`` answers ``command`` with ``answer`` in it (bounded)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if answer in self.cli("-p", str(port), *command):
                    return
            except RuntimeError:
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster node {port}: no {answer!r} within {limit:.0f} s")


@dataclass(frozen=True)
class Engine:
    """One way hosts join: its ``[cluster] engine`` value and what starts its broker."""

    name: str
    engine: str
    broker: Callable[[Network, Path], Broker]


#: The engines compared, the baseline first. A new engine is one more row.
ENGINES = (
    Engine("mesh", "mesh", lambda net, directory: Broker()),
    Engine("redis", "redis", RedisBroker),
    Engine("redis-cluster", "redis", RedisClusterBroker),
)


# --- what one phase costs ---------------------------------------------------------------


def _role(title: str) -> str:
    """``shardws: worker 0`` -> ``worker``; the bridge's and the hub's own names stay.
    A process without a shardws title (a multiprocessing helper) is ``other``."""
    if not title.startswith("shardws: "):
        return "other"
    return " ".join(w for w in title.removeprefix("shardws: ").split() if not w.isdigit())


@dataclass
class Snapshot:
    """Counters at one moment: CPU by host and role, bytes each host sent, the broker's."""

    at: float
    cpu: dict[str, dict[str, float]]
    broker_cpu: float
    sent: dict[str, int]
    broker: dict[str, int]

    @classmethod
    def take(cls, net: Network, hosts: list[Host], broker: Broker) -> Snapshot:
        cpu: dict[str, dict[str, float]] = {}
        for host in hosts:
            roles = cpu.setdefault(host.name, {})
            for pid, title in host.processes().items():
                try:
                    roles[_role(title)] = roles.get(_role(title), 0.0) + process_cpu_seconds(pid)
                except (OSError, IndexError, ValueError):
                    continue  # ended meanwhile
        broker_cpu = sum(process_cpu_seconds(pid) for pid in broker.pids())
        return cls(time.monotonic(), cpu, broker_cpu, net.sent_bytes(), broker.stats())


@dataclass
class Span:
    """What happened between two snapshots."""

    seconds: float
    cpu: dict[str, dict[str, float]]  # host -> role -> CPU seconds
    broker_cpu: float
    sent: dict[str, int]
    broker: dict[str, int]

    @classmethod
    def between(cls, start: Snapshot, end: Snapshot) -> Span:
        cpu = {
            host: {
                role: seconds - start.cpu.get(host, {}).get(role, 0.0)
                for role, seconds in roles.items()
            }
            for host, roles in end.cpu.items()
            if host in start.cpu
        }
        return cls(
            end.at - start.at,
            cpu,
            end.broker_cpu - start.broker_cpu,
            {h: end.sent[h] - start.sent.get(h, 0) for h in end.sent},
            {k: v - start.broker.get(k, 0) for k, v in end.broker.items()},
        )

    def host_cpu(self, hosts: list[str] | None = None, without: tuple[str, ...] = ()) -> float:
        return sum(
            seconds
            for host, roles in self.cpu.items()
            if hosts is None or host in hosts
            for role, seconds in roles.items()
            if role not in without
        )

    def commands(self) -> int:
        return sum(v for k, v in self.broker.items() if k.startswith("command:"))


@contextmanager
def measured(net: Network, hosts: list[Host], broker: Broker) -> Iterator[list[Span]]:
    """``with measured(...) as span:`` -- ``span[0]`` is the block's :class:`Span`."""
    spans: list[Span] = []
    start = Snapshot.take(net, hosts, broker)
    yield spans
    spans.append(Span.between(start, Snapshot.take(net, hosts, broker)))


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# --- clients ---------------------------------------------------------------------------


@dataclass
class Subscriber:
    """A client subscribed to the load channel; a task records what it receives."""

    host: str
    client: Client
    seen: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.client.ws:
            message = json.loads(raw)
            data = message.get("data")
            if message.get("channel") == CHANNEL and isinstance(data, dict):
                key = (data["host"], data["n"])
                if key in self.seen:
                    self.duplicates += 1
                self.seen.add(key)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.client.close()


async def _publish(
    publishers: dict[str, Client], rate: float, seconds: float, offset: int = 0
) -> list[tuple[str, int]]:
    """Publish at ``rate`` per second in all, publishers in turn, for ``seconds``; returns
    (publishing host, number) of each publication accepted, numbered from ``offset``."""
    made: list[tuple[str, int]] = []
    names = sorted(publishers)
    started = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        host = names[n % len(names)]
        reply = await publishers[host].call(
            "publish", channel=CHANNEL, data={"host": host, "n": offset + n}
        )
        if reply.get("ok"):
            made.append((host, offset + n))
    return made


def _deliveries(
    subscribers: list[Subscriber], made: list[tuple[str, int]], among: set[str]
) -> dict[str, int]:
    """Expected, received and cross-host deliveries of publications ``made`` to the
    subscribers on hosts ``among``."""
    expected = received = cross = 0
    for sub in subscribers:
        if sub.host not in among:
            continue
        for host, n in made:
            expected += 1
            if (host, n) in sub.seen:
                received += 1
                cross += host != sub.host
    return {"expected": expected, "received": received, "cross_host": cross}


async def _settle(
    subscribers: list[Subscriber], made: list[tuple[str, int]], among: set[str]
) -> dict[str, int]:
    """:func:`_deliveries` once the subscribers on ``among`` have every publication, or
    after 5 s (what is still missing then is lost)."""
    for _ in range(50):
        counts = _deliveries(subscribers, made, among)
        if counts["received"] == counts["expected"]:
            break
        await asyncio.sleep(0.1)
    return _deliveries(subscribers, made, among)


# --- membership ------------------------------------------------------------------------


async def _seen_at(hosts: list[Host], target: str, present: bool, limit: float) -> dict[str, float]:
    """Poll every host's /health view at once until each shows ``target`` present (or
    gone); returns host -> the monotonic time of its first sweep that showed it, and
    records the sweep's duration as ``"sweep_s"`` (the resolution). Bounded by ``limit``."""
    seen: dict[str, float] = {}
    sweeps: list[float] = []
    deadline = time.monotonic() + limit
    while len(seen) < len(hosts) and time.monotonic() < deadline:
        started = time.monotonic()
        waiting = [host for host in hosts if host.name not in seen]
        views = await asyncio.gather(*(asyncio.to_thread(host.view) for host in waiting))
        now = time.monotonic()
        sweeps.append(now - started)
        for host, (number, ids) in zip(waiting, views, strict=True):
            if number is not None and (target in ids) == present:
                seen[host.name] = now
        await asyncio.sleep(0.02)
    missing = sorted({host.name for host in hosts} - set(seen))
    if missing:
        raise RuntimeError(
            f"after {limit:.0f} s, {missing} still {'miss' if present else 'see'} {target}"
        )
    seen["sweep_s"] = statistics.median(sweeps)
    return seen


# --- one engine ------------------------------------------------------------------------


class Phases:
    """The phases on one running fleet, in order (each method is one, and returns its
    figures); what a later phase compares with (the idle and load spans, the clients)
    is kept here."""

    def __init__(
        self, net: Network, hosts: list[Host], broker: Broker, args: argparse.Namespace
    ) -> None:
        self.net = net
        self.hosts = hosts
        self.names = [host.name for host in hosts]
        self.broker = broker
        self.args = args
        self.subscribers: list[Subscriber] = []
        self.publishers: dict[str, Client] = {}

    async def run(self) -> dict[str, Any]:
        try:
            return {
                "idle": await self.idle(),
                "subscribe_reply_ms": await self.subscribe_latency(),
                "load": await self.load(),
                "host_killed": await self.kill_one(),
                "host_joined": await self.rejoin(),
            }
        finally:
            for sub in self.subscribers:
                await sub.close()
            for publisher in self.publishers.values():
                await publisher.close()

    async def idle(self) -> dict[str, Any]:
        """1. No clients: what membership alone costs."""
        await asyncio.sleep(self.args.settle)
        with measured(self.net, self.hosts, self.broker) as span:
            await asyncio.sleep(self.args.idle)
        self.idle_span = idle = span[0]
        per_host = [sum(idle.cpu[n].values()) / idle.seconds for n in self.names]
        by_role: dict[str, float] = {}
        for roles in idle.cpu.values():
            for role, seconds in roles.items():
                by_role[role] = by_role.get(role, 0.0) + seconds / idle.seconds / len(self.names)
        rss = sum(rss_bytes(pid) or 0 for host in self.hosts for pid in host.processes())
        return {
            "seconds": round(idle.seconds, 2),
            "cpu_ms_per_s_per_host": round(statistics.mean(per_host) * 1e3, 2),
            "cpu_ms_per_s_per_host_max": round(max(per_host) * 1e3, 2),
            "cpu_ms_per_s_per_host_by_role": {
                role: round(value * 1e3, 2) for role, value in sorted(by_role.items())
            },
            "broker_cpu_ms_per_s": round(idle.broker_cpu / idle.seconds * 1e3, 2),
            "bytes_per_s_per_host": round(sum(idle.sent.values()) / idle.seconds / len(self.names)),
            "broker_commands_per_s": round(idle.commands() / idle.seconds, 1),
            "rss_mib_per_host": round(rss / len(self.hosts) / 2**20, 1),
        }

    async def subscribe_latency(self) -> dict[str, Any]:
        """2. Subscribes to fresh channels, one at a time, hosts in turn."""
        probes = await asyncio.gather(*(host.client() for host in self.hosts))
        samples: list[float] = []
        try:
            for round_ in range(self.args.subscribes):
                for name, probe in zip(self.names, probes, strict=True):
                    started = time.perf_counter()
                    reply = await probe.call("subscribe", channel=f"fresh-{name}-{round_}")
                    samples.append(time.perf_counter() - started)
                    if not reply.get("ok"):
                        raise RuntimeError(f"subscribe on {name} refused: {reply}")
        finally:
            for probe in probes:
                await probe.close()
        return {
            "p50": round(_percentile(samples, 0.5) * 1e3, 2),
            "p99": round(_percentile(samples, 0.99) * 1e3, 2),
            "samples": len(samples),
        }

    async def load(self) -> dict[str, Any]:
        """3. Subscribers everywhere, publishers on a few hosts, a modest fixed rate."""
        args, idle = self.args, self.idle_span
        for host in self.hosts:
            for _ in range(args.subscribers):
                self.subscribers.append(Subscriber(host.name, await host.client()))
        for sub in self.subscribers:
            reply = await sub.client.call("subscribe", channel=CHANNEL)
            if not reply.get("ok"):
                raise RuntimeError(f"subscribe on {sub.host} refused: {reply}")
            sub.start()
        for host in self.hosts[: args.publishers]:
            self.publishers[host.name] = await host.client()
        with measured(self.net, self.hosts, self.broker) as span:
            made = await _publish(self.publishers, args.rate, args.window)
            counts = await _settle(self.subscribers, made, set(self.names))
        self.load_span = load = span[0]

        def marginal(during: float, idle_total: float) -> float:
            return during - idle_total / idle.seconds * load.seconds

        cpu = marginal(load.host_cpu(), idle.host_cpu())
        sent = marginal(sum(load.sent.values()), sum(idle.sent.values()))
        publications, cross = max(1, len(made)), max(1, counts["cross_host"])
        return {
            "seconds": round(load.seconds, 2),
            "publications": len(made),
            "deliveries": counts,
            "lost": counts["expected"] - counts["received"],
            "duplicates": sum(sub.duplicates for sub in self.subscribers),
            "server_cpu_us_per_cross_host_delivery": round(cpu / cross * 1e6, 1),
            "server_cpu_us_per_publication": round(cpu / publications * 1e6, 1),
            "broker_cpu_us_per_publication": round(
                marginal(load.broker_cpu, idle.broker_cpu) / publications * 1e6, 1
            ),
            "bytes_between_hosts_per_publication": round(sent / publications),
            "bytes_between_hosts_per_cross_host_delivery": round(sent / cross, 1),
            "broker_commands_per_publication": round(
                marginal(load.commands(), idle.commands()) / publications, 2
            ),
            "broker_commands_by_name": {
                k.removeprefix("command:"): v
                for k, v in sorted(load.broker.items())
                if k.startswith("command:") and v
            },
            "broker_net_bytes": {
                k: v for k, v in load.broker.items() if not k.startswith("command:")
            },
        }

    async def kill_one(self) -> dict[str, Any]:
        """4. The last host SIGKILLed under the same load as phase 3."""
        args, load = self.args, self.load_span
        victim, survivors = self.hosts[-1], self.hosts[:-1]
        survivor_names = {host.name for host in survivors}
        # The survivors' CPU per second under load, without the admin (it answers polls).
        load_rate = (
            sum(
                seconds
                for name in survivor_names
                for role, seconds in load.cpu[name].items()
                if role != "admin"
            )
            / load.seconds
        )
        offset = int(args.rate * args.window)  # numbers after phase 3's
        publishing = asyncio.create_task(
            _publish(self.publishers, args.rate, 1.0 + args.peer_timeout + args.after_kill, offset)
        )
        await asyncio.sleep(1.0)
        with measured(self.net, survivors, self.broker) as span:
            await asyncio.to_thread(victim.kill)
            killed = time.monotonic()
            gone = await _seen_at(survivors, victim.name, False, args.peer_timeout * 3 + 10)
            end = killed + args.peer_timeout + args.after_kill
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        after = span[0]
        made = await publishing
        counts = await _settle(self.subscribers, made, survivor_names)
        survivors_cpu = after.host_cpu(without=("admin",))
        detected = [t - killed for name, t in gone.items() if name != "sweep_s"]
        return {
            "seen_gone_by_all_s": round(max(detected), 2),
            "seen_gone_by_all_over_peer_timeout": round(max(detected) / args.peer_timeout, 2),
            "seen_gone_median_s": round(statistics.median(detected), 2),
            "poll_sweep_s": round(gone["sweep_s"], 3),
            "survivors_cpu_s_after": round(survivors_cpu, 3),
            "survivors_excess_cpu_ms_per_host": round(
                (survivors_cpu - load_rate * after.seconds) / len(survivors) * 1e3, 2
            ),
            "window_s": round(after.seconds, 2),
            "publications": len(made),
            "deliveries_to_survivors": counts,
            "lost": counts["expected"] - counts["received"],
        }

    async def rejoin(self) -> dict[str, Any]:
        """5. The killed host started again."""
        victim = self.hosts[-1]
        started = time.monotonic()
        victim.start()
        own = (await _seen_at([victim], victim.name, True, 60))[victim.name]
        everyone = await _seen_at(self.hosts, victim.name, True, 60)
        joined = max(t for name, t in everyone.items() if name != "sweep_s")
        return {
            "own_view_after_start_s": round(own - started, 2),
            "seen_by_all_after_start_s": round(joined - started, 2),
            "seen_by_all_after_own_view_s": round(joined - own, 2),
            "seen_by_all_after_own_view_over_heartbeat": round(
                (joined - own) / self.args.heartbeat_interval, 2
            ),
            "poll_sweep_s": round(everyone["sweep_s"], 3),
        }


#: The kernel's ARP table is one for every network namespace of the box, bounded by the
#: root namespace's ``net.ipv4.neigh.default.gc_thresh2``/``gc_thresh3`` (512/1024 by
#: default). Each mesh host resolves every peer, so N hosts in namespaces need about N²
#: entries: past ``gc_thresh3`` new neighbours are refused ("neighbor table overflow" in
#: the kernel log), the peers started last are never reached, and the views never agree
#: (40 hosts did not converge here until it was raised). Real hosts each have their own
#: table, with N entries for N peers on one subnet.
NEIGHBOUR_TABLE = Path("/proc/sys/net/ipv4/neigh/default")


@contextmanager
def neighbour_table(hosts: int) -> Iterator[None]:
    """The box's ARP table limits raised for a run of ``hosts`` hosts when they are below
    what it needs, and put back afterwards (failures included)."""
    needed = (hosts + 2) ** 2  # every host, the broker and the switch
    limits = {"gc_thresh2": needed, "gc_thresh3": 2 * needed}
    before = {name: int((NEIGHBOUR_TABLE / name).read_text()) for name in limits}
    raised = {name: value for name, value in limits.items() if before[name] < value}
    for name, value in raised.items():
        print(
            f"net.ipv4.neigh.default.{name}: {before[name]} -> {value} for this run",
            file=sys.stderr,
        )
        (NEIGHBOUR_TABLE / name).write_text(f"{value}\n")
    try:
        yield
    finally:
        for name in raised:
            (NEIGHBOUR_TABLE / name).write_text(f"{before[name]}\n")


def run_engine(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase on one fresh network of ``args.hosts`` hosts joined by ``engine``."""
    names = [f"h{i}" for i in range(args.hosts)]
    with tempfile.TemporaryDirectory() as tmp, Network([*names, BROKER]) as net:
        directory = Path(tmp)
        key = keygen(directory / "cluster") if engine.engine == "mesh" else None
        peers = [f"{net.address(name)}:{BRIDGE_PORT}" for name in names]
        broker = engine.broker(net, directory / "broker")
        hosts = [
            Host(
                net,
                name,
                directory / name,
                peers,
                key,
                engine=engine.engine,
                redis=broker.address,
                redis_nodes=broker.nodes,
                workers=1,
                heartbeat_interval=args.heartbeat_interval,
                peer_timeout=args.peer_timeout,
            )
            for name in names
        ]
        try:
            started = time.monotonic()
            asyncio.run(_start(hosts, args.start_batch))
            converged = asyncio.run(_converged(hosts, names, 60 + 3 * args.hosts))
            results: dict[str, Any] = {
                "all_started_and_converged_s": round(converged - started, 2),
                "start_batch": args.start_batch,
            }
            results.update(asyncio.run(Phases(net, hosts, broker, args).run()))
            return results
        finally:
            # SIGTERM to all, then the waits: one host's drain does not wait for another's.
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(Host.stop, hosts))
            broker.stop()


async def _start(hosts: list[Host], batch: int) -> None:
    """Start the hosts ``batch`` at a time, each batch once its hosts' own views show
    them: 32 hosts booting at once (5 Python processes each) starve 2 cores so long that
    supervisors kill their workers as stuck in their first boot (measured; the service
    then stops, as it should)."""
    for first in range(0, len(hosts), batch):
        group = hosts[first : first + batch]
        for host in group:
            host.start()
        await asyncio.gather(*(_seen_at([host], host.name, True, 60) for host in group))


async def _converged(hosts: list[Host], names: list[str], limit: float) -> float:
    """Wait until every host sees all ``names`` under one view number; returns when."""
    deadline = time.monotonic() + limit
    views: list[tuple[str | None, list[str]]] = []
    while time.monotonic() < deadline:
        views = await asyncio.gather(*(asyncio.to_thread(host.view) for host in hosts))
        if len({v for v, _ in views}) == 1 and all(ids == sorted(names) for _, ids in views):
            return time.monotonic()
        await asyncio.sleep(0.1)
    seen = {host.name: len(ids) for host, (_, ids) in zip(hosts, views, strict=True)}
    fewest = min(hosts, key=lambda host: seen[host.name])
    try:
        health = json.dumps(fewest.health().get("cluster"))
    except (OSError, ValueError) as exc:
        health = f"unavailable: {exc}"
    raise RuntimeError(
        f"{len(hosts)} hosts did not converge within {limit:.0f} s: hosts each sees {seen},"
        f" {len({v for v, _ in views})} view numbers; {fewest.name}'s /health cluster:"
        f" {health}\nits log ends:\n{fewest.logs()[-3000:]}"
    )


# --- the report --------------------------------------------------------------------------


#: What a phase counted rather than measured: no ratio for these.
COUNTS = {"seconds", "window_s", "samples", "publications", "deliveries", "poll_sweep_s"}
COUNTS |= {"deliveries_to_survivors", "broker_commands_by_name", "broker_net_bytes"}


def _ratios(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """other / baseline for every figure both have (nested), where the baseline is not 0."""
    ratios: dict[str, Any] = {}
    for key, value in other.items():
        base = baseline.get(key)
        if key in COUNTS:
            continue
        if isinstance(value, dict) and isinstance(base, dict):
            inner = _ratios(base, value)
            if inner:
                ratios[key] = inner
        elif isinstance(value, int | float) and isinstance(base, int | float) and base:
            ratios[key] = round(value / base, 3)
    return ratios


#: The table's rows: a label and the figure's path in an engine's results.
ROWS = (
    ("idle CPU per host (ms/s)", "idle.cpu_ms_per_s_per_host"),
    ("of which bridge or hub (ms/s)", "idle.by_role_link"),
    ("idle CPU of the broker (ms/s)", "idle.broker_cpu_ms_per_s"),
    ("idle bytes sent per host (B/s)", "idle.bytes_per_s_per_host"),
    ("idle broker commands (per s)", "idle.broker_commands_per_s"),
    ("RSS per host, sum of its processes (MiB)", "idle.rss_mib_per_host"),
    ("subscribe reply p50 / p99 (ms)", "subscribe_reply_ms"),
    ("server CPU per cross-host delivery (µs)", "load.server_cpu_us_per_cross_host_delivery"),
    ("broker CPU per publication (µs)", "load.broker_cpu_us_per_publication"),
    ("bytes between hosts per publication", "load.bytes_between_hosts_per_publication"),
    ("broker commands per publication", "load.broker_commands_per_publication"),
    ("lost under load", "load.lost"),
    ("killed host gone from all views (s; x peer_timeout)", "host_killed"),
    (
        "survivors' extra CPU after the kill (ms per host)",
        "host_killed.survivors_excess_cpu_ms_per_host",
    ),
    ("lost by survivors across the kill", "host_killed.lost"),
    ("rejoined host seen by all after its own view (s; x heartbeat)", "host_joined"),
    ("start (batches) until every view agrees (s)", "all_started_and_converged_s"),
)


def _cell(results: dict[str, Any], path: str) -> str:
    """One engine's figure at ``path`` (a few paths combine two figures)."""
    if path == "idle.by_role_link":
        roles = results["idle"]["cpu_ms_per_s_per_host_by_role"]
        return str(roles.get("bridge", roles.get("hub", "—")))
    if path == "subscribe_reply_ms":
        return f"{results[path]['p50']} / {results[path]['p99']}"
    if path == "host_killed":
        killed = results[path]
        return f"{killed['seen_gone_by_all_s']} ({killed['seen_gone_by_all_over_peer_timeout']}x)"
    if path == "host_joined":
        joined = results[path]
        ratio = joined["seen_by_all_after_own_view_over_heartbeat"]
        return f"{joined['seen_by_all_after_own_view_s']} ({ratio}x)"
    value: Any = results
    for key in path.split("."):
        value = value[key]
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10000 else str(value)


def table(report: dict[str, Any]) -> str:
    """The results as the markdown table of docs/benchmarks.md, an engine per column."""
    names = list(report["engines"])
    hosts = report["settings"]["hosts"]
    lines = [f"| {hosts} hosts | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, path in ROWS:
        cells = [_cell(report["engines"][name], path) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16, help="hosts per engine (default 16)")
    parser.add_argument(
        "--engines",
        default=",".join(e.name for e in ENGINES),
        help=f"comma-separated, of {[e.name for e in ENGINES]}; the first is the baseline",
    )
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--window", type=float, default=10.0, help="load window, seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="publications per second")
    parser.add_argument("--subscribers", type=int, default=2, help="per host")
    parser.add_argument("--publishers", type=int, default=2, help="hosts that publish")
    parser.add_argument("--subscribes", type=int, default=10, help="fresh channels per host")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before idle")
    parser.add_argument(
        "--start-batch", type=int, default=4, help="hosts booting at once (default 4)"
    )
    parser.add_argument(
        "--after-kill", type=float, default=2.0, help="seconds measured past peer_timeout"
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=0.5,
        help="[cluster] heartbeat_interval, seconds",
    )
    parser.add_argument(
        "--peer-timeout", type=float, default=3.0, help="[cluster] peer_timeout, seconds"
    )
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/)")
    args = parser.parse_args()
    known = {engine.name: engine for engine in ENGINES}
    chosen = [name for name in args.engines.split(",") if name]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"--engines: unknown {unknown}; known: {sorted(known)}")
    if args.hosts < 2 or args.publishers >= args.hosts:
        parser.error("--hosts must be >= 2 and exceed --publishers (the last host is killed)")
    reason = netns_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    engines: dict[str, Any] = {}
    with neighbour_table(args.hosts):
        for name in chosen:
            print(f"{name}: {args.hosts} hosts ...", file=sys.stderr, flush=True)
            engines[name] = run_engine(known[name], args)
    baseline = engines[chosen[0]]
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "engines": engines,
        f"ratio_to_{chosen[0]}": {n: _ratios(baseline, engines[n]) for n in chosen[1:]},
    }
    text = json.dumps(report, indent=2)
    print(text)
    path = args.json or RESULTS / f"fleet-{args.hosts}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
