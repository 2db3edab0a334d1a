"""bus.py with real ZeroMQ sockets over ipc: three members in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from serverproc import timeout

from shardws.bus import Bus, channel_topic, endpoint


class Member:
    def __init__(self, member: int, endpoints: list[str], peers: set[int]) -> None:
        self.received: list[tuple[bytes, bytes]] = []
        self.bus = Bus(member, endpoints, self._on_channel, lambda: set(peers), sync_timeout=1.0)

    def _on_channel(self, topic: bytes, payloads: list[bytes]) -> None:
        self.received.extend((topic, p) for p in payloads)


async def _wait(predicate, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout(limit)
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _members(tmp_path: Path, n: int) -> list[Member]:
    endpoints = [endpoint(str(tmp_path), i) for i in range(n)]
    members = [Member(i, endpoints, set(range(n)) - {i}) for i in range(n)]
    for m in members:
        m.bus.start()
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
        await _wait(lambda: len(a.received) >= 2000)
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

    asyncio.run(scenario())


def test_barrier_times_out_for_a_silent_peer(tmp_path: Path) -> None:
    async def scenario() -> None:
        endpoints = [endpoint(str(tmp_path), i) for i in range(2)]
        lonely = Member(0, endpoints, {1})  # claims member 1 is ready, but it never starts
        lonely.bus.start()
        assert await asyncio.wait_for(lonely.bus.subscribe(b"cx\0"), timeout(5)) is False
        assert lonely.bus.sync_timeouts == 1
        lonely.bus.close()

    asyncio.run(scenario())


def test_sequence_gaps_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("gap")
        await a.bus.subscribe(topic)
        b.bus.publish(topic, b"1")
        await _wait(lambda: len(a.received) == 1)
        b.bus._send_seq[topic] += 5  # simulate five payloads dropped at a high-water mark
        b.bus.publish(topic, b"2")
        await _wait(lambda: len(a.received) == 2)
        assert a.bus.lost == 5
        for m in (a, b):
            m.bus.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [10, 300_000])
def test_large_batches_split_and_arrive(tmp_path: Path, size: int) -> None:
    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("big")
        await a.bus.subscribe(topic)
        payloads = [bytes([65 + n % 26]) * size for n in range(20)]
        for p in payloads:
            b.bus.publish(topic, p)
        await _wait(lambda: len(a.received) == 20)
        assert [p for _, p in a.received] == payloads and a.bus.lost == 0
        for m in (a, b):
            m.bus.close()

    asyncio.run(scenario())
