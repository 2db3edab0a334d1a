"""bus.host and bus.forwarder with real ZeroMQ sockets over ipc: a forwarder and a few
members in one event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from toolkit import run, timeout, wait_until_async

from shardws.bus.forwarder import Forwarder, endpoints
from shardws.bus.host import Bus
from shardws.pure.busframe import channel_topic, inbox_topic

_OPEN: list[Bus] = []


@pytest.fixture(autouse=True)
def _close_buses() -> Iterator[None]:
    """A failed test leaves its members open; their zmq contexts would block a later
    garbage collection (a context's sockets must close before it terminates)."""
    yield
    while _OPEN:
        bus = _OPEN.pop()
        if not bus._closed:
            bus._closed = True
            bus._pub.close(linger=0)
            bus._sub.close(linger=0)
            bus._ctx.term()


class Member:
    def __init__(
        self,
        member: int,
        run_dir: Path,
        relays: Callable[[], set[int]] = set,
        inbox_live: Callable[[int], bool] | None = None,
        sync_timeout: float = 1.0,
    ) -> None:
        self.received: list[tuple[bytes, bytes]] = []
        self.stamps: list[int] = []
        self.bus = Bus(
            member,
            endpoints(str(run_dir)),
            self._on_channel,
            relays,
            sync_timeout=sync_timeout,
            inbox_live=inbox_live,
        )
        _OPEN.append(self.bus)

    def _on_channel(self, topic: bytes, payloads: list[bytes], stamp_ns: int) -> None:
        self.received.extend((topic, p) for p in payloads)
        self.stamps.append(stamp_ns)


async def _sync(member: Member) -> None:
    """Barrier rounds until one passes: the member's path through the forwarder works."""
    deadline = time.monotonic() + timeout(5)
    while not await member.bus.sync():
        assert time.monotonic() < deadline, "the forwarder never answered"


async def _members(tmp_path: Path, n: int) -> list[Member]:
    members = [Member(i, tmp_path) for i in range(n)]
    for m in members:
        m.bus.start()
    for m in members:
        await _sync(m)
    return members


def _forwarder(tmp_path: Path, hwm: int = 100_000) -> Forwarder:
    forwarder = Forwarder(str(tmp_path), hwm)
    forwarder.start()
    return forwarder


@pytest.fixture
def forwarder(tmp_path: Path) -> Iterator[Forwarder]:
    running = _forwarder(tmp_path)
    yield running
    running.close()


def test_subscribe_barrier_then_exactly_once_in_order(tmp_path: Path, forwarder: Forwarder) -> None:
    async def scenario() -> None:
        a, b, c = await _members(tmp_path, 3)
        topic = channel_topic("news")
        assert await asyncio.wait_for(a.bus.subscribe(topic), timeout(5)) is True
        # Live on every member right after the barrier: publish at once, no sleep.
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


def test_own_publications_do_not_come_back(tmp_path: Path, forwarder: Forwarder) -> None:
    """A member delivers its own publications locally: the copy the forwarder sends back
    to it (it subscribes the topic too) is dropped, so nobody gets one twice."""

    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("both")
        assert await a.bus.subscribe(topic) and await b.bus.subscribe(topic)
        a.bus.publish(topic, b"from a")
        await wait_until_async(lambda: len(b.received) == 1, 5, 0.01)
        await asyncio.sleep(0.1)
        assert a.received == [] and b.received == [(topic, b"from a")]
        for m in (a, b):
            m.bus.close()

    run(scenario())


def test_barrier_times_out_without_a_forwarder(tmp_path: Path) -> None:
    async def scenario() -> None:
        lonely = Member(0, tmp_path)
        lonely.bus.start()
        assert await asyncio.wait_for(lonely.bus.subscribe(b"cx\0"), timeout(5)) is False
        assert lonely.bus.sync_timeouts == 1
        lonely.bus.close()

    run(scenario())


def test_barrier_waits_for_every_relay(tmp_path: Path, forwarder: Forwarder) -> None:
    """A relay (the cluster bridge) that does not answer fails the barrier even though
    the probe came back through the forwarder."""

    async def scenario() -> None:
        (a,) = await _members(tmp_path, 1)
        waiting = Member(1, tmp_path, relays=lambda: {7})
        waiting.bus.start()
        assert await asyncio.wait_for(waiting.bus.subscribe(b"cx\0"), timeout(5)) is False
        assert waiting.bus.sync_timeouts == 1
        for m in (a, waiting):
            m.bus.close()

    run(scenario())


def test_a_spent_barrier_topic_leaves_with_the_next_round(
    tmp_path: Path, forwarder: Forwarder
) -> None:
    """A finished round's barrier topic is unsubscribed together with the next round's
    subscriptions (so a round wakes the ZeroMQ threads once, not twice), or by the
    periodic sweep: seen from the forwarder (as the cluster bridge sees the host's
    subscriptions), at most the last round's stays subscribed, then none."""
    ctx = zmq.Context()
    watcher = ctx.socket(zmq.XPUB)
    watcher.connect(forwarder.inbound)
    live: set[bytes] = set()
    ours = b"s0."

    async def watch(until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout(5)
        while not until():
            assert time.monotonic() < deadline, live
            try:
                message = watcher.recv(zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.01)
                continue
            if message[1:].startswith(ours):
                (live.add if message[:1] == b"\x01" else live.discard)(message[1:])

    async def scenario() -> None:
        (a,) = await _members(tmp_path, 1)
        for n in range(5):
            assert await a.bus.subscribe(channel_topic(f"round-{n}"))
            (spent,) = a.bus._spent_barriers  # this round's; the one before it left
            await watch(lambda: live == {spent})  # noqa: B023 (awaited in the iteration)
        a.bus._drop_spent_barriers()  # what the sweep does
        await watch(lambda: not live)
        a.bus.close()

    try:
        run(scenario())
    finally:
        watcher.close(linger=0)
        ctx.term()


def test_subscriptions_are_never_dropped_at_the_high_water_mark(tmp_path: Path) -> None:
    """``hwm`` bounds publications only: a burst of subscriptions (and the barrier after
    them) is applied at the forwarder even with a high-water mark of 1 (a SUB would drop
    subscriptions past its high-water mark and the barrier would never complete)."""
    forwarder = _forwarder(tmp_path, hwm=1)

    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        topics = [channel_topic(f"burst-{n}") for n in range(200)]
        barriers = [a.bus.subscribe(topic) for topic in topics]
        assert await asyncio.wait_for(asyncio.gather(*barriers), timeout(5)) == [True] * 200
        # The barrier's topic followed the 200 on the same pipe: applied, so were they.
        assert a.bus.sync_timeouts == 0
        for m in (a, b):
            m.bus.close()

    try:
        run(scenario())
    finally:
        forwarder.close()


def test_sequence_gaps_are_counted(tmp_path: Path, forwarder: Forwarder) -> None:
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
def test_large_batches_split_and_arrive(tmp_path: Path, forwarder: Forwarder, size: int) -> None:
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


def test_a_member_started_later_gets_publications(tmp_path: Path, forwarder: Forwarder) -> None:
    """A reload adds a worker: it connects to the forwarder, nobody else does anything."""

    async def scenario() -> None:
        a, b = await _members(tmp_path, 2)
        c = Member(2, tmp_path)
        c.bus.start()
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


def test_when_subscribed_waits_for_a_booting_member(tmp_path: Path, forwarder: Forwarder) -> None:
    ready: set[int] = set()

    async def scenario() -> None:
        a = Member(0, tmp_path, inbox_live=lambda member: member in ready)
        a.bus.start()
        await _sync(a)
        first = a.bus.when_subscribed(inbox_topic(1))
        assert first is not None and not first.done()
        assert a.bus.when_subscribed(channel_topic("any")) is None  # only inboxes wait
        ready.add(1)
        await asyncio.wait_for(first, timeout(5))
        assert a.bus.when_subscribed(inbox_topic(1)) is None  # live now: send at once
        a.bus.close()

    run(scenario())


def test_when_subscribed_keeps_its_callers_in_order(tmp_path: Path, forwarder: Forwarder) -> None:
    """A caller asking while an earlier one waits gets the same future, even once the
    member is live: it cannot send before the earlier caller (requests keep their
    order, as ``Owners.ask_owner`` relies on)."""
    ready: set[int] = set()

    async def scenario() -> None:
        a = Member(0, tmp_path, inbox_live=lambda member: member in ready)
        a.bus.start()
        await _sync(a)
        first = a.bus.when_subscribed(inbox_topic(1))
        assert first is not None and not first.done()
        ready.add(1)
        assert a.bus.when_subscribed(inbox_topic(1)) is first  # not None: first still waits
        order: list[str] = []
        first.add_done_callback(lambda _f: order.append("first"))
        first.add_done_callback(lambda _f: order.append("second"))
        await asyncio.wait_for(asyncio.shield(first), timeout(5))
        assert order == ["first", "second"]
        assert a.bus.when_subscribed(inbox_topic(1)) is None
        a.bus.close()

    run(scenario())


def test_a_restarted_forwarder_keeps_subscriptions_and_losses_are_counted(
    tmp_path: Path,
) -> None:
    """The forwarder dies and a new one binds: members reconnect by themselves and their
    subscriptions are made again, so a subscriber keeps receiving. What was published
    while no forwarder ran either waited in the publisher's pipe and arrives, in order,
    or is lost and counted when the next publication arrives: never silently gone."""
    forwarder = _forwarder(tmp_path)

    async def scenario() -> None:
        nonlocal forwarder
        a, b = await _members(tmp_path, 2)
        topic = channel_topic("through")
        assert await a.bus.subscribe(topic) is True
        b.bus.publish(topic, b"before")
        await wait_until_async(lambda: len(a.received) == 1, 5, 0.01)
        forwarder.close()
        for n in range(3):  # no forwarder: queued in b's pipe, or lost
            b.bus.publish(topic, b"gone %d" % n)
            await asyncio.sleep(0.05)
        forwarder = _forwarder(tmp_path)
        await _sync(a)  # a's subscriptions were made again at the new forwarder
        await _sync(b)  # and b's publications pass it
        b.bus.publish(topic, b"after")
        await wait_until_async(lambda: a.received[-1][1] == b"after", 5, 0.01)
        got = [p for _, p in a.received]
        assert got[0] == b"before" and got[-1] == b"after"
        gone = got[1:-1]
        assert gone == sorted(gone)  # in publish order
        assert len(gone) + a.bus.lost == 3
        for m in (a, b):
            m.bus.close()

    try:
        run(scenario())
    finally:
        forwarder.close()


@pytest.mark.parametrize("count", [3, 12])
def test_a_subscription_and_a_publication_touch_only_the_members_concerned(
    tmp_path: Path, forwarder: Forwarder, count: int
) -> None:
    """The property the forwarder exists for, counted rather than timed: a new
    subscription makes no other member's Python read anything (the subscriber reads its
    own barrier echo), and a publication to a channel whose subscribers sit on two
    members is read by exactly those two, however many members the host has."""

    async def scenario() -> None:
        members = await _members(tmp_path, count)
        topic = channel_topic("pair")

        def readers(since: list[int]) -> list[int]:
            moved = zip(members, since, strict=True)
            return [m.bus.member for m, reads in moved if m.bus.reads > reads]

        before = [m.bus.reads for m in members]
        assert await members[0].bus.subscribe(topic) is True
        assert readers(before) == [0]
        assert await members[1].bus.subscribe(topic) is True
        assert readers(before) == [0, 1]
        after = [m.bus.reads for m in members]
        members[-1].bus.publish(topic, b"x")
        await wait_until_async(lambda: len(members[1].received) == 1, 5, 0.01)
        await wait_until_async(lambda: len(members[0].received) == 1, 5, 0.01)
        await asyncio.sleep(0.1)
        assert readers(after) == [0, 1]
        for m in members:
            m.bus.close()

    run(scenario())
