"""Native presence kept in Redis on the hub (``server.redispresence``).

Pure parts first (the member values, the replies built from Redis's answers), then the
scripts on a real ``redis-server`` through a real ``RedisCalls``, then two loopback hosts
joined through a Redis of this module's own (``presence_ttl = 3``): members of both
hosts listed from either, ``join``/``leave`` once; Redis down answers 108 and a Redis
restarted empty holds every member again after the next refresh; every process of one
host restarted leaves the other host's members listed; a SIGKILLed worker's and a
SIGKILLed host's members gone within the bound (the measured times are printed:
``pytest -s``), the worker's successor listing no ghost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redisproc import EngineRun, RedisServer
from serverproc import ServerProcess, loopback_cluster
from toolkit import run, timeout, wait_until
from wsclient import Client

from shardws.config import RedisConfig
from shardws.pure.auth import make_token
from shardws.server.redisconn import RedisCalls
from shardws.server.redispresence import (
    CHUNK,
    ExpiringSets,
    SetKeys,
    chunks,
    decode_value,
    encode_value,
    member_value,
    members_of,
    update_args,
)

T = TypeVar("T")

SECRET = "s3cret-for-tests-only-0123456789abcdef"
TTL = 3  # presence_ttl of the hosts below: refreshed every second
EXTRA = f"""
[auth]
anonymous = true
secret = "{SECRET}"

[namespaces.room]
presence = true
join_leave = true

[namespaces.hroom]
presence = true
join_leave = true
history_size = 100
history_ttl = 600

[cluster.redis]
presence_ttl = {TTL}
"""

# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["", "alice", "ü:{}\x00\n", "1:x"])
def test_a_value_carries_its_owner_whatever_it_holds(owner: str) -> None:
    for rest in (b"", b"-", b'={"a":1}', b"9:zz"):
        assert decode_value(encode_value(owner, rest)) == (owner, rest)


@pytest.mark.parametrize("junk", [b"", b"abc", b"5:ab", b"-1:a", b":x", b"x:y"])
def test_a_value_that_is_not_one_is_refused(junk: bytes) -> None:
    with pytest.raises(ValueError, match="not a member value"):
        decode_value(junk)


def test_members_from_redis_skip_what_does_not_decode() -> None:
    flat = [
        b"c2",
        member_value("bob", None),
        b"c1",
        member_value("alice", b'{"n":1}'),
        b"c3",
        b"garbage",
    ]
    assert members_of(flat) == [["alice", "c1", '{"n":1}'], ["bob", "c2", None]]


def test_update_args_puts_then_drops_and_chunks_bound_a_script() -> None:
    args = update_args(3.0, {"a": b"1", "b": b"2"}, ["c"])
    assert args == ["3.0", "2", "a", b"1", "b", b"2", "c"]
    many = {str(n): b"v" for n in range(2 * CHUNK + 1)}
    assert [len(part) for part in chunks(many)] == [CHUNK, CHUNK, 1]
    assert chunks({}) == []


# -- the scripts on a real Redis ----------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("presence-redis")).start() as server:
        yield server


async def _sets(redis: RedisServer, ttl: float) -> tuple[RedisCalls, ExpiringSets]:
    calls = RedisCalls(RedisConfig(address=redis.address, timeout=timeout(2)))
    sets = ExpiringSets(calls, ttl)  # registers its scripts: loaded as it connects
    calls.start()
    for _ in range(200):
        if calls.up:
            break
        await asyncio.sleep(0.02)
    assert calls.up
    return calls, sets


def test_sets_put_drop_read_count_and_expire(redis: RedisServer) -> None:
    keys = SetKeys(b"unit{s}:p", b"unit{s}:pe")

    async def scenario() -> None:
        calls, sets = await _sets(redis, 1)
        for n in range(5):
            sets.put(keys, f"c{n}", encode_value("u" if n < 3 else f"v{n}", b""))
        sets.put(keys, "anon", encode_value("", b""))
        sets.drop(keys, "c0")
        sets.drop(keys, "c0")  # twice: nothing more
        sets.drop(keys, "never-put")
        # A read flushes what this process changed first: its own writes are seen.
        flat = await sets.read(keys)
        assert sorted(flat[0::2]) == [b"anon", b"c1", b"c2", b"c3", b"c4"]
        assert await sets.counts(keys) == [5, 3]  # u, v3, v4 ("" is no owner)
        # Many members: one script per CHUNK, and one refresh writes them all again.
        for n in range(CHUNK + 10):
            sets.put(keys, f"m{n}", encode_value("m", b""))
        sets.flush()
        scripts = sets.scripts
        sets.refresh()
        assert sets.scripts - scripts == 2
        assert (await sets.counts(keys))[0] == 5 + CHUNK + 10
        # Nobody refreshes: every member expires after ttl (Redis's clock), and the read
        # script drops them.
        deadline = time.monotonic() + timeout(10)
        while (await sets.counts(keys))[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await sets.counts(keys) == [0, 0]
        assert redis.command("EXISTS", keys.members.decode()) == b":0\r\n"
        await calls.stop()

    run(scenario())


def test_each_set_is_refreshed_once_an_interval_and_not_all_at_once(redis: RedisServer) -> None:
    async def scenario() -> None:
        calls, sets = await _sets(redis, 3)
        start = time.monotonic()
        for n in range(30):
            sets.put(SetKeys(b"turns{%d}:p" % n, b"turns{%d}:pe" % n), "m", b"0:")
        sets.flush()
        await sets.read(SetKeys(b"turns{0}:p", b"turns{0}:pe"))
        per_tick = []
        for tick in range(1, 21):  # two intervals (1 s each), in tenths
            before = sets.scripts
            sets.on_tick(start + tick * sets.interval / 10)
            per_tick.append(sets.scripts - before)
        assert sum(per_tick[:10]) == 30 and sum(per_tick[10:]) == 30, per_tick
        assert max(per_tick) < 30, per_tick  # spread over the interval
        await calls.stop()

    run(scenario())


def test_a_drop_redis_did_not_get_is_written_again(tmp_path: Path) -> None:
    """Redis with ``appendfsync always`` keeps what it acknowledged across a crash: a
    member dropped while it was down is dropped by the refresh after it came back."""
    keys = SetKeys(b"unit{d}:p", b"unit{d}:pe")
    durable = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")

    async def scenario() -> None:
        calls, sets = await _sets(durable, 30)
        sets.put(keys, "gone", encode_value("u", b""))
        sets.put(keys, "stays", encode_value("u", b""))
        await sets.read(keys)
        durable.kill()
        sets.drop(keys, "gone")
        sets.flush()
        await _until(lambda: _true(sets.failed >= 1), 10, "the drop's write failed")
        durable.start()
        await _until(lambda: _true(calls.up), 10, "reconnected")
        sets.on_tick(time.monotonic())  # reconnected: every set refreshed, with the drop
        assert (await sets.read(keys))[0::2] == [b"stays"]
        await calls.stop()

    with durable.start():
        run(scenario())


async def _true(value: bool) -> bool:
    return value


# -- two hosts on the hub -----------------------------------------------------------------

Hosts = tuple[ServerProcess, ServerProcess]


def _wait_joined(a: ServerProcess, b: ServerProcess, limit: float = 30) -> None:
    def joined() -> bool:
        states = [host.health()[1].get("cluster", {}) for host in (a, b)]
        return all(s.get("redis_up") and sorted(s.get("hosts", {})) == ["a", "b"] for s in states)

    wait_until(joined, limit, 0.1, lambda: f"the hubs never joined: {a.logs()[-3000:]}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Hosts]:
    a, b = loopback_cluster(
        tmp_path_factory.mktemp("presence-hosts"), EXTRA, engine=EngineRun("redis", redis.address)
    )
    try:
        a.start()
        b.start()
        _wait_joined(a, b)
        yield a, b
    finally:
        a.stop()
        b.stop()


async def _client(host: ServerProcess, user: str | None = None, info: Any = None) -> Client:
    query = f"?token={make_token(SECRET, user, 3600, info=info)}" if user else ""
    return await Client.connect(host.url + query)


async def _members(client: Client, channel: str) -> set[str] | None:
    """The client ids ``presence`` lists, or None when it answered an error."""
    reply = await client.call("presence", channel=channel)
    if not reply.get("ok"):
        assert reply["error"]["code"] == 108, reply
        return None
    return {member["client"] for member in reply["members"]}


async def _until(check: Callable[[], Awaitable[T | None]], limit: float, what: str) -> T:
    """Poll the coroutine function ``check`` until it returns something not None (and
    not False), within ``limit`` seconds (scaled)."""
    deadline = time.monotonic() + timeout(limit)
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit} s")
        await asyncio.sleep(0.1)


async def _listed(client: Client, channel: str, expected: set[str] | None, limit: float) -> None:
    """Until ``client``'s ``presence`` lists ``expected`` (None: answers error 108)."""

    async def check() -> bool:
        return await _members(client, channel) == expected

    await _until(check, limit, f"presence {sorted(expected or ())} for {client.client_id}")


async def _subscribed(host: ServerProcess, n: int, channel: str) -> list[Client]:
    clients = [await _client(host, f"user-{host.url[-8:]}-{k}") for k in range(n)]
    for each in clients:
        assert (await each.call("subscribe", channel=channel))["ok"]
    return clients


async def _close(clients: list[Client]) -> None:
    for each in clients:
        with contextlib.suppress(Exception):
            await each.close()


def test_members_of_both_hosts_listed_and_join_leave_once(hosts: Hosts) -> None:
    a, b = hosts
    channel = "room:both"

    async def scenario() -> None:
        watchers = [await _client(a), await _client(b)]  # anonymous: members with user ""
        for each in watchers:
            assert (await each.call("subscribe", channel=channel))["ok"]
        alice = await _client(a, "alice", {"name": "Alice"})
        bob = await _client(a, "bob")
        carol = await _client(b, "carol")
        carol2 = await _client(b, "carol")
        joiners = [alice, bob, carol, carol2]
        for each in joiners:
            assert (await each.call("subscribe", channel=channel))["ok"]
        everyone = {c.client_id for c in [*watchers, *joiners]}
        for asker in (alice, carol):
            reply = await asker.call("presence", channel=channel)
            assert {m["client"] for m in reply["members"]} == everyone, reply
            by_client = {m["client"]: m for m in reply["members"]}
            assert by_client[alice.client_id] == {
                "user": "alice",
                "client": alice.client_id,
                "info": {"name": "Alice"},
            }
            stats = await asker.call("presence_stats", channel=channel)
            assert (stats["clients"], stats["users"]) == (6, 3), stats
        assert (await carol2.call("unsubscribe", channel=channel))["ok"]
        await bob.close()
        left = everyone - {carol2.client_id, bob.client_id}
        await _listed(alice, channel, left, 5)
        # Each watcher: one join per joiner, one leave per leaver, nothing twice.
        expected = [("join", c.client_id) for c in joiners]
        expected += [("leave", carol2.client_id), ("leave", bob.client_id)]
        for watcher in watchers:
            seen: collections.Counter[tuple[str, str]] = collections.Counter()
            while not set(expected) <= set(seen):
                push = await watcher.next_push()
                seen[(push["type"], push["client"])] += 1
            assert (await watcher.call("ping"))["ok"]
            for push in watcher.pushes:
                seen[(push["type"], push["client"])] += 1
            assert max(seen.values()) == 1, seen
        await _close([*watchers, alice, carol, carol2])

    run(scenario(), 60)


def test_a_history_namespace_subscribe_is_listed_and_a_failed_one_announces_its_leave(
    hosts: Hosts, redis: RedisServer
) -> None:
    """On a namespace with history and presence, a subscribe's ok means listed on every
    host (it waits for the member's write, as a plain subscribe's does); one that fails
    (Redis stopped: neither its position nor its write is answered) gets 108 and its
    join is followed by its leave."""
    a, b = hosts
    channel = "hroom:both"

    async def scenario() -> None:
        watcher, asker = await _client(a), await _client(b)
        for each in (watcher, asker):
            assert (await each.call("subscribe", channel=channel))["ok"]
        joiners = [*await _subscribed(a, 2, channel), *await _subscribed(b, 2, channel)]
        everyone = {c.client_id for c in [watcher, asker, *joiners]}
        assert await _members(asker, channel) == everyone  # at once: each ok waited
        late = await _client(a, "late")  # connected while Redis answers (its user topic)
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            reply = await late.call("subscribe", channel=channel)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert reply["error"]["code"] == 108, reply
        kinds = []
        while kinds != ["join", "leave"]:
            push = await watcher.next_push(10)
            if push.get("client") == late.client_id:
                kinds.append(push["type"])
                assert kinds in (["join"], ["join", "leave"]), kinds
        await _listed(asker, channel, everyone, 10)  # never listed, or dropped at once
        await _close([watcher, asker, *joiners, late])

    run(scenario(), 60)
    _wait_joined(a, b)


def test_redis_restarted_empty_members_come_back_with_the_refresh(
    hosts: Hosts, redis: RedisServer
) -> None:
    a, b = hosts
    channel = "room:restart"

    async def scenario() -> None:
        clients = [*await _subscribed(a, 2, channel), *await _subscribed(b, 2, channel)]
        everyone = {c.client_id for c in clients}
        assert await _members(clients[0], channel) == everyone
        redis.kill()
        # Down: an error (108), never a partial list.
        await _listed(clients[0], channel, None, 10)
        redis.start()  # empty: no persistence
        started = time.monotonic()
        for asker in (clients[0], clients[-1]):
            await _listed(asker, channel, everyone, 20)
        print(f"\npresence back {time.monotonic() - started:.2f} s after Redis restarted empty")
        await _close(clients)

    run(scenario(), 90)
    _wait_joined(a, b)


def test_every_process_of_a_host_restarted_keeps_the_other_hosts_members(
    hosts: Hosts,
) -> None:
    a, b = hosts
    channel = "room:drain"

    async def scenario() -> None:
        on_a = await _subscribed(a, 2, channel)
        on_b = await _subscribed(b, 2, channel)
        everyone = {c.client_id for c in [*on_a, *on_b]}
        assert await _members(on_a[0], channel) == everyone
        await asyncio.to_thread(b.stop)  # every process of b, drained
        started = time.monotonic()
        kept = {c.client_id for c in on_a}
        await _listed(on_a[0], channel, kept, 5 * TTL)
        print(f"\nb's members gone {time.monotonic() - started:.2f} s after b stopped")
        await asyncio.to_thread(b.start)
        await asyncio.to_thread(_wait_joined, a, b)
        newcomer = (await _subscribed(b, 1, channel))[0]
        for asker in (on_a[0], newcomer):
            await _listed(asker, channel, kept | {newcomer.client_id}, 5)
        await _close([*on_a, *on_b, newcomer])

    run(scenario(), 120)


def test_a_sigkilled_workers_members_expire_and_its_successor_keeps_no_ghosts(
    hosts: Hosts,
) -> None:
    a, b = hosts
    channel = "room:worker"

    async def scenario() -> None:
        on_a = await _subscribed(a, 1, channel)
        on_b = await _subscribed(b, 2, channel)
        assert await _members(on_a[0], channel) == {c.client_id for c in [*on_a, *on_b]}
        (worker,) = [w["pid"] for w in b.wait_healthy()["per_worker"]]
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        kept = {on_a[0].client_id}
        await _listed(on_a[0], channel, kept, 10 * TTL)
        gone = time.monotonic() - killed
        print(f"\na SIGKILLed worker's members gone {gone:.2f} s after (presence_ttl {TTL})")
        await asyncio.to_thread(b.wait_healthy, 20.0, {worker})
        newcomer = (await _subscribed(b, 1, channel))[0]
        assert await _members(newcomer, channel) == kept | {newcomer.client_id}
        await _close([*on_a, *on_b, newcomer])

    run(scenario(), 120)


def _host_pids(root: int) -> list[int]:
    """``root`` and every process under it (this test started them all)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
    return pids


def test_a_sigkilled_hosts_members_are_gone_within_the_bound(hosts: Hosts) -> None:
    a, b = hosts
    channel = "room:crash"

    async def scenario() -> None:
        on_a = await _subscribed(a, 2, channel)
        on_b = await _subscribed(b, 3, channel)
        everyone = {c.client_id for c in [*on_a, *on_b]}
        assert await _members(on_a[0], channel) == everyone
        assert b.proc is not None
        for pid in _host_pids(b.proc.pid):  # the supervisor first: nothing restarts
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        b.proc.wait(timeout(10))
        killed = time.monotonic()
        kept = {c.client_id for c in on_a}
        # Within the bound (presence_ttl): asserted only against a generous deadline.
        await _listed(on_a[0], channel, kept, 10 * TTL)
        gone = time.monotonic() - killed
        print(f"\na SIGKILLed host's members gone {gone:.2f} s after (presence_ttl {TTL})")
        await _close([*on_a, *on_b])

    run(scenario(), 120)
