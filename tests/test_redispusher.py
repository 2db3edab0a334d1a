"""``server.redispusher``'s scripts against the session's real ``redis-server``, without
shardws processes: several :class:`RedisPusher` (each a worker of some host, each with
its own connection) on one channel decide every event once, a dead holder's entries are
expired once whoever runs the script, a holder that comes back is told to tell again,
and the Redis commands each operation costs (printed; ``docs/pusher.md``)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from redisproc import RedisServer, documented_acl_rule
from toolkit import run

from shardws.config import RedisConfig
from shardws.pure.control import (
    PusherCacheGetRequest,
    PusherCachePutRequest,
    PusherJoinRequest,
    PusherLeaveRequest,
    PusherOccupancyRequest,
    PusherUsersRequest,
)
from shardws.pure.publication import Publication
from shardws.pure.pusher.channels import SocketIds, internal_name
from shardws.pure.pusher.webhooks import WebhookEvent
from shardws.server import redispusher
from shardws.server.redisconn import RedisCalls
from shardws.server.redispusher import RedisPusher

_prefixes = itertools.count()


class Worker:
    """One worker's :class:`RedisPusher` on its own connection, recording what it
    announces (publications and webhook events, as (name, user) pairs)."""

    def __init__(self, settings: RedisConfig, member: int) -> None:
        self.calls = RedisCalls(settings)
        self.announced: list[tuple[str, str | None]] = []
        self.pusher = RedisPusher(
            self.calls, settings.prefix, member, self, self.webhook, settings.presence_ttl
        )
        self.sockets = SocketIds(member, 1)

    def publish_publication(self, channel: str, publication: Publication) -> None:
        pass  # announced once per decision: counted by the webhook below

    def webhook(self, channel: str, event: WebhookEvent) -> None:
        self.announced.append((event.name, event.user_id))

    async def join(self, channel: str, user: str, limit: int = 100, **kw: Any) -> Any:
        socket = self.sockets.next()
        request = PusherJoinRequest(channel, socket, user, b'{"n":1}', limit, **kw)
        return socket, await self.pusher.ask(request, 2)

    async def leave(self, channel: str, socket: str) -> None:
        assert await self.pusher.ask(PusherLeaveRequest(channel, socket), 2) is not None

    async def occupy(self, channel: str, occupied: bool) -> None:
        request = PusherOccupancyRequest(channel, 0, occupied)
        assert await self.pusher.ask(request, 2) is not None


def _settings(redis: RedisServer, presence_ttl: float = 30) -> RedisConfig:
    """Settings of a Redis key space of the test's own."""
    prefix = f"rp{next(_prefixes)}:"
    return RedisConfig(address=redis.address, prefix=prefix, presence_ttl=presence_ttl)


@pytest.fixture
def settings(redis_server: RedisServer) -> Iterator[RedisConfig]:
    yield _settings(redis_server)


ROOM = internal_name("1", "presence-room")


def test_every_event_is_decided_once_across_workers(settings: RedisConfig) -> None:
    run(_decided_once(settings))


async def _decided_once(settings: RedisConfig) -> None:
    """Rosters, occupancy and the cache through two workers: each event decided once."""
    a, b = Worker(settings, 1), Worker(settings, 2 << 16)
    u_on_a, joined = await a.join(ROOM, "u", limit=2)
    assert joined.members == (("u", b'{"n":1}'),) and not joined.full
    u_on_b, joined = await b.join(ROOM, "u", limit=2)  # u's second connection
    assert joined.members == (("u", b'{"n":1}'),)
    again = PusherJoinRequest(ROOM, u_on_a, "u", None, 2)
    assert await a.pusher.ask(again, 2) is not None  # a retried join counts once
    _v, joined = await b.join(ROOM, "v", limit=2)
    _z, refused = await a.join(ROOM, "z", limit=2)
    assert refused.full == 2 and refused.members == ()
    users = await a.pusher.ask(PusherUsersRequest(ROOM), 2)
    assert users is not None and sorted(users.users) == ["u", "v"]
    assert users.subscriptions == 3
    await a.leave(ROOM, u_on_a)  # u still on b: nothing
    await b.leave(ROOM, u_on_b)
    await b.leave(ROOM, u_on_b)  # a repeated leave: nothing more
    hall = internal_name("1", "hall")
    await a.occupy(hall, True)
    await b.occupy(hall, True)
    await a.occupy(hall, False)
    await b.occupy(hall, False)
    assert a.announced == [("member_added", "u"), ("channel_occupied", None)]
    assert b.announced == [
        ("member_added", "v"),
        ("member_removed", "u"),
        ("channel_vacated", None),
    ]
    cache = internal_name("1", "cache-x")
    a.pusher.tell(PusherCachePutRequest(cache, b'{"event":"e"}', 60))
    got = await b.pusher.ask(PusherCacheGetRequest(cache), 2)
    assert got is not None and got.event == b'{"event":"e"}'
    for worker in (a, b):  # refreshes and sweeps: the heartbeat's scripts
        worker.pusher.on_heartbeat(0.0)
    await asyncio.sleep(0.2)  # the tasks it started make their calls
    for worker in (a, b):  # answered after each worker's earlier calls
        await worker.calls.command("TIME")
    for worker in (a, b):
        assert worker.calls.script_failures["pusher"] == 0
        await worker.calls.stop()


def test_the_documented_acl_rule_lets_every_pusher_script_run(redis_server: RedisServer) -> None:
    """A user with exactly docs/cluster.md's ACL rule (for this test's prefix) runs the
    Pusher scripts and commands of the test above; Redis logs no refusal for it."""
    settings = _settings(redis_server)
    user = "pusher-" + settings.prefix.rstrip(":")
    admin = redis.Redis(port=int(redis_server.address.rpartition(":")[2]))
    try:
        rule = documented_acl_rule(settings.prefix)
        admin.acl_setuser(user, reset=True)  # then the rule, word for word:
        admin.execute_command("ACL", "SETUSER", user, "on", ">pusher-acl-0123", *rule)
        run(_decided_once(replace(settings, username=user, password="pusher-acl-0123")))
        refused = [entry for entry in admin.acl_log() if entry.get("username") == user]
        assert refused == [], refused
    finally:
        admin.acl_deluser(user)
        admin.close()


async def _expired(worker: Worker, channel: str, limit: float = 10) -> None:
    """Wait (bounded) until ``worker``'s entries of ``channel`` are past their TTL."""
    keys = redispusher.channel_keys(worker.pusher.prefix, channel)
    for _ in range(int(limit / 0.05)):
        answer = await worker.calls.command("TIME")
        now_ms = int(answer[0]) * 1000 + int(answer[1]) // 1000
        score = await worker.calls.command("ZSCORE", keys[3], worker.pusher.holder)
        if score is None or float(score) < now_ms:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{channel}: the holder never expired")


def test_a_dead_holder_expires_once_whoever_notices(redis_server: RedisServer) -> None:
    """Holder a stops refreshing: the two sweepers b and c run the expiry of its channel
    at once; one of them announces ``member_removed`` and ``channel_vacated``, once. A
    channel whose holders are all dead is found by a sweep through the due index."""

    settings = _settings(redis_server, presence_ttl=0.3)

    async def scenario() -> None:
        a, b, c = Worker(settings, 1), Worker(settings, 2), Worker(settings, 3)
        await a.join(ROOM, "u")
        await a.occupy(ROOM, True)
        await _expired(a, ROOM)
        sweeps = [w.pusher._channel_call(redispusher._REFRESH, ROOM, ("", 0)) for w in (b, c) * 3]
        await asyncio.gather(*sweeps)
        assert sorted(b.announced + c.announced) == [
            ("channel_vacated", None),
            ("member_removed", "u"),
        ]
        other = internal_name("1", "presence-other")
        await a.join(other, "w")
        await _expired(a, other)
        for _ in range(100):  # the due index has it once its holder's TTL passed
            await b.pusher._sweep()
            if ("member_removed", "w") in b.announced:
                break
            await asyncio.sleep(0.05)
        assert b.announced.count(("member_removed", "w")) == 1

    run(scenario())


def test_a_holder_back_after_its_expiry_tells_again(redis_server: RedisServer) -> None:
    """A holder whose entries expired (a long blink) learns it from its next refresh: its
    ``decider`` changes, so its front tells its subscriptions again, announced anew."""

    settings = _settings(redis_server, presence_ttl=0.3)

    async def scenario() -> None:
        a, b = Worker(settings, 1), Worker(settings, 2)
        socket, _ = await a.join(ROOM, "u")
        before = a.pusher.decider(ROOM)
        await _expired(a, ROOM)
        await b.join(ROOM, "v")  # b's script expires a's entries: u removed
        assert ("member_removed", "u") in b.announced
        a.pusher._refresh()
        for _ in range(100):
            if a.pusher.decider(ROOM) != before:
                break
            await asyncio.sleep(0.02)
        assert a.pusher.decider(ROOM) != before
        restore = PusherJoinRequest(ROOM, socket, "u", None, 1, restore=True)
        assert await a.pusher.ask(restore, 2) is not None  # beyond the limit: it was there
        assert a.announced == [("member_added", "u"), ("member_added", "u")]

    run(scenario())


def test_a_restarted_worker_expires_its_predecessor_at_once(redis_server: RedisServer) -> None:
    """A worker slot's next process (same member id, a new holder) expires what the
    previous one held when it connects, without waiting for the TTL (here 600 s)."""
    settings = _settings(redis_server, presence_ttl=600)

    async def scenario() -> None:
        first, watcher = Worker(settings, 1), Worker(settings, 2)
        await first.join(ROOM, "u")
        await watcher.join(ROOM, "w")
        first.pusher.on_heartbeat(0.0)  # names it the holder of slot 1
        await asyncio.sleep(0.1)
        await first.calls.stop()  # SIGKILLed: nothing more from it
        second = Worker(settings, 1)
        second.pusher.holder = first.pusher.holder + "-next"  # a later start
        await second.calls.command("PING")  # connected: the heartbeat takes over
        second.pusher.on_heartbeat(0.0)
        for _ in range(100):
            if ("member_removed", "u") in second.announced:
                break
            await asyncio.sleep(0.02)
        assert second.announced == [("member_removed", "u")]
        users = await watcher.pusher.ask(PusherUsersRequest(ROOM), 2)
        assert users is not None and users.users == ("w",)

    run(scenario())


def test_redis_commands_per_operation(settings: RedisConfig, redis_server: RedisServer) -> None:
    """What a presence subscribe, an unsubscribe and a refresh cost: the commands a
    worker sends (each one round trip, pipelined with the loop's other calls) and the
    commands Redis runs for them (scripts' own included). Printed for docs/pusher.md."""

    async def scenario() -> dict[str, tuple[float, float]]:
        a = Worker(settings, 1)
        await a.join(ROOM, "warm-up")  # the connection and its scripts loaded
        channels = [internal_name("1", f"presence-c{i}") for i in range(20)]
        sockets: list[tuple[str, str]] = []

        async def measure(work: Any) -> tuple[float, float]:
            ran = await _processed(a.calls)
            sent = a.calls.calls
            count = await work()
            await asyncio.sleep(0.05)  # the due index's commands that follow the answers
            return (a.calls.calls - sent) / count, (await _processed(a.calls) - ran - 1) / count

        async def first_joins() -> int:
            for channel in channels:
                sockets.append((channel, (await a.join(channel, "u"))[0]))
            return len(channels)

        async def more_joins() -> int:
            for channel in channels:
                sockets.append((channel, (await a.join(channel, "v"))[0]))
            return len(channels)

        async def leaves() -> int:
            for channel, socket in sockets:
                await a.leave(channel, socket)
            return len(sockets)

        async def refresh() -> int:
            held = len(a.pusher._held)  # the warm-up's channel too
            a.pusher._refresh()
            await asyncio.sleep(0.2)
            return held

        costs = {"first join": await measure(first_joins), "join": await measure(more_joins)}
        costs["refresh"] = await measure(refresh)
        costs["leave"] = await measure(leaves)
        return costs

    costs = run(scenario())
    for name, (sent, ran) in costs.items():
        print(f"pusher {name}: {sent:.1f} command(s) sent, {ran:.1f} run by Redis")
    # One script each; a worker's first entry in a channel, and its last, also write the
    # due index and its held set (each one command per loop iteration).
    assert costs["join"][0] == 1 and costs["first join"][0] == 3
    assert costs["refresh"][0] < 1.5
    assert costs["leave"][0] == 2


async def _processed(calls: RedisCalls) -> int:
    """Redis's ``total_commands_processed`` (this INFO is one of them)."""
    info = await calls.command("INFO", "stats")
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.partition(":")[2])
    raise AssertionError("no total_commands_processed in INFO stats")
