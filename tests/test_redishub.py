"""The Redis hub's faults, with the real servers: two loopback hosts joined through a
``redis-server`` of the test's own, killed and restarted under a stream.

While Redis is down every subscribe answers 108 and every authenticated greeting is
closed with 4506 (both retried by clients), delivery inside a host goes on, and each
publication that could not cross is counted (the publishing hub's ``messages_lost``, the
receiving workers' ``bus_lost``); when Redis is back the hubs reconnect, subscribe
everything again and the streams resume without the clients doing anything. The
guarantees that hold on both engines are ``tests/test_hosts.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redisproc import EngineRun, RedisServer
from serverproc import ServerProcess, loopback_cluster
from toolkit import run, wait_until
from wsclient import Client

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
        run(_stream_through_a_restart(a, b, redis), limit=120)
    finally:
        a.stop()
        b.stop()


async def _stream_through_a_restart(a: ServerProcess, b: ServerProcess, redis: RedisServer) -> None:
    far = await Client.connect(b.url)  # the stream crosses to it through Redis
    near = await Client.connect(a.url)  # on the publisher's host: never through Redis
    for each in (far, near):
        assert (await each.call("subscribe", channel="stream"))["ok"]
    publisher = await Client.connect(a.url)
    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            await publisher.send({"op": "publish", "channel": "stream", "data": sent})
            sent += 1
            await asyncio.sleep(0.005)

    await publish(100)
    await asyncio.to_thread(redis.kill)
    await publish(100)
    # Down: a subscribe cannot be confirmed live on every host, nor a user's topic.
    late = await Client.connect(b.url)
    reply = await late.call("subscribe", channel="fresh")
    assert reply.get("error", {}).get("code") == 108, reply
    with pytest.raises(Exception) as refused:
        await Client.connect(f"{b.url}?token={make_token(SECRET, 'alice', 3600)}")
    assert refused.value.rcvd.code == 4506, refused.value  # type: ignore[attr-defined]
    await publish(100)
    await asyncio.to_thread(redis.start)
    await asyncio.to_thread(wait_joined, (a, b))
    await publish(100)
    # Inside the host, delivery went on: every publication, in order.
    assert [(await near.next_push())["data"] for _ in range(sent)] == list(range(sent))
    # Across: what arrived is in order, ends with the last one, and every gap is counted.
    received = []
    while not received or received[-1] != sent - 1:
        received.append((await far.next_push(limit=10))["data"])
        assert len(received) <= sent
    assert received == sorted(received) and received[:100] == list(range(100))
    missing = sent - len(received)
    assert missing > 0  # Redis was down for a while: something could not cross
    await asyncio.to_thread(b.wait_heartbeat)
    assert bus_lost(b) >= missing, (bus_lost(b), missing)
    assert cluster_health(a)["messages_lost"] > 0
    # The subscription came back by itself; new ones are confirmed again.
    assert (await late.call("subscribe", channel="fresh"))["ok"]
    alice = await Client.connect(f"{b.url}?token={make_token(SECRET, 'alice', 3600)}")
    for each in (far, near, publisher, late, alice):
        await each.close()
