"""The Redis hub on a Redis Cluster (``[cluster.redis] cluster_nodes``), with real
servers: a cluster of three masters with a replica each (``redisproc.RedisClusterServer``)
and two loopback hosts joined through it, shared by the module's tests (the last one
kills a master).

A publication reaches only the master that serves its channel's slot (counted from the
masters' own ``INFO commandstats`` and ``PUBSUB SHARDNUMSUB``); a live channel's slot
moved to another master under a stream, and its master killed under a stream and its
replica promoted: the subscriptions come back by themselves and every loss is counted
(``test_redishub._stream_through_a_fault``, as for one Redis); a history channel's master
killed after its replica lagged for real: a new epoch, never an offset reused
(``test_redishistory``'s witnesses). The guarantees that hold on
every engine run on the cluster too: ``tests/test_hosts.py``'s ``[redis-cluster]`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from redisproc import EngineRun, RedisClusterServer, RedisServer, client
from serverproc import ServerProcess, loopback_cluster
from test_redishistory import _hub, _lossy, _start, _stop, _witness
from test_redishub import EXTRA, _stream_through_a_fault, cluster_health, wait_joined
from toolkit import run, wait_until
from wsclient import Client

from shardws.pure.redisslots import key_slot

pytestmark = pytest.mark.needs("redis-server", "redis-cli")

Hosts = tuple[ServerProcess, ServerProcess]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start() as started:
        yield started


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, cluster: RedisClusterServer) -> Iterator[Hosts]:
    engine = EngineRun("redis", cluster_nodes=tuple(cluster.seeds))
    history = "[namespaces.default]\n[namespaces.hist]\nhistory_size = 100\n"
    a, b = loopback_cluster(tmp_path_factory.mktemp("hosts"), EXTRA + history, engine=engine)
    try:
        a.start()
        b.start()
        wait_joined((a, b))
        yield a, b
    finally:
        a.stop()
        b.stop()


def prefix_of(host: ServerProcess) -> str:
    found = re.search(r'^prefix = "([^"]*)"', host.config_path.read_text(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def replicated(cluster: RedisClusterServer) -> set[int]:
    """The ports of the masters that have no replica now (to avoid)."""
    alone = set()
    for master in cluster.masters_now():
        try:
            cluster.replica_of(master)
        except AssertionError:
            alone.add(master.port)
    return alone


def channel_on(cluster: RedisClusterServer, avoid: set[int], stem: str) -> str:
    """A channel name whose slot's master is none of the ports in ``avoid``."""
    for index in range(1000):
        name = f"{stem}-{index}"
        if cluster.owner_of_slot(key_slot(name.encode())).port not in avoid:
            return name
    raise AssertionError("no such channel")


def with_a_replica(
    cluster: RedisClusterServer, stem: str
) -> tuple[str, int, RedisServer, RedisServer]:
    """A channel whose master has a replica in sync: (channel, slot, master, replica)."""
    channel = channel_on(cluster, replicated(cluster), stem)
    slot = key_slot(channel.encode())
    master = cluster.owner_of_slot(slot)
    replica = cluster.replica_of(master)
    wait_until(
        lambda: b"master_link_status:up" in replica.command("INFO", "replication"),
        30,
        0.1,
        "the replica never synced",
    )
    return channel, slot, master, replica


def history_hosts(tmp_path: Path, cluster: RedisClusterServer) -> Hosts:
    """Two hosts as ``test_redishistory``'s (a history namespace, short timeouts)
    through ``cluster``, not started."""
    seeds = ", ".join(f'"{seed}"' for seed in cluster.seeds)
    a, b = loopback_cluster(tmp_path, _hub(f"cluster_nodes = [{seeds}]"), engine="redis")
    return a, b


def commands(node: RedisServer) -> dict[str, int]:
    """Calls per command on ``node`` since its last ``CONFIG RESETSTAT``."""
    stats = client(node).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def test_a_publication_reaches_only_the_shard_that_owns_its_channel(
    cluster: RedisClusterServer, hosts: Hosts
) -> None:
    a, b = hosts
    prefix = prefix_of(a)
    heartbeats = cluster.owner(prefix + "m{}")  # every hub's heartbeats: one master
    channel = channel_on(cluster, {heartbeats.port}, "only")
    owner = cluster.owner("{" + channel + "}")
    masters = cluster.masters_now()
    third = next(m for m in masters if m not in (owner, heartbeats))
    for master in masters:
        client(master).config_resetstat()
    count = 50
    redis_channel = prefix + "c{" + channel + "}"

    async def fan_out() -> None:
        far = await Client.connect(b.url)  # its host subscribes the channel on its master
        assert (await far.call("subscribe", channel=channel))["ok"]
        # Host b subscribes it on the channel's master alone.
        subscribed = {
            m.port: client(m).execute_command("PUBSUB", "SHARDNUMSUB", redis_channel)[1]
            for m in masters
        }
        assert subscribed == {m.port: int(m is owner) for m in masters}, subscribed
        publisher = await Client.connect(a.url)
        for index in range(count):
            assert (await publisher.call("publish", channel=channel, data=index))["ok"]
        assert [(await far.next_push())["data"] for _ in range(count)] == list(range(count))
        await far.close()
        await publisher.close()

    run(fan_out(), 60)
    calls = {master.port: commands(master) for master in masters}
    # The channel's master took its frames (a frame carries a loop iteration's
    # publications: at most one SPUBLISH per publication), the third master none.
    assert 1 <= calls[owner.port].get("spublish", 0) <= count, calls
    assert calls[third.port].get("spublish", 0) == 0, calls
    assert all("publish" not in each for each in calls.values()), calls  # never PUBLISH


def test_a_history_channel_is_decided_on_its_slots_master(
    cluster: RedisClusterServer, hosts: Hosts
) -> None:
    """History on a cluster (``server.redishistory``): each publication is one script on
    the master serving the channel's slot, which ``SPUBLISH``es it to its shard channel;
    both hosts see one numbering, and a late subscriber recovers from that master."""
    a, b = hosts
    channel = "hist:" + channel_on(cluster, set(), "numbered")
    owner = cluster.owner("{" + channel + "}")
    for master in cluster.masters_now():
        client(master).config_resetstat()
    count = 20

    async def numbered() -> None:
        far = await Client.connect(b.url)
        reply = await far.call("subscribe", channel=channel)
        assert reply["ok"] and reply["offset"] == 0, reply
        publisher = await Client.connect(a.url)
        for index in range(count):
            answer = await publisher.call("publish", channel=channel, data=index, idem=f"n{index}")
            assert answer["ok"] and answer["offset"] == index + 1, answer
        pushes = [await far.next_push() for _ in range(count)]
        assert [(p["offset"], p["data"]) for p in pushes] == [(n + 1, n) for n in range(count)]
        late = await Client.connect(a.url)
        recover = {"epoch": reply["epoch"], "offset": 5}
        again = await late.call("subscribe", channel=channel, recover=recover)
        assert again["recovered"] is True and again["epoch"] == reply["epoch"], again
        assert [(await late.next_push())["data"] for _ in range(count - 5)] == list(range(5, count))
        for each in (far, publisher, late):
            await each.close()

    run(numbered(), 60)
    calls = commands(owner)
    assert calls.get("evalsha", 0) >= count and calls.get("spublish", 0) >= count, calls


def test_resharding_a_live_channel_under_a_stream(
    cluster: RedisClusterServer, hosts: Hosts
) -> None:
    """The channel's slot moves to another master mid-stream: the old master drops the
    hubs' shard subscriptions, the hubs read the slot map again and subscribe on the new
    master; what was published meanwhile arrives or is counted."""
    a, b = hosts
    prefix = prefix_of(a)
    channel = channel_on(cluster, set(), "moving")
    slot = key_slot(channel.encode())
    source = cluster.owner_of_slot(slot)
    target = next(m for m in cluster.masters_now() if m is not source)
    redis_channel = prefix + "c{" + channel + "}"
    before = sum(cluster_health(h)["redis_cluster"]["redirects"] for h in hosts)

    def moved() -> None:
        cluster.move_slot(slot, target)

    def subscribed_on_target() -> None:
        def both() -> bool:
            reply = client(target).execute_command("PUBSUB", "SHARDNUMSUB", redis_channel)
            return int(reply[1]) == 2  # host a (its near subscriber) and host b

        wait_until(both, 30, 0.1, "the hubs never subscribed on the slot's new master")

    run(
        _stream_through_a_fault(a, b, moved, subscribed_on_target, channel=channel, lossy=False),
        120,
    )
    assert cluster.owner_of_slot(slot) is target
    assert sum(cluster_health(h)["redis_cluster"]["redirects"] for h in hosts) > before


def test_a_master_failover_under_a_stream(cluster: RedisClusterServer, hosts: Hosts) -> None:
    """The master of the channel's slot is killed mid-stream; the cluster promotes its
    replica; the hubs move there by themselves. Publications sent to the dead master
    are counted lost (``messages_lost``), those it never passed on by the receivers
    (``bus_lost``)."""
    a, b = hosts
    channel, slot, master, replica = with_a_replica(cluster, "failing")

    def promoted() -> None:
        wait_until(lambda: cluster.owner_of_slot(slot) is replica, 30, 0.1, "no failover")
        wait_until(cluster.ready, 30, 0.1, lambda: f"the cluster is not ok: {cluster.info()}")

    run(_stream_through_a_fault(a, b, master.kill, promoted, channel=channel), 120)
    shards = cluster_health(a)["redis_cluster"]["shards"]
    assert master.address not in shards, shards  # let go: it serves no slot


def test_a_failover_to_a_lagging_replica_starts_a_new_epoch(
    tmp_path: Path, cluster: RedisClusterServer
) -> None:
    """History on Redis Cluster (``test_redishistory``'s witnesses: a stream through both
    hosts, recorders on both): the channel's replica is stopped (SIGSTOP) while its
    master takes publications, the master is killed, the replica resumes and the cluster
    promotes it without what it missed: a new epoch, every recovery across it
    ``recovered: false`` with a reason, never one (epoch, offset) for two data."""
    channel, slot, master, replica = with_a_replica(cluster, "hist:lagging")
    pair = history_hosts(tmp_path, cluster)

    def promote() -> None:  # 50 publications after the replica stopped
        master.kill()
        replica.resume()

        def promoted() -> bool:
            return cluster.owner_of_slot(slot, asked=replica) is replica

        try:
            wait_until(promoted, 10, 0.1, "not promoted by itself")
        except AssertionError:  # it was cut off for long: take over (its own vote)
            client(replica).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            wait_until(promoted, 20, 0.1, "no failover")

    try:
        _start(pair)
        stream, recorders = run(_witness(pair, channel, replica.pause, promote), 120)
        _lossy(stream, recorders)
    finally:
        _stop(pair)


def test_resharding_a_history_channel_under_a_stream(
    tmp_path: Path, cluster: RedisClusterServer
) -> None:
    """The slot of a history channel moves, keys and all (``MIGRATE``), mid-stream: the
    scripts answered ``ASK``/``TRYAGAIN``/``MOVED`` meanwhile are sent again after the
    slot map is read again (or fail: the publisher retries with its ``idem``). The
    channel's keys now live on a server that did not write them, and these servers are
    not durable: a new epoch (the epoch rule), never one (epoch, offset) for two data,
    every recovery across it ``recovered: false`` with a reason."""
    channel = channel_on(cluster, set(), "hist:moving")
    slot = key_slot(channel.encode())
    source = cluster.owner_of_slot(slot)
    target = next(m for m in cluster.masters_now() if m is not source)
    pair = history_hosts(tmp_path, cluster)
    try:
        _start(pair)
        stream, recorders = run(
            _witness(pair, channel, lambda: cluster.move_slot(slot, target)), 120
        )
        _lossy(stream, recorders)
        assert cluster.owner_of_slot(slot) is target
    finally:
        _stop(pair)
