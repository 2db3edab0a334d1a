"""The host bus: ZeroMQ PUB/SUB over ipc between the processes of one host.

Topology: every member binds one XPUB at its own ipc endpoint and connects one SUB to
every other member's endpoint. A member never receives its own messages (it delivers
locally itself), so each publication reaches every subscribed worker exactly once.
Membership is not fixed: members call ``attach`` with the slots that exist (from the
scoreboard) and connect to the new ones, so a reload can add workers; an endpoint
whose process is gone is simply not there until its slot's next process binds it.

The wire format (topics, frame header) is ``shardws.pure.busframe``. Publications queued
for the same topic during one event-loop iteration travel in one frame (batching
multiplies ZeroMQ's throughput), and payloads are the already-encoded client pushes, so no
receiver re-serializes.

Guarantees:

* Order: payloads from one origin on one topic arrive in publish order.
* Loss is counted, never silent: a PUB socket drops at its high-water mark without
  telling anyone, so receivers compare per-(origin, topic) sequence numbers and add
  every gap to ``lost``.
* Liveness barrier: the future returned by ``subscribe`` resolves once every ready peer
  has applied the subscription. Each peer is asked through a unique barrier topic that
  travels on the same SUB->XPUB pipe after the subscription; the peer's XPUB reports it
  only after applying everything before it, and its reply travels on the same
  XPUB->SUB pipe as its data. So anything a peer publishes after its reply reaches us.
  A peer that does not answer within ``sync_timeout`` (dead or stuck: the supervisor
  replaces it) is counted in ``sync_timeouts`` and the future resolves with False:
  the subscription may not be live there, and callers must not say it is.
* A booting member calls ``wait_for_peers`` before serving clients, so a replacement
  worker does not publish before the other workers' subscriptions reached it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq

from shardws.pure.busframe import HEADER as _HEADER
from shardws.pure.busframe import KIND_CHANNEL, KIND_INBOX, KIND_SYNC, KIND_USER, inbox_topic
from shardws.pure.busframe import LENGTH as _LENGTH

log = logging.getLogger("shardws.bus")

_MAX_FRAME_BYTES = 256 * 1024  # beyond this a batch is split: keeps receivers' latency flat
_RECV_BUDGET = 512  # frames per reader callback, so one busy socket cannot starve the loop


def endpoint(run_dir: str, member: int) -> str:
    """The ipc endpoint member ``member`` binds."""
    return f"ipc://{os.path.join(run_dir, f'bus-{member}.sock')}"


@dataclass(eq=False)
class _Barrier:
    topic: bytes
    expected: set[int]
    future: asyncio.Future[bool]
    answered: set[int] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class Bus:
    """One member's bus endpoints. Create and use inside the member's own event loop,
    after fork (a zmq Context must never cross a fork)."""

    def __init__(
        self,
        member: int,
        address: Callable[[int], str],
        on_channel: Callable[[bytes, list[bytes], int], None],
        ready_peers: Callable[[], set[int]],
        *,
        hwm: int = 100_000,
        sync_timeout: float = 2.0,
        on_user: Callable[[bytes, list[bytes]], None] | None = None,
        on_inbox: Callable[[int, list[bytes]], None] | None = None,
    ) -> None:
        """``on_channel(topic, payloads)`` gets channel publications, ``on_user(topic,
        payloads)`` messages on subscribed user topics, ``on_inbox(origin, payloads)``
        the messages other members sent to this member's inbox (``origin`` is the
        sender's member index, from the bus header). Unset callbacks ignore their kind."""
        self.member = member
        self.incarnation = int.from_bytes(os.urandom(4), "big")
        self.lost = 0  # bus payloads detected missing
        self.sync_timeouts = 0
        self._address = address
        self._attached: set[int] = set()
        self._on_channel = on_channel
        self._ready_peers = ready_peers
        self._sync_timeout = sync_timeout
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context(io_threads=1)
        self._xpub = self._ctx.socket(zmq.XPUB)
        self._sub = self._ctx.socket(zmq.SUB)
        for sock in (self._xpub, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ's default HWM (1000) silently dropped most of a fast stream here. ``hwm``
        # bounds the data direction (XPUB -> SUB) only: the other direction carries
        # subscriptions and barrier probes, and a SUB drops those at its high-water mark
        # without a trace (a subscription never applied, a barrier that cannot finish).
        # They are bounded by the topics subscribed, so that direction has no limit.
        self._xpub.setsockopt(zmq.SNDHWM, hwm)
        self._sub.setsockopt(zmq.RCVHWM, hwm)
        self._sub.setsockopt(zmq.SNDHWM, 0)
        self._xpub.setsockopt(zmq.RCVHWM, 0)
        # Every subscribe must be reported, including duplicates: barriers rely on it.
        self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._sub.setsockopt(zmq.RECONNECT_IVL, 20)
        self._sub.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self._remote_topics: set[bytes] = set()  # topics some peer subscribes to
        self._awaited: dict[bytes, asyncio.Future[None]] = {}  # see when_subscribed
        self._peers_seen: set[int] = set()  # peers whose inbox subscription reached us
        self._send_seq: dict[bytes, int] = {}
        self._recv_seq: dict[tuple[bytes, int], tuple[int, int]] = {}
        self._pending: dict[bytes, list[bytes]] = {}
        self._pending_since = 0  # wall-clock ns of the first publish of this batch
        self._flush_scheduled = False
        self._barrier_ids = itertools.count()
        self._next_barrier: _Barrier | None = None
        self._barriers: dict[bytes, _Barrier] = {}
        self._drain_scheduled: set[int] = set()
        self._closed = False
        self._on_user = on_user
        self._on_inbox = on_inbox

    def start(self, members: Iterable[int] = ()) -> None:
        """Bind, connect to ``members`` and start reading. Returns at once; peers attach
        asynchronously."""
        own = self._address(self.member)
        path = own.removeprefix("ipc://")
        if own.startswith("ipc://") and os.path.exists(path):  # left by a dead process
            os.unlink(path)
        self._xpub.bind(own)
        self._sub.setsockopt(zmq.SUBSCRIBE, inbox_topic(self.member))
        self._loop.add_reader(self._xpub.FD, self._drain_xpub)
        self._loop.add_reader(self._sub.FD, self._drain_sub)
        self.attach(members)

    def attach(self, members: Iterable[int]) -> None:
        """Connect to every member in ``members`` not connected yet (idempotent; call it
        whenever the set of slots may have grown). ZeroMQ keeps reconnecting to an
        endpoint whose process is gone, so a restarted member is picked up by itself."""
        for peer in members:
            if peer != self.member and peer not in self._attached:
                self._attached.add(peer)
                self._sub.connect(self._address(peer))
        self._kick()

    def close(self) -> None:
        """Stop reading and close the sockets; pending barriers resolve with False."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        for barrier in list(self._barriers.values()):
            self._finish_barrier(barrier, False)
        self._loop.remove_reader(self._xpub.FD)
        self._loop.remove_reader(self._sub.FD)
        self._xpub.close(linger=0)
        self._sub.close(linger=0)
        self._ctx.term()

    # -- publishing -------------------------------------------------------------------

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue ``payload`` for peers subscribed to ``topic``; sent at the end of this
        loop iteration together with everything else queued for the topic."""
        queue = self._pending.get(topic)
        if queue is None:
            self._pending[topic] = [payload]
        else:
            queue.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._pending_since = time.time_ns()
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for topic, payloads in pending.items():
            # No peer subscribes: ZeroMQ would filter it anyway; skip the encoding.
            if topic in self._remote_topics:
                self._send_batches(topic, payloads)
        self._kick()

    def _send_batches(self, topic: bytes, payloads: list[bytes]) -> None:
        seq = self._send_seq.get(topic, 0)
        start = 0
        while start < len(payloads):
            parts: list[bytes] = []
            size = 0
            end = start
            while end < len(payloads) and (size < _MAX_FRAME_BYTES or end == start):
                payload = payloads[end]
                parts.append(_LENGTH.pack(len(payload)))
                parts.append(payload)
                size += 4 + len(payload)
                end += 1
            count = end - start
            header = _HEADER.pack(self.member, self.incarnation, seq, count, self._pending_since)
            self._send(b"".join((topic, header, *parts)))
            seq += count
            start = end
        self._send_seq[topic] = seq

    def _send(self, frame: bytes) -> None:
        try:
            self._xpub.send(frame, zmq.NOBLOCK, copy=len(frame) < 16384)
        except zmq.Again:  # only with XPUB_NODROP; counted like any other loss
            log.warning("bus send would block; message dropped")

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, topic: bytes) -> asyncio.Future[bool]:
        """Subscribe to ``topic``; the future resolves (True) once the subscription is
        live on every ready peer, or (False) after ``sync_timeout`` if one is silent.
        Call once per topic (on the first local subscriber)."""
        self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._kick()
        return self._barrier()

    def sync(self) -> asyncio.Future[bool]:
        """A barrier round without a new subscription: resolves (True) once every
        subscription made so far (this member's inbox included) is live on every
        ready peer, so peers' requests and messages reach us from then on."""
        self._kick()
        return self._barrier()

    def when_subscribed(self, topic: bytes) -> asyncio.Future[None] | None:
        """None if some peer subscribes to ``topic`` now (a message published on it
        reaches that peer); otherwise a future that resolves once one does. A message
        for a topic nobody subscribes to is dropped without a trace (ZeroMQ filters it),
        so a request to a member that is still booting should wait for this first.
        Callers awaiting the same future resume in the order they started waiting."""
        if topic in self._remote_topics:
            return None
        future = self._awaited.get(topic)
        if future is None or future.done():
            future = self._awaited[topic] = self._loop.create_future()
        return future

    def unsubscribe(self, topic: bytes) -> None:
        """Undo one ``subscribe`` (on the last local subscriber leaving)."""
        self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        for key in [key for key in self._recv_seq if key[0] == topic]:
            del self._recv_seq[key]
        self._kick()

    def _barrier(self) -> asyncio.Future[bool]:
        # Subscriptions made in the same loop iteration share one barrier round.
        if self._next_barrier is None:
            topic = b"s%d.%d\0" % (self.member, next(self._barrier_ids))
            barrier = _Barrier(topic, set(), self._loop.create_future())
            self._next_barrier = barrier
            self._loop.call_soon(self._start_barrier, barrier)
        return self._next_barrier.future

    def _start_barrier(self, barrier: _Barrier) -> None:
        self._next_barrier = None
        if self._closed:
            barrier.future.set_result(False)
            return
        barrier.expected = self._ready_peers() - {self.member}
        if not barrier.expected:
            barrier.future.set_result(True)
            return
        self._barriers[barrier.topic] = barrier
        self._sub.setsockopt(zmq.SUBSCRIBE, barrier.topic)
        barrier.timer = self._loop.call_later(
            self._sync_timeout, self._finish_barrier, barrier, False
        )
        self._kick()

    def _finish_barrier(self, barrier: _Barrier, complete: bool) -> None:
        if self._barriers.pop(barrier.topic, None) is None:
            return
        if barrier.timer is not None:
            barrier.timer.cancel()
        if not complete:
            self.sync_timeouts += 1
            missing = sorted(barrier.expected - barrier.answered)
            log.warning("subscribe barrier timed out waiting for peers %s", missing)
        if not self._closed:
            self._sub.setsockopt(zmq.UNSUBSCRIBE, barrier.topic)
            self._kick()
        if not barrier.future.done():
            barrier.future.set_result(complete)

    async def wait_for_peers(self, peers: set[int], timeout: float) -> set[int]:
        """Wait until the subscriptions of every member in ``peers`` reached our XPUB
        (a SUB sends all its subscriptions at once when it attaches). Returns the peers
        still missing at ``timeout``."""
        deadline = self._loop.time() + timeout
        while not peers <= self._peers_seen and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        return peers - self._peers_seen

    # -- reading ----------------------------------------------------------------------

    def _kick(self) -> None:
        # ZMQ_FD is edge-triggered and any socket operation can consume the edge, so
        # after sending or changing subscriptions we poll EVENTS ourselves.
        for sock, drain in ((self._xpub, self._drain_xpub), (self._sub, self._drain_sub)):
            key = id(sock)
            if key not in self._drain_scheduled:
                self._drain_scheduled.add(key)
                self._loop.call_soon(drain)

    def _drain_xpub(self) -> None:
        self._drain_scheduled.discard(id(self._xpub))
        if self._closed:
            return
        for _ in range(_RECV_BUDGET):
            if not int(self._xpub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            message = self._xpub.recv(zmq.NOBLOCK)
            self._on_subscription(message[0] == 1, message[1:])
        self._drain_scheduled.add(id(self._xpub))
        self._loop.call_soon(self._drain_xpub)

    def _on_subscription(self, subscribe: bool, topic: bytes) -> None:
        kind = topic[0] if topic else 0
        if kind == KIND_SYNC:
            if subscribe:  # a peer's barrier: answer once everything before it applied
                self._send(topic + _HEADER.pack(self.member, self.incarnation, 0, 0, 0))
            return
        if kind == KIND_INBOX and subscribe:
            self._peers_seen.add(int(topic[1:-1]))
        if subscribe:
            self._remote_topics.add(topic)
            awaited = self._awaited.pop(topic, None)
            if awaited is not None and not awaited.done():
                awaited.set_result(None)
        else:
            self._remote_topics.discard(topic)
            self._send_seq.pop(topic, None)
            if kind == KIND_INBOX:
                self._peers_seen.discard(int(topic[1:-1]))

    def _drain_sub(self) -> None:
        self._drain_scheduled.discard(id(self._sub))
        if self._closed:
            return
        for _ in range(_RECV_BUDGET):
            if not int(self._sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            self._on_frame(self._sub.recv(zmq.NOBLOCK))
        self._drain_scheduled.add(id(self._sub))
        self._loop.call_soon(self._drain_sub)

    def _on_frame(self, frame: bytes) -> None:
        end = frame.index(b"\0") + 1
        topic = frame[:end]
        origin, incarnation, first_seq, count, stamp = _HEADER.unpack_from(frame, end)
        kind = topic[0]
        if kind == KIND_SYNC:
            barrier = self._barriers.get(topic)
            if barrier is not None:
                barrier.answered.add(origin)
                if barrier.expected <= barrier.answered:
                    self._finish_barrier(barrier, True)
            return
        self._check_sequence(topic, origin, incarnation, first_seq, count)
        payloads = []
        offset = end + _HEADER.size
        for _ in range(count):
            (length,) = _LENGTH.unpack_from(frame, offset)
            offset += 4
            payloads.append(frame[offset : offset + length])
            offset += length
        if kind == KIND_CHANNEL:
            self._on_channel(topic, payloads, stamp)
        elif kind == KIND_USER:
            if self._on_user is not None:
                self._on_user(topic, payloads)
        elif kind == KIND_INBOX and self._on_inbox is not None:
            self._on_inbox(origin, payloads)

    def _check_sequence(
        self, topic: bytes, origin: int, incarnation: int, first_seq: int, count: int
    ) -> None:
        key = (topic, origin)
        previous = self._recv_seq.get(key)
        if previous is not None and previous[0] == incarnation and first_seq > previous[1]:
            gap = first_seq - previous[1]
            self.lost += gap
            log.warning("bus: %d message(s) lost from member %d on %r", gap, origin, topic)
        self._recv_seq[key] = (incarnation, first_seq + count)
