"""The cluster guarantees for plain channels and users, on two hosts on loopback, once per
engine (``toolkit.ENGINES``: the mesh's bridges, the Redis hub through a real
``redis-server``, and through a Redis Cluster: ``redisproc.REDIS_CLUSTER``): every
publication reaches every subscriber on every host exactly once
and in each publisher's order; a subscribe reply means live on every host; user messages
and disconnects reach the user's connections on every host; ``/api/channels`` and
``/api/presence`` count every host's workers; the membership view shows in ``/health``
and ``/metrics``. The network-namespace versions are ``tests/test_cluster.py``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from redisproc import REDIS_CLUSTER
from serverproc import ServerProcess, http_json, loopback_cluster
from toolkit import ENGINES, run, timeout, wait_until
from wsclient import Client

from shardws.pure.auth import make_token

# Every test of the module runs once per engine (conftest.py), and on Redis Cluster.
ENGINES = (*ENGINES, REDIS_CLUSTER)

SECRET = "s3cret-for-tests-only-0123456789abcdef"
API_KEY = "hosts-test-api-key"
EXTRA = f"""
[auth]
anonymous = true
secret = "{SECRET}"

[namespaces.default]

[namespaces.room]
presence = true

[namespaces.lobby]
presence = true
join_leave = true
"""

Hosts = tuple[ServerProcess, ServerProcess]


def wait_joined(*hosts: ServerProcess, limit: float = 30) -> None:
    """Until each host's view holds both hosts."""

    def joined() -> bool:
        views = [host.health()[1].get("cluster", {}).get("hosts") for host in hosts]
        return all(view is not None and sorted(view) == ["a", "b"] for view in views)

    wait_until(joined, limit, 0.1, "the two hosts never saw each other")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Hosts]:
    a, b = loopback_cluster(
        tmp_path_factory.mktemp(f"hosts-{engine}"),
        EXTRA,
        engine=engine,
        admin=f'api_key = "{API_KEY}"',
    )
    try:
        a.start()
        b.start()
        wait_joined(a, b)
        yield a, b
    finally:
        a.stop()
        b.stop()


async def client(host: ServerProcess, user: str | None = None) -> Client:
    query = f"?token={make_token(SECRET, user, 3600)}" if user else ""
    return await Client.connect(host.url + query)


def api(host: ServerProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    status, reply = http_json(
        host.admin_url + path, None if body is None else json.dumps(body).encode(), API_KEY
    )
    assert status == 200, reply
    return reply


async def subscribe(clients: list[Client], channel: str) -> None:
    for each in clients:
        reply = await each.call("subscribe", channel=channel)
        assert reply.get("ok"), reply


async def quiet(each: Client) -> None:
    reply = await each.call("ping")
    assert reply["ok"] and not each.pushes, each.pushes


def test_every_subscriber_on_every_host_gets_each_publication_once(hosts: Hosts) -> None:
    a, b = hosts
    count = 200

    async def scenario() -> None:
        subscribers = [await client(host) for host in (a, b) for _ in range(2)]
        await subscribe(subscribers, "news")
        publisher = await client(a)
        # Two publishers on two hosts, interleaved: a client on a, the HTTP API of b.
        for n in range(count):
            assert (await publisher.call("publish", channel="news", data={"a": n}))["ok"]
            if n % 20 == 0:
                for m in range(n, n + 20):
                    body = {"channel": "news", "data": {"b": m}}
                    await asyncio.to_thread(api, b, "/api/publish", body)
        for sub in subscribers:
            seen: dict[str, list[int]] = {"a": [], "b": []}
            for _ in range(2 * count):
                push = await sub.next_push()
                assert push["channel"] == "news", push
                ((origin, n),) = push["data"].items()
                seen[origin].append(n)
            assert seen == {"a": list(range(count)), "b": list(range(count))}
            await quiet(sub)  # and nothing more: exactly once
        for each in [*subscribers, publisher]:
            await each.close()

    run(scenario())


def test_a_subscribe_reply_means_live_on_every_host(hosts: Hosts) -> None:
    a, b = hosts

    async def scenario() -> None:
        subscriber = await client(b)
        publisher = await client(a)
        for round_ in range(20):
            channel = f"fresh-{round_}"
            assert (await subscriber.call("subscribe", channel=channel))["ok"]
            assert (await publisher.call("publish", channel=channel, data=round_))["ok"]
            push = await subscriber.next_push()
            assert (push["channel"], push["data"]) == (channel, round_)
        for each in (subscriber, publisher):
            await each.close()

    run(scenario())


def test_user_messages_and_disconnects_reach_every_host(hosts: Hosts) -> None:
    a, b = hosts

    async def scenario() -> None:
        alice = [await client(host, "alice") for host in hosts]
        bob = [await client(host, "bob") for host in hosts]
        # The connected push means the user's topic is live on every host: no retries.
        await asyncio.to_thread(api, b, "/api/publish", {"user": "alice", "data": "x"})
        for each in alice:
            assert await each.next_push() == {"type": "pub", "user": "alice", "data": "x"}
        for each in bob:
            await quiet(each)
        await asyncio.to_thread(api, a, "/api/disconnect", {"user": "alice"})
        for each in alice:
            with pytest.raises(Exception) as closed:
                for _ in range(100):
                    await each.recv(limit=5)
            assert closed.value.rcvd.code == 4009, closed.value  # type: ignore[attr-defined]
        for each in bob:
            await quiet(each)
            await each.close()

    run(scenario())


def _presence_reads(host: ServerProcess) -> int | None:
    """The admin's presence scripts (the hub), None on the mesh."""
    admin = host.health()[1].get("admin")
    return None if admin is None else int(admin["redis"]["presence_scripts"])


def test_channels_and_presence_count_every_host(hosts: Hosts) -> None:
    """``GET /api/presence`` lists every host's subscribers: asked of the workers on the
    mesh, read from Redis by the admin on the hub (its presence scripts move)."""
    a, b = hosts

    async def scenario() -> None:
        on_a = [await client(a, "alice"), await client(a, "bob")]
        on_b = [await client(b, "carol")]
        await subscribe([*on_a, *on_b], "room:lobby")
        for host in hosts:
            channels = await asyncio.to_thread(api, host, "/api/channels?prefix=room:")
            assert channels["complete"] and channels["channels"] == {"room:lobby": 3}, channels
            reads = await asyncio.to_thread(_presence_reads, host)
            presence = await asyncio.to_thread(api, host, "/api/presence?channel=room:lobby")
            assert presence["complete"] and presence["clients"] == 3, presence
            assert sorted(m["user"] for m in presence["members"]) == ["alice", "bob", "carol"]
            if reads is not None:  # written to the admin's row every half second
                moved = lambda host=host, reads=reads: _presence_reads(host) > reads  # noqa: E731
                await asyncio.to_thread(wait_until, moved, 10, 0.1, "not read from Redis")
        for each in [*on_a, *on_b]:
            await each.close()

    run(scenario())


def test_presence_ops_list_every_host_and_join_leave_cross_once(hosts: Hosts) -> None:
    """The ``presence`` and ``presence_stats`` ops: from the workers at each call on the
    mesh, from Redis on the hub (``tests/test_redispresence.py`` for its faults)."""
    a, b = hosts
    channel = "lobby:main"

    async def listed(asker: Client) -> set[str]:
        reply = await asker.call("presence", channel=channel)
        assert reply["ok"], reply
        return {member["client"] for member in reply["members"]}

    async def scenario() -> None:
        watchers = [await client(a), await client(b)]
        await subscribe(watchers, channel)
        alice, carol = await client(a, "alice"), await client(b, "carol")
        await subscribe([alice, carol], channel)
        everyone = {each.client_id for each in [*watchers, alice, carol]}
        for asker in (alice, carol):  # a subscribe's ok means listed on every host
            assert await listed(asker) == everyone
            stats = await asker.call("presence_stats", channel=channel)
            assert (stats["clients"], stats["users"]) == (4, 2), stats
        assert (await carol.call("unsubscribe", channel=channel))["ok"]
        for _ in range(50):  # the leave's write may still be on its way
            if await listed(alice) == everyone - {carol.client_id}:
                break
            await asyncio.sleep(0.1)
        assert await listed(alice) == everyone - {carol.client_id}
        expected = {("join", alice.client_id), ("join", carol.client_id)}
        expected.add(("leave", carol.client_id))
        for watcher in watchers:
            seen = []
            while not expected <= set(seen):
                push = await watcher.next_push()
                if push["client"] not in {w.client_id for w in watchers}:
                    seen.append((push["type"], push["client"]))
            await quiet(watcher)
            assert sorted(seen) == sorted(expected)  # each once
        for each in [*watchers, alice, carol]:
            await each.close()

    run(scenario())


def test_the_membership_view_shows_in_health_and_metrics(hosts: Hosts) -> None:
    a, b = hosts
    views = set()
    for host, other in ((a, "b"), (b, "a")):
        cluster = host.health()[1]["cluster"]
        assert cluster["bridge_alive"] and cluster["peers"][other]["up"], cluster
        assert sorted(cluster["hosts"]) == ["a", "b"]
        views.add(cluster["view"])
        url = host.admin_url + "/metrics"
        with urllib.request.urlopen(url, timeout=timeout(5)) as response:
            text = response.read().decode()
        assert f'shardws_cluster_peer_up{{peer="{other}"}} 1.0' in text, text
        assert "shardws_cluster_hosts 2.0" in text
    assert len(views) == 1  # the same view number on both hosts
