"""The Redis hub's faults, with the real servers: two loopback hosts joined through a
``redis-server`` of the test's own, killed and restarted under a stream.

While Redis is down every subscribe answers 108 and every authenticated greeting is
closed with 4506 (both retried by clients), delivery inside a host goes on, and each
publication that could not cross is counted (the publishing hub's ``messages_lost``, the
receiving workers' ``bus_lost``); when Redis is back the hubs reconnect, subscribe
everything again and the streams resume without the clients doing anything. The
same under a Sentinel failover (the master killed, its replica promoted). The guarantees
that hold on both engines are ``tests/test_hosts.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redisproc import EngineRun, RedisServer, SentinelServer, documented_acl_rule
from serverproc import ServerProcess, free_port, loopback_cluster
from toolkit import run, wait_until
from wsclient import Client

from benchmarks.tlscert import self_signed
from shardws.pure.auth import make_token

SECRET = "s3cret-for-tests-only-0123456789abcdef"
EXTRA = f"""
[auth]
anonymous = true
secret = "{SECRET}"
"""


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis").start() as server:
        yield server


def cluster_health(host: ServerProcess) -> dict[str, Any]:
    return dict(host.health()[1]["cluster"])


def wait_joined(hosts: tuple[ServerProcess, ServerProcess], limit: float = 30) -> None:
    """Until both hubs are connected to Redis and each view holds both hosts."""

    def joined() -> bool:
        states = [cluster_health(host) for host in hosts]
        return all(s["redis_up"] and sorted(s.get("hosts", {})) == ["a", "b"] for s in states)

    wait_until(joined, limit, 0.1, lambda: f"the hubs never joined: {hosts[0].logs()[-3000:]}")


def bus_lost(host: ServerProcess) -> int:
    return sum(int(worker["bus_lost"]) for worker in host.health()[1]["per_worker"])


def test_redis_killed_and_restarted_under_a_stream(tmp_path: Path, redis: RedisServer) -> None:
    a, b = loopback_cluster(tmp_path, EXTRA, engine=EngineRun("redis", redis.address))
    try:
        a.start()
        b.start()
        wait_joined((a, b))
        run(_stream_through_a_fault(a, b, redis.kill, redis.start, refused_meanwhile=True), 120)
    finally:
        a.stop()
        b.stop()


def test_a_sentinel_failover_under_a_stream(tmp_path: Path, redis: RedisServer) -> None:
    """The master is killed; the sentinel promotes its replica; the hubs, which ask the
    sentinel for the master whenever they connect, move to it by themselves."""
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(redis.port))
    sentinel = SentinelServer(tmp_path / "sentinel", "shardws", redis, down_after=1000)
    with replica.start(), sentinel.start():
        wait_until(
            lambda: b"master_link_status:up" in replica.command("INFO", "replication"),
            10,
            0.1,
            "the replica never synced",
        )
        hub = f'[cluster.redis]\nsentinels = ["{sentinel.address}"]\nmaster_name = "shardws"\n'
        a, b = loopback_cluster(tmp_path, EXTRA + hub, engine="redis")
        try:
            a.start()
            b.start()
            wait_joined((a, b))

            def failed_over() -> None:
                wait_until(lambda: sentinel.master() == replica.port, 30, 0.1, "no failover")

            run(_stream_through_a_fault(a, b, redis.kill, failed_over), 120)
            assert cluster_health(a)["redis_connects"] > 2  # both connections moved
        finally:
            a.stop()
            b.stop()


async def _stream_through_a_fault(
    a: ServerProcess,
    b: ServerProcess,
    down: Callable[[], object],
    up: Callable[[], object],
    refused_meanwhile: bool = False,
    channel: str = "stream",
    lossy: bool = True,
) -> None:
    """A stream on ``channel`` from host a to subscribers on a and b while Redis goes
    ``down`` and comes ``up``: every loss counted (``lossy``: and some loss there is),
    the subscriptions back by themselves. Also run on Redis Cluster
    (``tests/test_redisclusterhub.py``)."""
    far = await Client.connect(b.url)  # the stream crosses to it through Redis
    near = await Client.connect(a.url)  # on the publisher's host: never through Redis
    for each in (far, near):
        assert (await each.call("subscribe", channel=channel))["ok"]
    publisher = await Client.connect(a.url)
    token = f"?token={make_token(SECRET, 'alice', 3600)}"
    alice = await Client.connect(b.url + token)  # her topic is live on b's worker
    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            assert (await publisher.call("publish", channel=channel, data=sent))["ok"]
            sent += 1
            await asyncio.sleep(0.005)

    await publish(100)
    # Before the fault everything crosses (and is not in flight when it strikes).
    received = [(await far.next_push(limit=10))["data"] for _ in range(100)]
    assert received == list(range(100))
    await asyncio.to_thread(down)
    await publish(100)
    late = await Client.connect(b.url)
    if refused_meanwhile:
        # Down: no subscribe is live on every host, nor a user's topic: not a new one,
        # nor one this host's worker has already (for the subscriber and alice above).
        for name in ("fresh", channel):
            reply = await late.call("subscribe", channel=name)
            assert reply.get("error", {}).get("code") == 108, reply
        for _ in range(2):
            with pytest.raises(Exception) as refused:
                await Client.connect(b.url + token)
            assert refused.value.rcvd.code == 4506, refused.value  # type: ignore[attr-defined]
    await publish(100)
    await asyncio.to_thread(up)
    await asyncio.to_thread(wait_joined, (a, b))
    await publish(100)
    # Inside the host, delivery went on: every publication, in order.
    assert [(await near.next_push())["data"] for _ in range(sent)] == list(range(sent))
    # Across: what arrived is in order, ends with the last one, and every gap is counted.
    while received[-1] != sent - 1:
        received.append((await far.next_push(limit=10))["data"])
        assert len(received) <= sent
    assert received == sorted(received)
    missing = sent - len(received)
    assert missing > 0 or not lossy  # Redis was down for a while: something could not cross
    await asyncio.to_thread(b.wait_heartbeat)
    assert bus_lost(b) >= missing, (bus_lost(b), missing)
    assert cluster_health(a)["messages_lost"] > 0 or not lossy
    # The subscription came back by itself; new ones are confirmed again.
    assert (await late.call("subscribe", channel="fresh"))["ok"]
    again = await Client.connect(b.url + token)
    for each in (far, near, publisher, late, alice, again):
        await each.close()


def test_a_reload_replaces_the_hub_and_refuses_another_engine(
    tmp_path: Path, redis: RedisServer
) -> None:
    """SIGHUP: ``[cluster.redis]`` (and the other ``[cluster]`` options but ``engine`` and
    ``host_id``) take effect, the hub process replaced like the bridge; a new engine is
    refused and the running one kept."""
    a, b = loopback_cluster(tmp_path, EXTRA, engine=EngineRun("redis", redis.address))
    try:
        a.start()
        b.start()
        wait_joined((a, b))
        original = a.config_path.read_text()
        before = cluster_health(a)["bridge_pid"]
        as_mesh = original.split("\n[cluster.redis]")[0].replace('"redis"', '"mesh"')
        a.config_path.write_text(as_mesh)
        a.signal(signal.SIGHUP)
        a.wait_log(r"\[cluster\] engine cannot change", limit=20)
        assert cluster_health(a)["bridge_pid"] == before
        a.config_path.write_text(
            original.replace("[cluster.redis]\n", "[cluster.redis]\ntimeout = 3.0\n")
        )
        a.signal(signal.SIGHUP)

        def replaced() -> bool:
            health = cluster_health(a)
            return bool(health["bridge_alive"]) and health["bridge_pid"] not in (before, 0)

        wait_until(replaced, 30, 0.1, "the hub was not replaced by the reload")
        wait_joined((a, b))
        run(_crosses(a, b))
    finally:
        a.stop()
        b.stop()


async def _crosses(a: ServerProcess, b: ServerProcess) -> None:
    subscriber = await Client.connect(b.url)
    assert (await subscriber.call("subscribe", channel="after-reload"))["ok"]
    publisher = await Client.connect(a.url)
    assert (await publisher.call("publish", channel="after-reload", data="live"))["ok"]
    assert (await subscriber.next_push())["data"] == "live"
    for each in (subscriber, publisher):
        await each.close()


async def _scripts_work(a: ServerProcess, b: ServerProcess) -> None:
    """A history channel published on one host and recovered on the other; native
    presence written and read on both (every script the workers run)."""
    reader, writer = await Client.connect(b.url), await Client.connect(a.url)
    first = await reader.call("subscribe", channel="hist:acl")
    assert first["ok"], first
    published = await writer.call("publish", channel="hist:acl", data="kept")
    assert published["ok"] and published["offset"] == first["offset"] + 1, published
    assert (await reader.next_push())["data"] == "kept"
    since = {"epoch": first["epoch"], "offset": first["offset"]}
    again = await writer.call("subscribe", channel="hist:acl", recover=since)
    assert again.get("ok") and again["recovered"], again
    for each in (reader, writer):
        assert (await each.call("subscribe", channel="pres:acl"))["ok"]
    listed = await reader.call("presence", channel="pres:acl")
    assert {m["client"] for m in listed["members"]} == {reader.client_id, writer.client_id}
    stats = await writer.call("presence_stats", channel="pres:acl")
    assert stats["clients"] == 2, stats
    for each in (reader, writer):
        await each.close()


def test_the_hub_logs_in_as_an_acl_user_with_a_password_file(tmp_path: Path) -> None:
    """An ACL user with exactly the rule docs/cluster.md gives (the default user off),
    its password read from ``password_file``: the hub crosses publications, the
    workers' scripts (history, presence) and what they read on connecting (``INFO``,
    ``CONFIG GET``) all run, and Redis's ``ACL LOG`` holds no refusal."""
    user = ["shardws", "on", ">hub-password-0123", *documented_acl_rule()]
    inspector = ["inspector", "on", ">inspector-0123", "~*", "&*", "+@all"]
    users = ["--user", *user, "--user", *inspector, "--user", "default", "off"]
    with RedisServer(tmp_path / "redis", *users) as redis:
        redis.start()
        password_file = tmp_path / "redis.password"
        password_file.write_text("hub-password-0123\n")
        hub = (
            f'[cluster.redis]\naddress = "{redis.address}"\nusername = "shardws"\n'
            f'password_file = "{password_file}"\n'
            "[namespaces.hist]\nhistory_size = 10\nhistory_ttl = 60\n"
            "[namespaces.pres]\npresence = true\n[namespaces.default]\n"
        )
        a, b = loopback_cluster(tmp_path, EXTRA + hub, engine="redis")
        try:
            a.start()
            b.start()
            wait_joined((a, b))
            run(_crosses(a, b))
            run(_scripts_work(a, b))
            client = sync_redis.Redis(
                port=redis.port, username="inspector", password="inspector-0123"
            )
            try:
                refused = client.acl_log()
            finally:
                client.close()
            assert refused == [], refused
            for host in (a, b):
                for worker in host.health()[1]["per_worker"]:
                    counters = worker["redis"]
                    assert counters["history_failed"] == counters["presence_failed"] == 0
        finally:
            a.stop()
            b.stop()


def test_the_hub_reaches_redis_over_tls(tmp_path: Path) -> None:
    """``tls = true``: the hub verifies Redis's certificate against ``tls_ca_file``."""
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    with RedisServer(tmp_path / "redis", *tls) as redis:
        redis.start()
        hub = (
            f'[cluster.redis]\naddress = "localhost:{tls_port}"\ntls = true\n'
            f'tls_ca_file = "{cert}"\n'
        )
        a, b = loopback_cluster(tmp_path, EXTRA + hub, engine="redis")
        try:
            a.start()
            b.start()
            wait_joined((a, b))
            run(_crosses(a, b))
        finally:
            a.stop()
            b.stop()


def test_a_subscriber_redis_cuts_for_its_output_buffer_is_counted(tmp_path: Path) -> None:
    """Redis drops a subscriber connection whose output buffer passes
    ``client-output-buffer-limit pubsub`` (here 64 KB, host b's hub stopped meanwhile):
    the hub reconnects, and what was lost is counted by host b's worker."""
    limit = ["--client-output-buffer-limit", "pubsub 64kb 0 0"]
    with RedisServer(tmp_path / "redis", *limit) as redis:
        redis.start()
        a, b = loopback_cluster(tmp_path, EXTRA, engine=EngineRun("redis", redis.address))
        try:
            a.start()
            b.start()
            wait_joined((a, b))
            run(_cut_while_stopped(a, b))
        finally:
            a.stop()
            b.stop()


async def _cut_while_stopped(a: ServerProcess, b: ServerProcess) -> None:
    far = await Client.connect(b.url)
    assert (await far.call("subscribe", channel="big"))["ok"]
    publisher = await Client.connect(a.url)
    payload = "x" * 60_000
    # A first publication that arrives: a worker counts a gap against the last sequence
    # it saw from an origin on a topic (one it never saw from is no gap to it).
    assert (await publisher.call("publish", channel="big", data={"n": -1, "p": ""}))["ok"]
    assert (await far.next_push())["data"]["n"] == -1
    hub = cluster_health(b)["bridge_pid"]
    os.kill(hub, signal.SIGSTOP)
    try:
        for n in range(200):  # 12 MB for b while its hub reads nothing: past the
            # kernel's socket buffers, into Redis's output buffer for it
            reply = await publisher.call("publish", channel="big", data={"n": n, "p": payload})
            assert reply["ok"], reply
    finally:
        os.kill(hub, signal.SIGCONT)
    await asyncio.to_thread(wait_joined, (a, b))
    wait_until(lambda: redis_cut(b), 10, 0.1, "the hub never reconnected")
    assert (await publisher.call("publish", channel="big", data={"n": 200, "p": ""}))["ok"]
    received = []
    while not received or received[-1] != 200:
        received.append((await far.next_push(limit=10))["data"]["n"])
        assert len(received) <= 201
    missing = 201 - len(received)
    assert missing > 0, received
    await asyncio.to_thread(b.wait_heartbeat)
    assert bus_lost(b) >= missing, (bus_lost(b), missing)
    for each in (far, publisher):
        await each.close()


def redis_cut(host: ServerProcess) -> bool:
    """Whether the host's hub connected again since it started (its first two)."""
    return bool(cluster_health(host)["redis_connects"] > 2)
