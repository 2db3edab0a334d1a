"""owners.py through its narrow interface (``OwnerHost``, ``Connection``), without sockets.

Only the edges are fakes: each ``FakeHost`` has a real ``Hub``, real ``Members`` over real
``SharedTables`` and a recording bus; a ``Network`` carries what those buses publish
between the fake workers of one event loop the way ``Worker`` does (inbox requests are
answered by the addressee's ``Owners.handle``, replies go to its ``Requests``, channel
pushes reach the other workers subscribed to the channel), and can lose messages.
Connections record what they are sent, replies and pushes in one ordered list.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serverproc import timeout

from shardws.config import NamespaceConfig, parse_config
from shardws.pure import control, protocol
from shardws.pure.auth import Identity
from shardws.pure.busframe import KIND_CHANNEL, KIND_INBOX, channel_topic, inbox_topic
from shardws.pure.cluster import host_number, member_id
from shardws.pure.history import Position, owner_of
from shardws.pure.hub import Hub
from shardws.pure.protocol import (
    CloseCode,
    ErrorCode,
    decode_pub_at,
    encode_history_page,
    encode_pub_at,
    encode_publication,
    pub_position,
)
from shardws.pure.publication import Kind, Publication
from shardws.pure.publication import decode as decode_record
from shardws.server import owners as owners_module
from shardws.server.owners import Owners
from shardws.server.ringfile import rings_path
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables
from shardws.shm.view import Members

HISTORY = 4  # ring size of the "h:" namespace
# The owner operations' names on the bus.
PUBLISH = control.HistoryPublishRequest.op
POSITION = control.HistoryPositionRequest.op
POSITIONS = control.HistoryPositionsRequest.op
PAGE = control.HistoryPageRequest.op
HANDOVER = control.HistoryHandoverRequest.op
PRESENCE = control.PresenceListRequest.op
CLUSTER = """
[cluster]
host_id = "a"
listen = "tcp://0.0.0.0:9767"
peers = ["b:9767"]
allow_plaintext = true
"""


# --------------------------------------------------------------------------- the edges


@dataclass(eq=False)
class FakeSink:
    owner: FakeConnection


@dataclass(eq=False)
class FakeConnection:
    """A client connection (``owners.Connection``): what it is sent and whether it was
    closed, in order."""

    client_id: str
    identity: Identity | None = None
    channels: set[str] = field(default_factory=set)
    closing: bool = False
    received: list[bytes] = field(default_factory=list)
    closed: tuple[int, str] | None = None
    sink: FakeSink = field(init=False)

    def __post_init__(self) -> None:
        self.sink = FakeSink(self)

    def send(self, payload: bytes) -> None:
        self.received.append(payload)

    def send_publication(self, channel: str, publication: Publication) -> None:
        self.send(encode_publication(channel, publication))

    def send_history(
        self,
        command_id: int | None,
        position: Position,
        channel: str,
        publications: list[Publication],
    ) -> None:
        self.send(encode_history_page(command_id, position, channel, publications))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.closing = True

    def replies(self) -> list[dict[str, Any]]:
        """The decoded messages that are not pushes (command replies)."""
        return [m for m in map(json.loads, self.received) if "type" not in m]

    def offsets(self, channel: str) -> list[int]:
        """The offsets of the channel's pushes received, in order."""
        positions = (pub_position(m, channel) for m in self.received)
        return [p.offset for p in positions if p is not None]


class RecordingBus:
    """The bus methods ``Owners`` calls (``publish``, ``when_subscribed``): records every
    publication and hands it to the network. ``waiting`` holds the inbox topics no peer
    subscribes to yet (their futures resolve once one does)."""

    def __init__(self, member: int, network: Network) -> None:
        self.member = member
        self.network = network
        self.published: list[tuple[bytes, bytes]] = []
        self.waiting: dict[bytes, asyncio.Future[None]] = {}

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.published.append((topic, payload))
        self.network.send(self.member, topic, payload)

    def when_subscribed(self, topic: bytes) -> asyncio.Future[None] | None:
        future = self.waiting.get(topic)
        return None if future is None or future.done() else future

    def requests_to(self, member: int, op: str | None = None) -> list[dict[str, Any]]:
        """The decoded requests sent to ``member``'s inbox (of ``op``), in order."""
        messages = [
            control.decode_inbox(payload)
            for topic, payload in self.published
            if topic == inbox_topic(member)
        ]
        return [m for m in messages if "op" in m and (op is None or m["op"] == op)]

    def pushes(self, channel: str) -> list[bytes]:
        """The channel's publications on the bus, as native pushes."""
        return [
            encode_publication(channel, decode_record(payload))
            for topic, payload in self.published
            if topic == channel_topic(channel)
        ]


class RecordingDelivery:
    """The ``Delivery`` methods ``Owners`` calls: each push lands, as is, in the
    ``received`` list of every sink's connection."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def drop_for(self, channel: str) -> bool:
        return self.host.options_for(channel).slow_consumer == "drop"

    def publish(
        self,
        channel: str,
        publication: Publication,
        groups: list[tuple[Any, list[Any]]],
        drop: bool,
    ) -> None:
        assert not drop  # history namespaces never drop
        for _wire, sinks in groups:
            for sink in sinks:
                sink.owner.received.append(encode_publication(channel, publication))

    def resume_deltas(self, conn: Any, channel: str) -> None:
        pass  # no delta subscriptions here (tests/test_delta*.py)


class FakeHost:
    """An ``OwnerHost``: what ``Owners`` needs of its worker, without sockets."""

    def __init__(self, world: World, slot: int) -> None:
        self.slot = slot
        self.members = Members(world.tables.board, world.tables.view, world.config, slot)
        self.member = self.members.me
        self.run_dir = str(world.run_dir)
        self.recording = RecordingBus(self.member, world.network)
        self.bus: Any = self.recording  # OwnerHost.bus is a Bus; this one has its methods
        self.hub = Hub(self._bus_subscribe, self._bus_unsubscribe)
        self.publications = 0
        self.lefts: list[tuple[str, str]] = []  # (channel, client id) told ``left``
        self.delivery: Any = RecordingDelivery(self)  # the Delivery methods Owners calls
        self.owners = Owners(self)

    def _bus_subscribe(self, channel: str) -> asyncio.Future[bool]:
        live = asyncio.get_running_loop().create_future()
        live.set_result(True)
        return live

    def _bus_unsubscribe(self, channel: str) -> None:
        self.owners.tracker.forget(channel)  # as the worker does

    def options_for(self, channel: str) -> NamespaceConfig:
        if channel.startswith("h:"):
            return NamespaceConfig(history_size=HISTORY)
        return NamespaceConfig()

    def stats_publication(self) -> None:
        self.publications += 1

    def left(self, channel: str, conn: Any) -> None:
        self.lefts.append((channel, conn.client_id))  # the worker announces the leave


class Network:
    """The host bus between the fake workers, in order (one FIFO for everything, which
    keeps the bus's per-pipe order). ``lose(topic, payload)`` true drops a message."""

    def __init__(self) -> None:
        self.hosts: dict[int, FakeHost] = {}  # attached workers by member id
        self.in_flight = 0
        self.lose: Callable[[bytes, bytes], bool] = lambda topic, payload: False

    def send(self, origin: int, topic: bytes, payload: bytes) -> None:
        if self.lose(topic, payload):
            return
        self.in_flight += 1
        asyncio.get_running_loop().call_soon(self._arrive, origin, topic, payload)

    def _arrive(self, origin: int, topic: bytes, payload: bytes) -> None:
        self.in_flight -= 1
        name = topic[1:-1].decode()
        if topic[0] == KIND_CHANNEL:
            for member, subscriber in self.hosts.items():
                if member != origin and name in subscriber.hub:  # not back to the origin
                    subscriber.owners.deliver(name, [decode_record(payload)])
            return
        assert topic[0] == KIND_INBOX
        host = self.hosts.get(int(name))
        if host is None:  # nobody subscribes to that inbox: ZeroMQ drops it
            return
        message = control.decode_inbox(payload)
        if "op" not in message:
            host.owners.requests.on_reply(origin, message)
            return
        assert message["op"] in owners_module.OWNER_OPS
        reply = host.owners.handle(message["op"], message)
        if message["id"] != 0:  # 0: a notification (hand-over), nobody waits
            host.bus.publish(
                inbox_topic(message["reply_to"]), control.encode_reply(message["id"], reply)
            )


class World:
    """One host's shared tables, its fake workers and the bus between them."""

    def __init__(self, run_dir: Path, cluster: bool) -> None:
        self.run_dir = run_dir
        self.config = parse_config(CLUSTER if cluster else "", "t")
        self.host_number = host_number("a") if cluster else 0
        self.tables = SharedTables.create(8)
        self.network = Network()

    def member(self, slot: int) -> int:
        return member_id(self.host_number, slot)

    def configure(self, slot: int, state: ProcessState = ProcessState.READY) -> None:
        """The supervisor made ``slot`` (CONFIGURED); its process is in ``state``."""
        row = self.tables.board.table[slot]
        row[Column.CONFIGURED] = 1
        row[Column.STATE] = state
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()

    def retire(self, slot: int) -> None:
        """A reload removed ``slot``: its row reads as never used, its inbox is gone."""
        self.tables.board.retire_row(slot)
        self.network.hosts.pop(self.member(slot), None)

    def worker(self, slot: int, attached: bool = True) -> FakeHost:
        """A new process for ``slot``; ``attached``: its inbox receives requests."""
        host = FakeHost(self, slot)
        if attached:
            self.network.hosts[host.member] = host
        return host

    def workers(self, count: int) -> list[FakeHost]:
        for slot in range(count):
            self.configure(slot)
        return [self.worker(slot) for slot in range(count)]

    def channel_owned_by(self, member: int, members: tuple[int, ...], skip: int = 0) -> str:
        names = (f"h:room-{n}" for n in range(10_000))
        return [c for c in names if owner_of(c, members) == member][skip]


@pytest.fixture(params=["single", "cluster"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A single host (member id = slot), or host "a" of a cluster (member id != slot)."""
    world = World(tmp_path, request.param == "cluster")
    try:
        yield world
    finally:
        world.tables.close()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path, False)
    try:
        yield world
    finally:
        world.tables.close()


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Owners that do not answer are given up on quickly."""
    monkeypatch.setattr(owners_module, "OWNER_TIMEOUT", 0.05)
    monkeypatch.setattr(owners_module, "PRESENCE_TIMEOUT", 0.05)


async def settle(world: World) -> None:
    """Run the loop until no other task is pending and no bus message is in flight."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(5)
    current = asyncio.current_task()
    while True:
        for _ in range(3):
            await asyncio.sleep(0)
        busy = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not busy and not world.network.in_flight:
            return
        assert loop.time() < deadline, "owners did not settle"
        if busy:
            await asyncio.wait(busy, timeout=0.01)


async def until(predicate: Callable[[], object]) -> None:
    deadline = asyncio.get_running_loop().time() + timeout(5)
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def subscribe(
    host: FakeHost,
    conn: FakeConnection,
    command_id: int,
    channel: str,
    since: tuple[str, int] | None = None,
) -> None:
    """``conn`` subscribes, recovering from ``since`` = (epoch, offset) if given."""
    conn.channels.add(channel)  # the worker records the subscription first
    position = None if since is None else Position(*since)
    host.owners.subscribe(conn, command_id, channel, position)


def ask(host: FakeHost, request: control.OwnerRequest[Any]) -> dict[str, Any]:
    """``host``'s reply to ``request`` arriving in its inbox (as the bus carries both)."""
    return host.owners.handle(request.op, request.fields())


def publish_on_owner(owner: FakeHost, channel: str, count: int) -> tuple[str, list[bytes]]:
    """``count`` publications sequenced by the channel's owner (as from its inbox);
    returns the epoch and the pushes."""
    answers = [
        ask(owner, control.HistoryPublishRequest(channel, b'{"n":%d}' % n)) for n in range(count)
    ]
    epoch = answers[0]["epoch"]
    first = answers[0]["offset"]
    assert [a["offset"] for a in answers] == list(range(first, first + count))
    pushes = [encode_pub_at(channel, first + n, epoch, b'{"n":%d}' % n) for n in range(count)]
    return epoch, pushes


def _offset(record: bytes, channel: str) -> int | None:
    """The offset of a publication record (None: none, or another bus payload)."""
    try:
        position = decode_record(record).position
    except ValueError:  # an inbox message
        return None
    return None if position is None else position.offset


def pubs(channel: str, *pushes: bytes) -> list[Publication]:
    """The publications of native ``pushes`` (made by ``encode_pub_at``), as the bus
    hands them to ``Owners.deliver``."""
    decoded = [decode_pub_at(push, channel) for push in pushes]
    assert all(decoded)
    return [p for p in decoded if p is not None]


def entries(channel: str, pushes: list[bytes]) -> list[list[Any]]:
    """Native pushes as an owner's reply lists them: ``[[offset, data], ...]``."""
    return [[p.position.offset, p.data.decode()] for p in pubs(channel, *pushes) if p.position]


def reply(host: FakeHost, origin: int, request: dict[str, Any], answer: dict[str, Any]) -> None:
    """``origin`` answers ``request`` (as the bus would hand the reply to ``host``)."""
    message = control.decode_inbox(control.encode_reply(request["id"], answer))
    host.owners.requests.on_reply(origin, message)


# --------------------------------------------------------------------------- ownership


def test_every_worker_picks_the_same_owner_and_owners_are_spread(world: World) -> None:
    hosts = world.workers(4)
    members = tuple(world.member(slot) for slot in range(4))
    channels = [f"h:room-{n}" for n in range(400)]
    chosen = [hosts[0].owners.owner(c) for c in channels]
    for host in hosts:
        assert host.owners.view() == members
        assert [host.owners.owner(c) for c in channels] == chosen
    counts = Counter(chosen)
    assert set(counts) == set(members)
    assert min(counts.values()) > len(channels) / 4 / 2  # no worker gets a tiny share
    # A worker leaving the view moves only its own channels.
    world.retire(3)
    after = [hosts[0].owners.owner(c) for c in channels]
    assert members[3] not in after
    assert all(a == b for a, b in zip(after, chosen, strict=True) if b != members[3])


def test_without_configured_workers_a_worker_owns_every_channel(single: World) -> None:
    host = single.worker(5)  # no slot marked CONFIGURED (e.g. before the supervisor did)
    assert host.owners.view() == ()
    assert {host.owners.owner(f"h:room-{n}") for n in range(20)} == {5}


def test_handle_refuses_what_it_cannot_answer(single: World) -> None:
    owner, other = single.workers(2)
    mine = single.channel_owned_by(0, (0, 1))
    theirs = single.channel_owned_by(1, (0, 1))
    handle = owner.owners.handle
    assert handle(PUBLISH, {"channel": "bad channel!", "data": "1"}) == {"error": "bad channel"}
    assert handle(PUBLISH, {"channel": theirs, "data": "1"}) == {
        "error": "not the owner of this channel"
    }
    plain = next(c for c in (f"room-{n}" for n in range(100)) if owner.owners.owner(c) == 0)
    assert handle(POSITION, {"channel": plain}) == {"error": "not the owner of this channel"}
    assert handle(PUBLISH, {"channel": mine, "data": 1}) == {"error": "bad publication"}
    assert handle(PUBLISH, {"channel": mine, "data": "1", "idem": 2}) == {
        "error": "bad publication"
    }
    assert handle(PAGE, {"channel": mine, "since": "0"}) == {
        "error": "since and limit must be integers"
    }
    assert handle(POSITIONS, {"channels": mine}) == {"error": "channels must be a list"}
    assert handle("nope", {"channel": mine}) == {"error": "unknown op 'nope'"}
    assert len(owner.owners.sequencer) == 0  # nothing was sequenced
    assert owner.recording.published == [] and other.recording.published == []


# --------------------------------------------------------------------------- publish


def test_publish_on_the_owner_assigns_offsets_in_order_and_replies(world: World) -> None:
    async def scenario() -> None:
        (host,) = world.workers(1)
        channel = "h:news"
        subscriber = FakeConnection("s")
        subscribe(host, subscriber, 1, channel)
        await settle(world)
        publisher = FakeConnection("p")
        for n in range(3):
            host.owners.publish(publisher, 10 + n, channel, b'{"n":%d}' % n, None)
        await settle(world)
        epoch = publisher.replies()[0]["epoch"]
        assert publisher.replies() == [
            {"id": 10 + n, "ok": True, "offset": n + 1, "epoch": epoch} for n in range(3)
        ]
        pushes = [encode_pub_at(channel, n + 1, epoch, b'{"n":%d}' % n) for n in range(3)]
        assert subscriber.received == [
            protocol.encode_ok(1, epoch=epoch, offset=0),  # no "recovered": none asked
            *pushes,
        ]
        assert host.recording.pushes(channel) == pushes  # and on the bus, once each
        assert host.publications == 3
        assert host.recording.requests_to(host.member) == []  # the owner asks nobody

    asyncio.run(scenario())


def test_a_repeated_idem_key_gets_the_first_offset_and_no_new_push(single: World) -> None:
    async def scenario() -> None:
        owner, other = single.workers(2)
        channel = single.channel_owned_by(0, (0, 1))
        subscriber = FakeConnection("s")
        subscribe(other, subscriber, 1, channel)
        await settle(single)
        publisher = FakeConnection("p")
        for command_id, (data, idem) in enumerate(
            [(b"1", "k1"), (b"2", "k1"), (b"3", "k2"), (b"4", "k1")], start=1
        ):
            other.owners.publish(publisher, command_id, channel, data, idem)
            await settle(single)  # a client retries after the answer
        assert [r["offset"] for r in publisher.replies()] == [1, 1, 2, 1]
        assert len(owner.recording.pushes(channel)) == 2 and owner.publications == 2
        assert subscriber.offsets(channel) == [1, 2]
        assert json.loads(subscriber.received[1])["data"] == 1  # the first publication

    asyncio.run(scenario())


def test_a_non_owner_forwards_a_publish_to_the_owners_inbox(world: World) -> None:
    async def scenario() -> None:
        world.configure(0)
        world.configure(1)
        host = world.worker(1)  # the owner's process is not attached: answer by hand
        owner = world.member(0)
        channel = world.channel_owned_by(owner, host.owners.view())
        conn = FakeConnection("p")
        host.owners.publish(conn, 7, channel, b'{"x":"\xc3\xa9"}', "key-1")
        await until(lambda: host.recording.published)
        [(topic, payload)] = host.recording.published
        assert topic == inbox_topic(owner)
        request = control.decode_inbox(payload)
        assert (request["op"], request["reply_to"]) == (PUBLISH, host.member)
        assert control.decode_owner_request(PUBLISH, request) == control.HistoryPublishRequest(
            channel, '{"x":"é"}'.encode(), "key-1"
        )
        assert conn.received == []  # waits for the owner
        reply(host, owner, request, {"offset": 7, "epoch": "e1"})
        await settle(world)
        assert conn.replies() == [{"id": 7, "ok": True, "offset": 7, "epoch": "e1"}]
        assert host.recording.pushes(channel) == [] and host.publications == 0

    asyncio.run(scenario())


def test_a_forwarded_publish_is_sequenced_by_the_owner_and_reaches_everyone(
    world: World,
) -> None:
    async def scenario() -> None:
        owner, other = world.workers(2)
        channel = world.channel_owned_by(owner.member, owner.owners.view())
        here, there = FakeConnection("a"), FakeConnection("b")
        subscribe(owner, here, 1, channel)
        subscribe(other, there, 1, channel)
        await settle(world)
        publisher = FakeConnection("p")
        for n in range(3):
            other.owners.publish(publisher, n, channel, b"%d" % n, None)
        await settle(world)
        assert [r["offset"] for r in publisher.replies()] == [1, 2, 3]
        assert owner.owners.sequencer.positions([channel])[channel][1] == 3
        assert channel not in other.owners.sequencer  # only the owner keeps the ring
        assert here.offsets(channel) == there.offsets(channel) == [1, 2, 3]
        assert owner.publications == 3 and other.publications == 0

    asyncio.run(scenario())


def test_an_owner_that_does_not_answer_is_reported_to_the_client(
    single: World, short_timeouts: None
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        conn = FakeConnection("p")
        host.owners.publish(conn, 3, channel, b"1", "k")
        host.owners.history(conn, 4, channel, {"since": 0, "limit": 10})
        await settle(single)
        assert [r["id"] for r in conn.replies()] == [3, 4]
        for answer in conn.replies():
            assert answer["error"]["code"] == ErrorCode.NOT_AVAILABLE
        assert "same idem" in conn.replies()[0]["error"]["message"]

    asyncio.run(scenario())


def test_requests_wait_for_a_booting_owners_inbox_and_keep_their_order(single: World) -> None:
    async def scenario() -> None:
        _, other = single.workers(2)
        channel = single.channel_owned_by(0, (0, 1))
        booted = asyncio.get_running_loop().create_future()
        other.recording.waiting[inbox_topic(0)] = booted
        publisher = FakeConnection("p")
        for n in range(3):
            other.owners.publish(publisher, n, channel, b"%d" % n, None)
        await asyncio.sleep(0.02)
        assert other.recording.requests_to(0) == []  # nothing sent into the void
        booted.set_result(None)
        await settle(single)
        assert [r["data"] for r in other.recording.requests_to(0, PUBLISH)] == ["0", "1", "2"]
        assert [r["offset"] for r in publisher.replies()] == [1, 2, 3]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- subscribe


@pytest.mark.parametrize("where", ["owner", "other"])
def test_subscribe_recovers_the_missed_publications_then_goes_live(
    world: World, where: str
) -> None:
    async def scenario() -> None:
        owner, other = world.workers(2)
        channel = world.channel_owned_by(owner.member, owner.owners.view())
        epoch, pushes = publish_on_owner(owner, channel, 3)
        host = owner if where == "owner" else other
        conn = FakeConnection("c")
        subscribe(host, conn, 9, channel, (epoch, 1))
        await settle(world)
        assert conn.received == [
            protocol.encode_ok(9, epoch=epoch, offset=3, recovered=True),
            pushes[1],
            pushes[2],
        ]
        _, live = publish_on_owner(owner, channel, 2)
        await settle(world)
        assert conn.received[3:] == live  # live after the recovery, nothing twice
        assert conn.closed is None

    asyncio.run(scenario())


@pytest.mark.parametrize("case", ["other epoch", "from the future", "left the ring"])
def test_subscribe_from_an_unrecoverable_position_says_recovered_false(
    single: World, case: str
) -> None:
    async def scenario() -> None:
        owner, other = single.workers(2)
        channel = single.channel_owned_by(0, (0, 1))
        epoch, _ = publish_on_owner(owner, channel, HISTORY + 2)  # offsets 1, 2 left
        since, reason = {
            "other epoch": (("0123456789abcdef", 3), "epoch_changed"),
            "from the future": ((epoch, HISTORY + 3), "ahead"),
            "left the ring": ((epoch, 1), "left_ring"),  # needs offset 2, gone
        }[case]
        conn = FakeConnection("c")
        subscribe(other, conn, 2, channel, since)
        await settle(single)
        assert conn.received == [
            protocol.encode_ok(2, epoch=epoch, offset=HISTORY + 2, recovered=False, reason=reason)
        ]
        _, live = publish_on_owner(owner, channel, 1)
        await settle(single)
        assert conn.received[1:] == live  # subscribed nevertheless, at the current position

    asyncio.run(scenario())


def test_the_last_position_still_in_the_ring_is_recoverable(single: World) -> None:
    async def scenario() -> None:
        owner, other = single.workers(2)
        channel = single.channel_owned_by(0, (0, 1))
        epoch, pushes = publish_on_owner(owner, channel, HISTORY + 2)
        conn = FakeConnection("c")
        subscribe(other, conn, 2, channel, (epoch, 2))  # offsets 3.. are all held
        await settle(single)
        assert conn.received == [
            protocol.encode_ok(2, epoch=epoch, offset=HISTORY + 2, recovered=True),
            *pushes[2:],
        ]

    asyncio.run(scenario())


def test_subscribe_without_an_owners_answer_fails_and_unsubscribes(
    single: World, short_timeouts: None
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        conn = FakeConnection("c")
        subscribe(host, conn, 4, channel)
        await settle(single)
        [answer] = conn.replies()
        assert answer["id"] == 4 and answer["error"]["code"] == ErrorCode.NOT_AVAILABLE
        assert channel not in conn.channels and channel not in host.hub
        assert host.lefts == [(channel, "c")]  # its join is followed by a leave

    asyncio.run(scenario())


def test_a_subscribe_waits_for_its_presence_write_and_fails_without_it(single: World) -> None:
    """With presence kept outside the workers (the hub), the ok waits for the member's
    write (``listed``), as a plain subscribe's does; a failed write answers 108 (not
    live) and the leave is announced."""

    async def scenario() -> None:
        single.configure(0)
        host = single.worker(0)
        channel = single.channel_owned_by(0, (0,))
        loop = asyncio.get_running_loop()
        for client, written in (("ok", True), ("ko", False)):
            conn = FakeConnection(client)
            listed: asyncio.Future[bool] = loop.create_future()
            conn.channels.add(channel)
            host.owners.subscribe(conn, 1, channel, None, listed)
            for _ in range(20):  # (settle would wait for the write forever)
                await asyncio.sleep(0)
            assert conn.replies() == [], "answered before the member was written"
            listed.set_result(written)
            await settle(single)
            [answer] = conn.replies()
            assert ("error" not in answer) is written, answer
        assert host.lefts == [(channel, "ko")]

    asyncio.run(scenario())


def test_pushes_arriving_while_a_subscriber_waits_are_delivered_once(single: World) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        epoch = "e"
        pushes = [encode_pub_at(channel, n, epoch, b"%d" % n) for n in range(1, 7)]
        early = FakeConnection("a")  # live at offset 2
        subscribe(host, early, 1, channel)
        await until(lambda: host.recording.requests_to(0))
        reply(host, 0, host.recording.requests_to(0)[-1], {"epoch": epoch, "offset": 2})
        await until(lambda: early.received)
        # A second subscriber recovers from 1: the owner answers at 3, and push 4 is read
        # in the same batch as the answer; push 5 arrives before its task resumes.
        late = FakeConnection("b")
        subscribe(host, late, 2, channel, (epoch, 1))
        await until(lambda: len(host.recording.requests_to(0)) == 2)
        host.owners.deliver(channel, pubs(channel, pushes[2]))  # 3: before the answer
        answer: dict[str, Any] = {"epoch": epoch, "offset": 3, "recovered": True}
        answer["publications"] = entries(channel, pushes[1:3])
        reply(host, 0, host.recording.requests_to(0)[-1], answer)
        host.owners.deliver(channel, pubs(channel, pushes[3], pushes[4]))
        await settle(single)
        host.owners.deliver(channel, pubs(channel, pushes[5]))
        assert early.offsets(channel) == [3, 4, 5, 6]
        assert late.received[0] == protocol.encode_ok(2, epoch=epoch, offset=3, recovered=True)
        assert late.offsets(channel) == [2, 3, 4, 5, 6]  # recovered, buffered, live; once

    asyncio.run(scenario())


def test_a_push_lost_while_the_first_subscriber_waits_is_not_skipped_silently(
    single: World, short_timeouts: None
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        conn = FakeConnection("c")
        subscribe(host, conn, 1, channel)
        await until(lambda: host.recording.requests_to(0))
        # The owner answers at offset 4; its push 5 is lost on the bus, push 6 is read in
        # the same batch as the answer (before the subscribe task resumes).
        reply(host, 0, host.recording.requests_to(0)[-1], {"epoch": "e", "offset": 4})
        host.owners.deliver(channel, pubs(channel, encode_pub_at(channel, 6, "e", b"6")))
        await settle(single)
        assert conn.received[0] == protocol.encode_ok(1, epoch="e", offset=4)
        # No silent gap: 5 is repaired before 6, or the subscriber is told to recover.
        assert conn.closed is not None or conn.offsets(channel) in ([], [5, 6])

    asyncio.run(scenario())


def test_two_first_subscribers_waiting_through_a_loss_get_every_push_once(
    single: World,
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        pushes = {n: encode_pub_at(channel, n, "e", b"%d" % n) for n in range(1, 8)}
        a, b = FakeConnection("a"), FakeConnection("b")
        subscribe(host, a, 1, channel)
        subscribe(host, b, 2, channel)
        await until(lambda: len(host.recording.requests_to(0)) == 2)
        ask_a, ask_b = host.recording.requests_to(0)
        # The owner answers a at 4, publishes 5 (lost on the bus), answers b at 5 and
        # publishes 6, all read before either subscribe task resumes.
        reply(host, 0, ask_a, {"epoch": "e", "offset": 4})
        reply(host, 0, ask_b, {"epoch": "e", "offset": 5})
        host.owners.deliver(channel, pubs(channel, pushes[6]))
        await until(lambda: len(host.recording.requests_to(0)) == 3)
        repair = host.recording.requests_to(0)[-1]
        assert (repair["op"], repair["since"]) == (POSITION, ["e", 4])
        answer = {"epoch": "e", "offset": 6, "recovered": True}
        answer["publications"] = entries(channel, [pushes[5], pushes[6]])
        reply(host, 0, repair, answer)
        await settle(single)
        host.owners.deliver(channel, pubs(channel, pushes[7]))
        assert a.received[0] == protocol.encode_ok(1, epoch="e", offset=4)
        assert b.received[0] == protocol.encode_ok(2, epoch="e", offset=5)
        assert a.offsets(channel) == [5, 6, 7]  # from its answer on, once, in order
        assert b.offsets(channel) == [6, 7]
        assert a.closed is None and b.closed is None
        assert host.owners.repairs == 1 and host.owners.unrecoverable == 0

    asyncio.run(scenario())


def test_subscribers_answered_ahead_of_a_repair_join_the_stream_at_their_answer(
    single: World,
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        pushes = {n: encode_pub_at(channel, n, "e", b"%d" % n) for n in range(1, 8)}
        early = FakeConnection("early")  # live at offset 2
        subscribe(host, early, 1, channel)
        await until(lambda: host.recording.requests_to(0))
        reply(host, 0, host.recording.requests_to(0)[-1], {"epoch": "e", "offset": 2})
        await until(lambda: early.received)
        plain, recovering = FakeConnection("plain"), FakeConnection("recovering")
        subscribe(host, plain, 2, channel)
        subscribe(host, recovering, 3, channel, ("e", 1))
        await until(lambda: len(host.recording.requests_to(0)) == 3)
        _, ask_plain, ask_recovering = host.recording.requests_to(0)
        host.owners.deliver(channel, pubs(channel, pushes[3]))
        # Push 4 is lost; the answers are at 4 and 5, and push 5 reveals the gap.
        reply(host, 0, ask_plain, {"epoch": "e", "offset": 4})
        host.owners.deliver(channel, pubs(channel, pushes[5]))
        answer = {"epoch": "e", "offset": 5, "recovered": True}
        answer["publications"] = entries(channel, [pushes[n] for n in (2, 3, 4, 5)])
        reply(host, 0, ask_recovering, answer)
        await until(lambda: len(host.recording.requests_to(0)) == 4)
        repair = host.recording.requests_to(0)[-1]
        assert (repair["op"], repair["since"]) == (POSITION, ["e", 3])
        for _ in range(5):  # both subscribe tasks resume; the repair waits
            await asyncio.sleep(0)
        assert early.offsets(channel) == [3]  # 5 waits for the repair
        assert plain.offsets(channel) == []  # answered at 4: joins once 4 is delivered
        assert recovering.offsets(channel) == [2, 3, 4, 5]  # its recovery, nothing more
        answer = {"epoch": "e", "offset": 5, "recovered": True}
        answer["publications"] = entries(channel, [pushes[4], pushes[5]])
        reply(host, 0, repair, answer)
        await settle(single)
        host.owners.deliver(channel, pubs(channel, pushes[6], pushes[7]))
        assert early.offsets(channel) == [3, 4, 5, 6, 7]
        assert plain.received[0] == protocol.encode_ok(2, epoch="e", offset=4)
        assert plain.offsets(channel) == [5, 6, 7]
        assert recovering.received[0] == protocol.encode_ok(3, epoch="e", offset=5, recovered=True)
        assert recovering.offsets(channel) == [2, 3, 4, 5, 6, 7]
        assert host.owners.repairs == 1 and host.owners.unrecoverable == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- gaps


def test_a_lost_push_is_repaired_from_the_owner_before_later_ones(world: World) -> None:
    async def scenario() -> None:
        owner, other = world.workers(2)
        channel = world.channel_owned_by(owner.member, owner.owners.view())
        conn = FakeConnection("c")
        subscribe(other, conn, 1, channel)
        await settle(world)
        world.network.lose = lambda topic, push: _offset(push, channel) == 2
        epoch, pushes = publish_on_owner(owner, channel, 4)
        await settle(world)
        assert conn.received[1:] == pushes  # in order, none missing, none twice
        repair = other.recording.requests_to(owner.member, POSITION)[-1]
        assert repair["channel"] == channel and repair["since"] == [epoch, 1]
        assert other.owners.repairs == 1 and other.owners.unrecoverable == 0
        assert other.owners.tracker.position(channel) == (epoch, 4)

    asyncio.run(scenario())


def test_pushes_arriving_during_a_repair_are_held_and_delivered_in_order(single: World) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)
        host = single.worker(1)
        channel = single.channel_owned_by(0, (0, 1))
        pushes = [encode_pub_at(channel, n, "e", b"%d" % n) for n in range(1, 7)]
        conn = FakeConnection("c")
        subscribe(host, conn, 1, channel)
        await until(lambda: host.recording.requests_to(0))
        reply(host, 0, host.recording.requests_to(0)[-1], {"epoch": "e", "offset": 1})
        await until(lambda: conn.received)
        host.owners.deliver(channel, pubs(channel, pushes[1], pushes[3]))  # 2, then 4 after a gap
        await until(lambda: len(host.recording.requests_to(0)) == 2)
        repair = host.recording.requests_to(0)[-1]
        assert (repair["op"], repair["since"]) == (POSITION, ["e", 2])
        host.owners.deliver(channel, pubs(channel, pushes[4]))  # 5 arrives while repairing
        assert conn.offsets(channel) == [2]
        answer = {"epoch": "e", "offset": 5, "recovered": True}
        answer["publications"] = entries(channel, pushes[2:5])
        reply(host, 0, repair, answer)
        await settle(single)
        host.owners.deliver(channel, pubs(channel, pushes[5]))
        assert conn.offsets(channel) == [2, 3, 4, 5, 6]
        assert host.owners.repairs == 1

    asyncio.run(scenario())


def test_a_gap_the_owner_cannot_fill_closes_the_subscribers_with_4505(single: World) -> None:
    async def scenario() -> None:
        owner, other = single.workers(2)
        channel = single.channel_owned_by(0, (0, 1))
        conns = [FakeConnection("a"), FakeConnection("b")]
        for conn in conns:
            subscribe(other, conn, 1, channel)
        await settle(single)
        lost = range(2, HISTORY + 3)  # more than the ring holds
        single.network.lose = lambda topic, push: _offset(push, channel) in lost
        publish_on_owner(owner, channel, HISTORY + 3)
        await settle(single)
        for conn in conns:
            assert conn.offsets(channel) == [1]  # nothing after the gap
            assert conn.closed is not None and conn.closed[0] == CloseCode.INSUFFICIENT_STATE
        assert other.owners.unrecoverable == 1 and other.owners.repairs == 0
        assert other.owners.tracker.position(channel) is None

    asyncio.run(scenario())


def test_a_lost_last_push_is_found_by_the_position_check(world: World) -> None:
    async def scenario() -> None:
        owner, other = world.workers(2)
        channel = world.channel_owned_by(owner.member, owner.owners.view())
        conn = FakeConnection("c")
        subscribe(other, conn, 1, channel)
        await settle(world)
        world.network.lose = lambda topic, push: _offset(push, channel) == 2
        _, pushes = publish_on_owner(owner, channel, 2)
        await settle(world)
        assert conn.offsets(channel) == [1]  # nothing after 2 reveals the loss
        other.owners.check_positions()
        await settle(world)
        [check] = other.recording.requests_to(owner.member, POSITIONS)
        assert check["channels"] == [channel]
        assert conn.received[1:] == pushes
        assert other.owners.repairs == 1
        other.owners.check_positions()  # in step now: no repair
        await settle(world)
        assert other.owners.repairs == 1 and conn.received[1:] == pushes

    asyncio.run(scenario())


# --------------------------------------------------------------------------- presence


def _identity(user: str, info: bytes | None = None) -> Identity:
    return Identity(user, None, info, ())


def test_presence_gathers_every_workers_subscribers(single: World) -> None:
    async def scenario() -> None:
        hosts = single.workers(3)
        channel = "h:lobby"
        people = [
            (0, FakeConnection("c1", _identity("alice", b'{"n":1}'))),
            (1, FakeConnection("c2", _identity("bob"))),
            (2, FakeConnection("c3", _identity("alice"))),
            (2, FakeConnection("c4", _identity(""))),  # anonymous
            (1, FakeConnection("c5")),  # no identity (not connected yet): not a member
        ]
        for slot, conn in people:
            subscribe(hosts[slot], conn, 1, channel)
        await settle(single)
        asking = FakeConnection("q")
        hosts[0].owners.presence(asking, 5, channel, False)
        hosts[0].owners.presence(asking, 6, channel, True)
        await settle(single)
        members, stats = asking.replies()
        assert members["id"] == 5 and stats["id"] == 6
        assert sorted(members["members"], key=lambda m: m["client"]) == [
            {"user": "alice", "client": "c1", "info": {"n": 1}},
            {"user": "bob", "client": "c2", "info": None},
            {"user": "alice", "client": "c3", "info": None},
            {"user": "", "client": "c4", "info": None},
        ]
        assert stats == {"id": 6, "ok": True, "clients": 5, "users": 2}
        assert hosts[2].owners.local_presence_stats(channel).fields() == {
            "clients": 2,
            "users": ["alice"],
        }
        asked = {m for m in (0, 1, 2) if hosts[0].recording.requests_to(m, PRESENCE)}
        assert asked == {1, 2}  # every other ready worker, not itself

    asyncio.run(scenario())


def test_presence_answers_with_what_it_has_when_a_worker_is_silent(
    single: World, short_timeouts: None
) -> None:
    async def scenario() -> None:
        single.configure(0)
        single.configure(1)  # ready, but its inbox gets nothing: it never answers
        host = single.worker(0)
        channel = single.channel_owned_by(0, (0, 1))
        conn = FakeConnection("c1", _identity("alice"))
        subscribe(host, conn, 1, channel)
        await settle(single)
        asking = FakeConnection("q")
        host.owners.presence(asking, 2, channel, True)
        await settle(single)
        assert asking.replies() == [{"id": 2, "ok": True, "clients": 1, "users": 1}]

    asyncio.run(scenario())


def test_join_is_delivered_here_and_published_on_the_bus(single: World) -> None:
    async def scenario() -> None:
        here, there = single.workers(2)
        channel = "h:lobby"
        watchers = [FakeConnection("w1"), FakeConnection("w2")]
        subscribe(here, watchers[0], 1, channel)
        subscribe(there, watchers[1], 1, channel)
        await settle(single)
        joining = FakeConnection("c9", _identity("carol"))
        here.owners.announce(channel, Kind.JOIN, joining)
        await settle(single)
        join = protocol.encode_presence_event("join", channel, "carol", "c9")
        assert watchers[0].received[-1] == join and watchers[1].received[-1] == join
        assert here.recording.pushes(channel) == [join]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- hand-over


def _rings(host: FakeHost) -> dict[str, tuple[str, int]]:
    return host.owners.sequencer.positions(host.owners.sequencer.channels())


def test_rings_move_to_a_new_owner_once_it_is_ready(world: World) -> None:
    async def scenario() -> None:
        hosts = world.workers(2)
        for host in hosts:
            host.owners.on_view()
        channels = [f"h:room-{n}" for n in range(30)]
        for channel in channels:
            owner = hosts[0] if hosts[0].owners.owner(channel) == hosts[0].member else hosts[1]
            publish_on_owner(owner, channel, 2)
        before = {**_rings(hosts[0]), **_rings(hosts[1])}
        assert set(before) == set(channels)
        # A reload adds slot 2; its process is still booting.
        world.configure(2, ProcessState.BOOTING)
        new = world.worker(2)
        moving = {c for c in channels if new.owners.owner(c) == new.member}
        assert moving  # the new worker owns some of the channels
        for host in hosts:
            host.owners.on_view()
        await settle(world)
        assert _rings(new) == {}  # not ready: the rings stay where they are
        world.configure(2, ProcessState.READY)
        for host in hosts:
            host.owners.on_view()
        await settle(world)
        assert _rings(new) == {c: before[c] for c in moving}  # same epochs, same offsets
        for host in hosts:
            kept = _rings(host)
            assert not set(kept) & moving
            assert all(host.owners.owner(c) == host.member for c in kept)
            notes = [r for m in (0, 1, 2) for r in host.recording.requests_to(world.member(m))]
            assert all(n["op"] == HANDOVER and n["id"] == 0 for n in notes)
        # The new owner continues each history where the old one stopped.
        for channel in moving:
            answer = ask(new, control.HistoryPublishRequest(channel, b"1"))
            assert answer == {"offset": before[channel][1] + 1, "epoch": before[channel][0]}
        for host in hosts:  # nothing more to hand over
            host.owners.on_view()
        await settle(world)
        assert sum(len(h.owners.sequencer) for h in [*hosts, new]) == len(channels)

    asyncio.run(scenario())


def test_rings_of_a_retired_slot_are_taken_over_from_its_file(world: World) -> None:
    async def scenario() -> None:
        hosts = world.workers(3)
        for host in hosts:
            host.owners.on_view()
        retiring = hosts[2]
        channels = [
            c
            for c in (f"h:room-{n}" for n in range(60))
            if hosts[0].owners.owner(c) == retiring.member
        ]
        for channel in channels:
            publish_on_owner(retiring, channel, 3)
        saved = _rings(retiring)
        retiring.owners.save()  # it drains
        path = rings_path(str(world.run_dir), 2)
        assert os.path.exists(path)
        world.retire(2)
        for host in hosts[:2]:
            host.owners.on_view()
        await settle(world)
        taken = {**_rings(hosts[0]), **_rings(hosts[1])}
        assert taken == saved  # each history continues with its new owner
        for host in hosts[:2]:
            assert all(host.owners.owner(c) == host.member for c in _rings(host))
        assert os.path.exists(path)  # kept for the others (and replaced if the slot returns)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- save / load


def test_the_next_process_of_a_slot_continues_its_rings(world: World) -> None:
    async def scenario() -> None:
        world.configure(0)
        world.configure(1)
        first = world.worker(1)
        channels = [
            c for c in (f"h:room-{n}" for n in range(40)) if first.owners.owner(c) == first.member
        ]
        for channel in channels:
            publish_on_owner(first, channel, 3)
        saved = _rings(first)
        first.owners.save()
        path = rings_path(str(world.run_dir), 1)  # named by slot, not by member id
        assert os.listdir(world.run_dir) == [os.path.basename(path)]
        world.network.hosts.pop(first.member)
        second = world.worker(1)  # the slot's next process
        second.owners.load()
        assert _rings(second) == saved
        assert not os.path.exists(path)  # consumed
        for channel in channels:
            answer = ask(second, control.HistoryPublishRequest(channel, b"1"))
            assert answer == {"epoch": saved[channel][0], "offset": saved[channel][1] + 1}
            since = Position(saved[channel].epoch, 1)
            hpos = ask(second, control.HistoryPositionRequest(channel, since))
            assert hpos["recovered"] is True and len(hpos["publications"]) == 3

    asyncio.run(scenario())


def test_a_loaded_ring_that_belongs_to_another_worker_now_is_handed_to_it(world: World) -> None:
    async def scenario() -> None:
        world.configure(0)
        alone = world.worker(0)  # the only worker: owns everything
        channels = [f"h:room-{n}" for n in range(30)]
        for channel in channels:
            publish_on_owner(alone, channel, 2)
        saved = _rings(alone)
        alone.owners.save()
        world.network.hosts.pop(alone.member)
        world.configure(1)  # a reload added slot 1 meanwhile
        other = world.worker(1)
        restarted = world.worker(0)
        restarted.owners.load()
        await settle(world)
        mine = {c for c in channels if restarted.owners.owner(c) == restarted.member}
        assert mine and mine != set(channels)
        assert _rings(restarted) == {c: saved[c] for c in mine}
        assert _rings(other) == {c: saved[c] for c in channels if c not in mine}
        [note] = restarted.recording.requests_to(other.member)
        assert note["op"] == HANDOVER and note["id"] == 0

    asyncio.run(scenario())


def test_nothing_to_save_writes_no_file(single: World) -> None:
    (host,) = single.workers(1)
    host.owners.save()
    assert os.listdir(single.run_dir) == []
    host.owners.load()  # no file: nothing to continue
    assert len(host.owners.sequencer) == 0
