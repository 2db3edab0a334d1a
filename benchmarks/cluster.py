"""What the cluster hop costs: delivery to subscribers on another host against
subscribers on the publisher's own host, in one run on one two-host cluster.

    sudo python -m benchmarks.cluster                  # defaults below
    sudo python -m benchmarks.cluster --messages 20000 --repeat 3 --plaintext

Two hosts in network namespaces linked by veth pairs (``tests/netns.py``; root needed),
each a full ``shardws serve`` with 2 workers and a bridge (CurveZMQ unless
``--plaintext``). One publisher connection on host a. Two measures, each for subscribers
on host a ("local": the host bus only) and on host b ("remote": bus, bridge, network,
peer bridge, peer bus):

* latency: ``--pings`` publications one at a time, each waiting until the subscriber
  has it; median and p99 of publish-to-delivery. Remote minus local is what one cluster
  hop adds.
* throughput: ``--messages`` publications with up to ``--window`` unanswered, to
  ``--subscribers`` subscribers; deliveries per second until every subscriber had every
  publication (median over ``--repeat`` rounds), remote as a ratio of local.

A JSON file goes to ``benchmarks/results/``.
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

from clusterproc import BRIDGE_PORT, Host, keygen, wait_converged  # noqa: E402
from netns import Network, netns_unavailable  # noqa: E402
from wsclient import Client  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
UNLIMITED = """
[limits]
commands_per_second = 1000000.0
command_burst = 1000000
"""


async def _latency(publisher: Client, subscriber: Client, pings: int) -> list[float]:
    samples = []
    for n in range(pings):
        started = time.perf_counter()
        await publisher.send({"op": "publish", "channel": "lat", "data": n})
        while (await subscriber.next_push()).get("data") != n:
            pass
        samples.append(time.perf_counter() - started)
    return samples


async def _throughput(
    publisher: Client, subscribers: list[Client], channel: str, messages: int, window: int
) -> float:
    async def receive(sub: Client) -> None:
        for _ in range(messages):
            await sub.next_push(limit=60)

    started = time.perf_counter()
    receivers = [asyncio.create_task(receive(sub)) for sub in subscribers]
    sent = 0
    while sent < messages:
        burst = min(window, messages - sent)
        for n in range(sent, sent + burst):
            await publisher.send({"id": n + 1, "op": "publish", "channel": channel, "data": n})
        for _ in range(burst):
            await publisher.reply(None)
        sent += burst
    await asyncio.gather(*receivers)
    return messages * len(subscribers) / (time.perf_counter() - started)


async def _measure(hosts: dict[str, Host], args: argparse.Namespace) -> dict[str, Any]:
    publisher = await hosts["a"].client()
    results: dict[str, Any] = {}
    for where in ("local", "remote"):
        host = hosts["a" if where == "local" else "b"]
        subscriber = await host.client()
        assert (await subscriber.call("subscribe", channel="lat"))["ok"]

        samples = sorted(await _latency(publisher, subscriber, args.pings))
        await subscriber.close()
        channel = f"tp-{where}"
        subscribers = [await host.client() for _ in range(args.subscribers)]
        for sub in subscribers:
            assert (await sub.call("subscribe", channel=channel))["ok"]
        rates = []
        for _ in range(args.repeat):
            publisher.pushes.clear()
            rates.append(
                await _throughput(publisher, subscribers, channel, args.messages, args.window)
            )
        for sub in subscribers:
            await sub.close()
        results[where] = {
            "latency_median_us": round(statistics.median(samples) * 1e6, 1),
            "latency_p99_us": round(samples[int(len(samples) * 0.99) - 1] * 1e6, 1),
            "deliveries_per_second": round(statistics.median(rates)),
            "rounds": [round(rate) for rate in rates],
        }
    local, remote = results["local"], results["remote"]
    results["added_latency_per_hop_us"] = round(
        remote["latency_median_us"] - local["latency_median_us"], 1
    )
    results["remote_over_local_throughput"] = round(
        remote["deliveries_per_second"] / local["deliveries_per_second"], 3
    )
    await publisher.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
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
            results = asyncio.run(_measure(hosts, args))
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
