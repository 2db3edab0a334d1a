"""bus.py with real ZeroMQ sockets over ipc: three members in one event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from toolkit import run, timeout, wait_until_async

from shardws.bus.host import Bus, endpoint
from shardws.pure.busframe import channel_topic


class Member:
    def __init__(self, member: int, run_dir: Path, peers: set[int], hwm: int = 100_000) -> None:
        self.received: list[tuple[bytes, bytes]] = []
        self.stamps: list[int] = []
        self.peers = peers
        self.bus = Bus(
            member,
            lambda m: endpoint(str(run_dir), m),
            self._on_channel,
            lambda: set(peers),
            sync_timeout=1.0,
            hwm=hwm,
        )

    def start(self) -> None:
        self.bus.start(self.peers)

    def _on_channel(self, topic: bytes, payloads: list[bytes], stamp_ns: int) -> None:
        self.received.extend((topic, p) for p in payloads)
        self.stamps.append(stamp_ns)


async def _members(tmp_path: Path, n: int, hwm: int = 100_000) -> list[Member]:
    members = [Member(i, tmp_path, set(range(n)) - {i}, hwm) for i in range(n)]
    for m in members:
        m.start()
    for m in members:
        missing = await m.bus.wait_for_peers(set(range(n)) - {m.bus.member}, timeout(5))
        assert not missing
    return members


def test_subscribe_barrier_then_exactly_once_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b, c = await _members(tmp_path, 3)
        topic = channel_topic("news")
        assert await asyncio.wait_for(a.bus.subscribe(topic), timeout(5)) is True
        # Live on every peer right after the barrier: publish at once, no sleep.
        for n in range(1000):
            b.bus.publish(topic, b"b%d" % n)
            c.bus.publish(topic, b"c%d" % n)
        b.bus.publish(channel_topic("news2"), b"not for a")
        await wait_until_async(lambda: len(a.received) >= 2000, 5, 0.01)
        await asyncio.sleep(0.1)
        assert len(a.received) == 2000
        from_b = [p for t, p in a.received if p.startswith(b"b")]
        assert from_b == [b"b%d" % n for n in range(1000)]
        assert {t for t, _ in a.received} == {topic}
        assert b.received == [] and c.received == []  # b and c never subscribed
        assert a.bus.lost == 0
        a.bus.unsubscribe(topic)
        await asyncio.sleep(0.2)
        b.bus.publish(topic, b"late")
        await asyncio.sleep(0.2)
        assert len(a.received) == 2000
        for m in (a, b, c):
            m.bus.close()

    run(scenario())


def test_barrier_times_out_for_a_silent_peer(tmp_path: Path) -> None:
    async def scenario() -> None:
        lonely = Member(0, tmp_path, {1})  # claims member 1 is ready, but it never starts
        lonely.start()
        assert await asyncio.wait_for(lonely.bus.subscribe(b"cx\0"), timeout(5)) is False
        assert lonely.bus.sync_timeouts == 1
        lonely.bus.close()

    run(scenario())


def test_subscriptions_are_never_dropped_at_the_high_water_mark(tmp_path: Path) -> None:
    """``hwm`` bounds publications only: a burst of subscriptions (and the barrier after
    them) reaches every peer even with a high-water mark of 1."""

    async def scenario() -> None:
        a, b = await _members(tmp_path, 2, hwm=1)
        topics = [channel_topic(f"burst-{n}") for n in range(200)]
        barriers = [a.bus.subscribe(topic) for topic in topics]
        assert await asyncio.wait_for(asyncio.gather(*barriers), timeout(5)) == [True] * 200
        assert a.bus.sync_timeouts == 0
        assert set(topics) <= b.bus._remote_topics
        for m in (a, b):
            m.bus.close()

    run(scenario())


def test_sequence_gaps_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("gap")
        await a.bus.subscribe(topic)
        b.bus.publish(topic, b"1")
        await wait_until_async(lambda: len(a.received) == 1, 5, 0.01)
        b.bus._send_seq[topic] += 5  # simulate five payloads dropped at a high-water mark
        b.bus.publish(topic, b"2")
        await wait_until_async(lambda: len(a.received) == 2, 5, 0.01)
        assert a.bus.lost == 5
        for m in (a, b):
            m.bus.close()

    run(scenario())


@pytest.mark.parametrize("size", [10, 300_000])
def test_large_batches_split_and_arrive(tmp_path: Path, size: int) -> None:
    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("big")
        await a.bus.subscribe(topic)
        payloads = [bytes([65 + n % 26]) * size for n in range(20)]
        for p in payloads:
            b.bus.publish(topic, p)
        await wait_until_async(lambda: len(a.received) == 20, 5, 0.01)
        assert [p for _, p in a.received] == payloads and a.bus.lost == 0
        for m in (a, b):
            m.bus.close()

    run(scenario())


def test_a_member_attached_later_joins_the_mesh(tmp_path: Path) -> None:
    """A reload adds a worker: the others ``attach`` it and it gets their messages."""

    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        c = Member(2, tmp_path, {0, 1})
        c.start()
        for m in (a, b):
            m.peers.add(2)
            m.bus.attach({2})
            m.bus.attach({2})  # idempotent
        assert not await c.bus.wait_for_peers({0, 1}, timeout(5))
        topic = channel_topic("late")
        assert await asyncio.wait_for(c.bus.subscribe(topic), timeout(5)) is True
        before = time.time_ns()
        a.bus.publish(topic, b"from a")
        b.bus.publish(topic, b"from b")
        await wait_until_async(lambda: len(c.received) == 2, 5, 0.01)
        assert sorted(p for _, p in c.received) == [b"from a", b"from b"]
        # The batch stamp is when the publisher queued it (wall clock, comparable across
        # hosts): after ``before``, not later than its arrival.
        assert all(before <= stamp <= time.time_ns() for stamp in c.stamps)
        for m in (a, b, c):
            m.bus.close()

    run(scenario())


def test_when_subscribed_resolves_once_a_peer_subscribes(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("later")
        first, second = a.bus.when_subscribed(topic), a.bus.when_subscribed(topic)
        assert first is not None and second is first and not first.done()
        assert await asyncio.wait_for(b.bus.subscribe(topic), timeout(5)) is True
        await asyncio.wait_for(first, timeout(5))
        assert a.bus.when_subscribed(topic) is None  # subscribed now: send at once
        for m in (a, b):
            m.bus.close()

    run(scenario())
