"""What the cluster hop costs: delivery to subscribers on another host against
subscribers on the publisher's own host, in one run on one two-host cluster.

    sudo python -m benchmarks.cluster                  # defaults below
    sudo python -m benchmarks.cluster --pings 2000 --repeat 4 --plaintext

Two hosts in network namespaces linked by veth pairs (``tests/netns.py``; root needed),
each a full ``shardws serve`` with 2 workers and a bridge (CurveZMQ unless
``--plaintext``). One publisher connection on host a. Two measures, each for subscribers
on host a ("local": the host bus only) and on host b ("remote": bus, bridge, network,
peer bridge, peer bus):

* latency: ``--pings`` publications one at a time, each waiting until the subscriber
  has it; median and p99 of publish-to-delivery, local and remote blocks alternating.
  The local subscriber sits on the publisher's other worker, so both paths include the
  host bus; remote minus local is what the cluster hop (bridge, network, bridge) adds.
* throughput: ``shardws bench --scenario fanout`` run inside host a's namespace for
  ``--duration`` seconds (flat out, one publisher on host a, ``--subscribers``
  subscribers on host a or on host b, 2 client processes); deliveries per second and
  delivery latency under that load (median over ``--repeat`` rounds, local and remote
  alternating), remote as a ratio of local. The load generator shares the machine's
  cores with both hosts, so the absolute numbers are the whole machine's, not one
  host's capacity.

A JSON file goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterproc import BRIDGE_PORT, WS_PORT, Host, keygen, wait_converged  # noqa: E402
from netns import Network, netns_unavailable  # noqa: E402
from wsclient import Client  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
UNLIMITED = """
[limits]
commands_per_second = 1000000.0
command_burst = 1000000
"""


async def _latency(publisher: Client, subscriber: Client, channel: str, pings: int) -> list[float]:
    samples = []
    for n in range(pings):
        started = time.perf_counter()
        await publisher.send({"op": "publish", "channel": channel, "data": n})
        while (await subscriber.next_push()).get("data") != n:
            pass
        samples.append(time.perf_counter() - started)
    return samples


def _fanout(net: Network, url: str, publisher_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``shardws bench`` fanout round from host a: subscribers on ``url``, the
    publisher on ``publisher_url`` (subscriber k uses urls[k], the publisher the last)."""
    urls = [url] * args.subscribers + [publisher_url]
    command = [sys.executable, "-m", "shardws", "bench", "--scenario", "fanout"]
    for each in urls:
        command += ["--url", each]
    command += ["-n", str(args.subscribers), "--publishers", "1", "--processes", "2"]
    command += ["--duration", str(args.duration), "--json", "--no-progress"]
    bench = net.popen("a", command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bench.communicate(timeout=args.duration + 120)
    if bench.returncode not in (0, 1):  # 1: a report that lists problems (kept in it)
        raise RuntimeError(f"shardws bench failed: {err.decode()[-2000:]}")
    return dict(json.loads(out))


async def _measure(
    net: Network, hosts: dict[str, Host], args: argparse.Namespace
) -> dict[str, Any]:
    # Local and remote rounds alternate, so both see the same machine noise.
    places = {"local": hosts["a"], "remote": hosts["b"]}
    publisher = await hosts["a"].client()
    subscribers = {where: await host.client() for where, host in places.items()}
    # The local subscriber on the publisher's other worker: its path has the host bus
    # hop (as every remote path does), not a delivery inside the publisher's worker.
    for _ in range(50):
        if subscribers["local"].worker != publisher.worker:
            break
        await subscribers["local"].close()
        subscribers["local"] = await places["local"].client()
    assert subscribers["local"].worker != publisher.worker, "no connection on the other worker"
    for where, subscriber in subscribers.items():
        assert (await subscriber.call("subscribe", channel=f"lat-{where}"))["ok"]
    samples: dict[str, list[float]] = {where: [] for where in places}
    blocks = 10
    for block in range(blocks):
        for where in sorted(places, reverse=block % 2 == 1):
            samples[where] += await _latency(
                publisher, subscribers[where], f"lat-{where}", args.pings // blocks
            )
    for client in [publisher, *subscribers.values()]:
        await client.close()
    publisher_url = f"ws://{hosts['a'].address}:{WS_PORT}/ws"
    rounds: dict[str, list[dict[str, Any]]] = {where: [] for where in places}
    for repeat in range(args.repeat):
        for where in sorted(places, reverse=repeat % 2 == 1):
            url = f"ws://{places[where].address}:{WS_PORT}/ws"
            rounds[where].append(await asyncio.to_thread(_fanout, net, url, publisher_url, args))
    results: dict[str, Any] = {}
    for where in places:
        ordered = sorted(samples[where])
        rates = [r["deliveries_per_s"] for r in rounds[where]]
        median_round = rounds[where][rates.index(sorted(rates)[len(rates) // 2])]
        results[where] = {
            "latency_median_us": round(statistics.median(ordered) * 1e6, 1),
            "latency_p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
            "deliveries_per_second": round(statistics.median(rates)),
            "rounds": rates,
            "loaded_latency_ms": median_round["latency_ms"],
            "lost": [r["lost"] for r in rounds[where]],
            "problems": [p for r in rounds[where] for p in r.get("problems", [])],
        }
    local, remote = results["local"], results["remote"]
    results["added_latency_per_hop_us"] = round(
        remote["latency_median_us"] - local["latency_median_us"], 1
    )
    results["remote_over_local_throughput"] = round(
        remote["deliveries_per_second"] / local["deliveries_per_second"], 3
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=500, help="round trips per round")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of fan-out")
    parser.add_argument("--subscribers", type=int, default=100, help="per host")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians shown)")
    parser.add_argument("--plaintext", action="store_true", help="no CurveZMQ on the link")
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, Network(["a", "b"]) as net:
        key = None if args.plaintext else keygen(Path(tmp) / "cluster")
        peers = [f"{net.address(name)}:{BRIDGE_PORT}" for name in ("a", "b")]
        hosts = {
            name: Host(net, name, Path(tmp) / name, peers, key, extra=UNLIMITED)
            for name in ("a", "b")
        }
        try:
            for host in hosts.values():
                host.start()
            wait_converged(list(hosts.values()), ["a", "b"], limit=30)
            results = asyncio.run(_measure(net, hosts, args))
        finally:
            for host in hosts.values():
                host.stop()
    results["settings"] = {**vars(args), "link": "plaintext" if args.plaintext else "curve"}
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    name = "cluster-plaintext.json" if args.plaintext else "cluster.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
