"""A real three-host cluster on one machine: network namespaces linked by veth pairs
through a switch namespace, each host a full ``shardws serve`` with 2 workers, an admin
and a bridge, linked by CurveZMQ. Needs root (``ip netns``); skipped with the reason
elsewhere, failed under CI (``tests/external.py``). The hosts list every host in
``peers``, their own address included (as a DNS name listing all hosts would), so that
case is exercised too.

Every test of the cluster runs once per engine (``ENGINES``): on the Redis hub the three
hosts join through a ``redis-server`` in a fourth namespace (``r``). What is the mesh's
own (its key, its peer list, history numbered on both sides of a partition) is marked
``engines("mesh")``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterproc import (
    BRIDGE_PORT,
    INGRESS_PORT,
    REDIS_PORT,
    Host,
    keygen,
    redis_in,
    wait_converged,
)
from netns import Network
from serverproc import terminate
from toolkit import ENGINES, run, wait_until
from wsclient import Client

from shardws import Publisher

pytestmark = pytest.mark.needs("netns")

ENGINES = ENGINES  # the cluster's tests run once per engine (conftest.py)

NAMES = ["a", "b", "c"]


class Cluster:
    def __init__(self, net: Network, tmp: Path, engine: str = "mesh") -> None:
        self.net = net
        self.tmp = tmp
        self.key = keygen(tmp / "cluster")
        self.peers = [f"{net.address(name)}:{BRIDGE_PORT}" for name in NAMES]
        redis = f"{net.address('r')}:{REDIS_PORT}"
        self.hosts = {
            name: Host(net, name, tmp / name, self.peers, self.key, engine=engine, redis=redis)
            for name in NAMES
        }

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def all(self) -> list[Host]:
        return list(self.hosts.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Cluster]:
    with Network([*NAMES, "d", "r"]) as net:
        tmp = tmp_path_factory.mktemp(f"cluster-{engine}")
        nodes = Cluster(net, tmp, engine)
        redis = redis_in(net, "r", tmp / "redis") if engine == "redis" else None
        try:
            for host in nodes.all():
                host.start()
            wait_converged(nodes.all(), NAMES, limit=30)
            yield nodes
        finally:
            for host in nodes.all():
                host.stop()
            if redis is not None:
                terminate(redis)


async def _subscribe(clients: list[Client], channel: str) -> None:
    for client in clients:
        reply = await client.call("subscribe", channel=channel)
        assert reply.get("ok"), reply


async def _quiet(client: Client) -> None:
    reply = await client.call("ping")
    assert reply["ok"] and not client.pushes, client.pushes


def test_every_subscriber_on_every_host_gets_each_publication_once(cluster: Cluster) -> None:
    count = 200

    async def scenario() -> None:
        subscribers = [await host.client() for host in cluster.all() for _ in range(3)]
        await _subscribe(subscribers, "news")
        publisher = await cluster["a"].client()

        async def publish(data: Any) -> None:
            assert (await publisher.call("publish", channel="news", data=data))["ok"]

        # Two publishers on two hosts, interleaved: a client on a, the HTTP API of b.
        for n in range(count):
            await publish({"from": "a", "n": n})
            if n % 20 == 0:
                body = [{"from": "b", "n": m} for m in range(n, n + 20)]
                for data in body:
                    await asyncio.to_thread(
                        cluster["b"].api, "/api/publish", {"channel": "news", "data": data}
                    )
        for sub in subscribers:
            seen: dict[str, list[int]] = {"a": [], "b": []}
            for _ in range(2 * count):
                push = await sub.next_push()
                assert push["channel"] == "news"
                seen[push["data"]["from"]].append(push["data"]["n"])
            assert seen == {"a": list(range(count)), "b": list(range(count))}
            with pytest.raises(TimeoutError):  # and nothing more: exactly once
                await sub.next_push(limit=0.3)
        for client in [*subscribers, publisher]:
            await client.close()

    run(scenario())


def test_publication_right_after_a_subscribe_reply_arrives_from_every_host(
    cluster: Cluster,
) -> None:
    """A subscribe reply means live on every host (the bridges relay the bus barrier)."""

    async def scenario() -> None:
        subscriber = await cluster["b"].client()
        publishers = [await cluster[name].client() for name in ("a", "c")]
        for round_ in range(20):
            channel = f"fresh-{round_}"
            assert (await subscriber.call("subscribe", channel=channel))["ok"]
            for pub in publishers:
                assert (await pub.call("publish", channel=channel, data=round_))["ok"]
            for _ in publishers:
                push = await subscriber.next_push()
                assert (push["channel"], push["data"]) == (channel, round_)
        for client in [subscriber, *publishers]:
            await client.close()

    run(scenario())


def test_no_traffic_for_a_channel_reaches_a_host_without_subscribers(cluster: Cluster) -> None:
    def received_from_a(name: str) -> int:
        peers = cluster[name].health()["cluster"]["peers"]
        return int(peers["a"]["messages_received"])

    async def scenario() -> None:
        subscribers = [await cluster[name].client() for name in ("a", "b")]
        await _subscribe(subscribers, "quiet")
        publisher = await cluster["a"].client()

        async def publish(data: Any) -> None:
            assert (await publisher.call("publish", channel="quiet", data=data))["ok"]

        before = {name: received_from_a(name) for name in ("b", "c")}
        for n in range(300):
            await publish(n)
        for sub in subscribers:
            for n in range(300):
                assert (await sub.next_push())["data"] == n
        await asyncio.sleep(1)  # the bridges publish their counters every heartbeat
        after = {name: received_from_a(name) for name in ("b", "c")}
        assert after["b"] - before["b"] >= 1  # batched: one bus frame may carry many
        assert after["c"] == before["c"], "traffic for a channel reached a host without subscribers"
        status, metrics = cluster.net.http_get("b", cluster["b"].address, 9765, "/metrics")
        text = metrics.decode()
        assert status == 200 and 'shardws_cluster_peer_up{peer="a"} 1.0' in text, text
        assert "shardws_cluster_hosts 3.0" in text
        assert 'shardws_cluster_peer_messages_received_total{peer="a"}' in text
        for client in [*subscribers, publisher]:
            await client.close()

    run(scenario())


def test_user_messages_and_disconnect_reach_every_host(cluster: Cluster) -> None:
    async def scenario() -> None:
        alice = [await host.client("alice") for host in cluster.all()]
        bob = [await host.client("bob") for host in cluster.all()]
        # The connected push means the user's topic is live on every host: no retries.
        await asyncio.to_thread(cluster["c"].api, "/api/publish", {"user": "alice", "data": "x"})
        for client in alice:
            assert await client.next_push() == {"type": "pub", "user": "alice", "data": "x"}
        # And from a backend's shardws.Publisher (ZeroMQ ingress of host b; its zmq I/O
        # thread is created inside b's namespace).
        b = cluster["b"]
        publisher = cluster.net.call_in(
            "b", lambda: Publisher(f"tcp://{b.address}:{INGRESS_PORT}", linger=2)
        )
        try:
            publisher.publish_user("alice", "from a backend")
            for client in alice:
                assert (await client.next_push())["data"] == "from a backend"
        finally:
            publisher.close()
        for client in bob:
            await _quiet(client)
        await asyncio.to_thread(cluster["b"].api, "/api/disconnect", {"user": "alice"})
        for client in alice:
            with pytest.raises(Exception) as closed:
                while True:
                    await client.recv(limit=5)
            assert closed.value.rcvd.code == 4009, closed.value  # type: ignore[attr-defined]
        for client in bob:
            await _quiet(client)
            await client.close()

    run(scenario())


def test_history_channel_has_one_order_and_one_numbering_across_hosts(cluster: Cluster) -> None:
    async def scenario() -> None:
        subscribers = [await host.client() for host in cluster.all()]
        await _subscribe(subscribers, "hist:room")
        publishers = [await host.client() for host in cluster.all()]
        for n in range(30):
            for i, pub in enumerate(publishers):
                reply = await pub.call("publish", channel="hist:room", data={"p": i, "n": n})
                assert reply["ok"], reply
        numbering = []
        for sub in subscribers:
            pushes = [await sub.next_push() for _ in range(90)]
            numbering.append([(p["epoch"], p["offset"], p["data"]["p"]) for p in pushes])
            offsets = [p["offset"] for p in pushes]
            assert offsets == sorted(offsets) and len(set(offsets)) == 90
        assert numbering[0] == numbering[1] == numbering[2]
        # Presence of the channel, asked on one host, lists the subscribers of all three.
        presence = await asyncio.to_thread(cluster["b"].get, "/api/presence?channel=hist:room")
        assert presence["complete"] and presence["clients"] == 3, presence
        for client in subscribers + publishers:
            await client.close()

    run(scenario())


@pytest.mark.engines("mesh")  # the mesh's own CurveZMQ key
def test_a_bridge_without_the_cluster_key_is_refused(cluster: Cluster) -> None:
    other_key = keygen(cluster.tmp / "intruder")
    intruder = Host(cluster.net, "d", cluster.tmp / "d", cluster.peers, other_key).start()
    try:
        wait_converged([intruder], ["d"])

        async def scenario() -> None:
            spy = await intruder.client()
            await _subscribe([spy], "news")
            victim = await cluster["a"].client()
            await _subscribe([victim], "news")
            for n in range(20):
                assert (await victim.call("publish", channel="news", data=n))["ok"]
                await asyncio.sleep(0.1)
            await _quiet(spy)  # nothing crossed into the intruder
            assert (await spy.call("publish", channel="news", data="injected"))["ok"]
            spy.pushes.clear()  # its own publication, delivered locally
            await asyncio.sleep(1)
            for n in range(20):
                push = await victim.next_push()
                assert push.get("data") == n, push
            await _quiet(victim)  # nothing crossed out of it
            await spy.close()
            await victim.close()

        run(scenario())
        # The intruder's view is itself; the cluster's views never include it, and the
        # refused handshakes are counted on both sides.
        assert intruder.view()[1] == ["d"]
        wait_converged(cluster.all(), NAMES)
        assert intruder.health()["cluster"]["handshake_failures"] > 0
        assert cluster["a"].health()["cluster"]["handshake_failures"] > 0
    finally:
        intruder.stop()


def test_killed_bridge_is_restarted_and_the_host_rejoins(cluster: Cluster) -> None:
    b = cluster["b"]
    old = b.health()["cluster"]["bridge_pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: _new_bridge(b, old), 20, 0.1, "the bridge was not restarted")
    wait_converged(cluster.all(), NAMES)
    _deliver_everywhere(cluster, "after-bridge-restart")


def test_a_restarted_bridge_never_sees_its_host_alone(cluster: Cluster) -> None:
    """A new bridge takes over the peers of the view its predecessor wrote: killed (or
    replaced by a reload), it never writes a view of its own host alone, which would make
    the host's workers elect owners here for the other hosts' history channels (new
    epochs, the history split as in a partition). Found by the soak (benchmarks/soak.py)."""
    b = cluster["b"]
    alone = re.compile(r"membership view [0-9a-f]{8}: \['b'\]")
    wait_converged(cluster.all(), NAMES)
    before = len(alone.findall(b.logs()))
    for _ in range(3):
        old = b.health()["cluster"]["bridge_pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda old=old: _new_bridge(b, old), 20, 0.1, "the bridge was not restarted")
        wait_converged(cluster.all(), NAMES)
    assert len(alone.findall(b.logs())) == before, b.logs()[-3000:]
    _deliver_everywhere(cluster, "after-bridge-restarts")


def _new_bridge(host: Host, old_pid: int) -> bool:
    """True once ``host`` runs a ready bridge process other than ``old_pid``."""
    health = host.health()["cluster"]
    return bool(health["bridge_alive"]) and health["bridge_pid"] not in (old_pid, 0)


def test_reload_replaces_the_bridge_and_refuses_a_new_host_id(cluster: Cluster) -> None:
    c = cluster["c"]
    assert c.proc is not None
    original = c.config_path.read_text()
    before = c.health()["cluster"]["bridge_pid"]
    try:
        c.config_path.write_text(original.replace('host_id = "c"', 'host_id = "c2"'))
        c.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "[cluster] host_id cannot change" in c.logs(), 20, 0.1, "reload not refused"
        )
        assert c.health()["cluster"]["bridge_pid"] == before
        c.config_path.write_text(original.replace("peer_timeout = 1.5", "peer_timeout = 2.0"))
        c.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: _new_bridge(c, before), 20, 0.1, "the bridge was not replaced by the reload"
        )
        wait_converged(cluster.all(), NAMES)
        _deliver_everywhere(cluster, "after-reload")
    finally:
        c.config_path.write_text(original)


def test_killed_host_rejoins_and_a_partition_heals(cluster: Cluster) -> None:
    c = cluster["c"]
    c.kill()
    wait_converged([cluster["a"], cluster["b"]], ["a", "b"])
    c.start()
    wait_converged(cluster.all(), NAMES, limit=30)
    _deliver_everywhere(cluster, "after-restart")

    cluster.net.link_down("c")
    try:
        wait_converged([cluster["a"], cluster["b"]], ["a", "b"])
        wait_converged([c], ["c"])
    finally:
        cluster.net.link_up("c")
    wait_converged(cluster.all(), NAMES, limit=30)
    _deliver_everywhere(cluster, "after-partition")


def _deliver_everywhere(cluster: Cluster, channel: str) -> None:
    async def scenario() -> None:
        subscribers = [await host.client() for host in cluster.all()]
        await _subscribe(subscribers, channel)
        publisher = await cluster["c"].client()
        assert (await publisher.call("publish", channel=channel, data="live"))["ok"]
        for sub in subscribers:
            assert (await sub.next_push())["data"] == "live"
        for client in [*subscribers, publisher]:
            await client.close()

    run(scenario())


def test_peers_named_by_dns_are_resolved_again(tmp_path: Path) -> None:
    """``peers = ["NAME:PORT"]`` with NAME listing the hosts (a headless Service): a host
    added to the name later is connected to without restarting anyone."""
    with Network(NAMES) as net:
        addresses = [net.address(name) for name in NAMES]
        for name in NAMES:  # c is not listed yet
            net.set_hosts(name, {"shardws-peers": addresses[:2]})
        key = keygen(tmp_path / "cluster")
        peers = [f"shardws-peers:{BRIDGE_PORT}"]
        hosts = [Host(net, name, tmp_path / name, peers, key) for name in NAMES]
        try:
            for host in hosts:
                host.start()
            # a and b list each other; c reaches them but they do not reach c yet.
            wait_converged(hosts[:2], ["a", "b"], limit=30)
            for name in NAMES:
                net.set_hosts(name, {"shardws-peers": addresses})
            wait_converged(hosts, NAMES)
        finally:
            for host in hosts:
                host.stop()


# The mesh's own: on the hub a host cut from Redis cannot publish to a history channel at
# all (Redis decides: 108, "retry"), so there is one numbering and nothing to heal.
@pytest.mark.engines("mesh")
def test_a_partition_never_leaves_a_silent_gap_in_a_history_channel(cluster: Cluster) -> None:
    """Both sides of a partition number the channel on their own; after the heal every
    subscriber's stream has no hole within an epoch (it may see an epoch change, get
    missed publications repaired, see one again with the same offset, or be closed with
    4505 to recover), and the publication made after the heal reaches it."""
    channel = "hist:split"
    net = cluster.net

    async def publish(client: Client, data: str) -> None:
        for _ in range(20):  # owners move while the views change: retry a refused one
            reply = await client.call("publish", channel=channel, data=data)
            if reply.get("ok"):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"publish {data!r} refused: {reply}")

    async def scenario() -> None:
        watchers = {name: await cluster[name].client() for name in NAMES}
        await _subscribe(list(watchers.values()), channel)
        side_a, side_c = await cluster["a"].client(), await cluster["c"].client()
        await publish(side_a, "before")
        await asyncio.to_thread(net.link_down, "c")
        try:
            await asyncio.to_thread(wait_converged, [cluster["a"], cluster["b"]], ["a", "b"])
            await asyncio.to_thread(wait_converged, [cluster["c"]], ["c"])
            await publish(side_a, "side-a")
            await publish(side_c, "side-c")
        finally:
            await asyncio.to_thread(net.link_up, "c")
        await asyncio.to_thread(wait_converged, cluster.all(), NAMES, 30)
        await asyncio.sleep(1)  # rings move to the joined view's owners
        await publish(side_a, "after")
        for name, watcher in watchers.items():
            seen: dict[str, dict[int, Any]] = {}
            closed = None
            try:
                while True:
                    push = await watcher.next_push(limit=10)
                    by_offset = seen.setdefault(push["epoch"], {})
                    assert by_offset.get(push["offset"], push["data"]) == push["data"], push
                    by_offset[push["offset"]] = push["data"]
                    if push["data"] == "after":
                        break
            except Exception as exc:  # closed by the server to recover on its own
                closed = getattr(getattr(exc, "rcvd", None), "code", None)
                assert closed == 4505, (name, exc)
            for epoch, by_offset in seen.items():
                offsets = sorted(by_offset)
                assert offsets == list(range(offsets[0], offsets[-1] + 1)), (name, epoch, seen)
            if closed is None:
                assert any("after" in by_offset.values() for by_offset in seen.values())
        for client in [*watchers.values(), side_a, side_c]:
            await client.close()

    run(scenario(), limit=120)
