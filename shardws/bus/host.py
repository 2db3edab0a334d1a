"""The host bus: ZeroMQ PUB/SUB over ipc between the processes of one host, through
the forwarder (``shardws.bus.forwarder``).

Topology: every member connects one PUSH to the forwarder's publish endpoint and one
SUB to its outbound endpoint. A subscription travels one pipe and is applied in the
forwarder's C code: no other member's Python or ZeroMQ thread sees it (a PUSH takes no
subscriptions), so its cost does not grow with the number of members. A member drops
the frames it published itself (it delivers locally itself), so each publication
reaches every subscribed member exactly once. A member whose process is replaced, or a
restarted forwarder, is reconnected by ZeroMQ (a SUB sends all its subscriptions again
when it reconnects).

The wire format (topics, frame header) is ``shardws.pure.busframe``. Publications queued
for the same topic during one event-loop iteration travel in one frame (batching
multiplies ZeroMQ's throughput), and payloads are the already-encoded client pushes, so no
receiver re-serializes.

Guarantees:

* Order: payloads from one origin on one topic arrive in publish order (one pipe in,
  one forwarding thread, one pipe out).
* Loss is counted, never silent: ZeroMQ drops at a high-water mark without telling
  anyone, and this member's PUSH refuses a frame at its own (this member drops it
  rather than block its loop: ``send_drops``), so receivers compare
  per-(origin, topic) sequence numbers and add every gap to ``lost``. A sender forgets
  a topic's sequence after ``SEQUENCE_IDLE`` s without a publication on it, so a loss
  followed by that much silence on the topic is not counted (nothing after it reveals
  it, as for a lost last publication).
* Liveness barrier: the future returned by ``subscribe`` resolves True once the
  subscription is live at the forwarder, so anything any member publishes afterwards
  reaches us. The member subscribes a unique barrier topic after the new topic (same
  pipe, applied in order) and publishes probes on it until one comes back through the
  forwarder. One round runs at a time: the subscriptions made meanwhile share the
  next, and a finished round's barrier topic is unsubscribed with them (or by the
  sweep, within ``SEQUENCE_IDLE``), one wake-up of the ZeroMQ threads for both.
  Members in ``relays`` (the cluster bridge) must answer too: the bridge answers once
  the subscription is live on the peer hosts. No answer within ``sync_timeout`` (the
  forwarder restarting, a relay stuck) is counted in ``sync_timeouts`` and the future
  resolves False: the subscription may not be live, and callers must not say it is.
* A booting member calls ``sync`` before serving clients: once it resolves True its
  inbox subscription is live at the forwarder and its publications pass.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from shardws.bus.forwarder import PUBLISH_HWM_FLOOR, Endpoints
from shardws.pure.busframe import HEADER as _HEADER
from shardws.pure.busframe import KIND_CHANNEL, KIND_INBOX, KIND_SYNC, KIND_USER, inbox_topic
from shardws.pure.busframe import LENGTH as _LENGTH

log = logging.getLogger("shardws.bus")

_MAX_FRAME_BYTES = 256 * 1024  # beyond this a batch is split: keeps receivers' latency flat
_RECV_BUDGET = 512  # frames per reader callback, so one busy socket cannot starve the loop
PROBE_INTERVAL = 0.02  # seconds between barrier probes until one comes back
SEQUENCE_IDLE = 60.0  # seconds without a publication after which a topic's seq is dropped
_WHEN_SUBSCRIBED_POLLS = 1000  # when_subscribed: at most this many checks, 10 ms apart
#: Seconds ``close`` gives this member's last frames to reach the forwarder: what a
#: draining process sent last (an owner's answers and publications, the rings it hands
#: over) would otherwise die in its own pipe, unseen (its successor is a new incarnation,
#: so no receiver counts the gap). Bounded: a forwarder that is gone costs this much.
CLOSE_LINGER = 0.5


@dataclass(eq=False)
class _Barrier:
    topic: bytes
    expected: set[int]
    future: asyncio.Future[bool]
    answered: set[int] = field(default_factory=set)
    echoed: bool = False  # our own probe came back through the forwarder
    timer: asyncio.TimerHandle | None = None
    probe: asyncio.TimerHandle | None = None


class Bus:
    """One member's bus endpoints. Create and use inside the member's own event loop,
    after fork (a zmq Context must never cross a fork)."""

    def __init__(
        self,
        member: int,
        forwarder: Endpoints,
        on_channel: Callable[[bytes, list[bytes], int], None],
        relays: Callable[[], set[int]],
        *,
        hwm: int = 100_000,
        sync_timeout: float = 2.0,
        on_user: Callable[[bytes, list[bytes]], None] | None = None,
        on_inbox: Callable[[int, list[bytes]], None] | None = None,
        inbox_live: Callable[[int], bool] | None = None,
    ) -> None:
        """``forwarder`` is the forwarder's endpoints (``bus.forwarder.endpoints``). ``relays()``
        gives the members that must answer a barrier besides the forwarder (the ready
        bridge in a cluster, else none). ``on_channel(topic, payloads, stamp)`` gets
        channel publications, ``on_user(topic, payloads)`` messages on subscribed user
        topics, ``on_inbox(origin, payloads)`` the messages other members sent to this
        member's inbox (``origin`` is the sender's member index, from the bus header).
        Unset callbacks ignore their kind. ``inbox_live(member)`` says whether a
        member's inbox subscription is live (for ``when_subscribed``)."""
        self.member = member
        self.incarnation = int.from_bytes(os.urandom(4), "big")
        self.lost = 0  # bus payloads detected missing
        self.sync_timeouts = 0
        self.send_drops = 0  # frames refused at our PUSH's high-water mark
        self._drop_logged = 0.0  # monotonic time of the last warning about them
        # Bus messages this member's Python read, of any kind (barrier echoes included):
        # what shows which processes a subscription or a publication costs.
        self.reads = 0
        self._forwarder = forwarder
        self._on_channel = on_channel
        self._relays = relays
        self._sync_timeout = sync_timeout
        self._inbox_live = inbox_live
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context(io_threads=1)
        # A PUSH, not a PUB: subscriptions never travel back to a publisher, so a new
        # topic anywhere on the host wakes none of this member's threads.
        self._pub = self._ctx.socket(zmq.PUSH)
        self._sub = self._ctx.socket(zmq.SUB)
        for sock in (self._pub, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 20)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        # ZeroMQ's default HWM (1000) silently dropped most of a fast stream here. ``hwm``
        # bounds the data direction only: the other direction carries subscriptions and
        # barrier probes, which a SUB drops at its high-water mark without a trace (a
        # subscription never applied, a barrier that cannot finish); they are bounded by
        # the topics subscribed, so that direction has no limit.
        self._pub.setsockopt(zmq.SNDHWM, max(hwm, PUBLISH_HWM_FLOOR))
        self._sub.setsockopt(zmq.RCVHWM, hwm)
        self._sub.setsockopt(zmq.SNDHWM, 0)
        self._awaited: dict[bytes, asyncio.Future[None]] = {}  # see when_subscribed
        self._send_seq: dict[bytes, int] = {}
        self._seq_used: set[bytes] = set()  # topics published since the last seq sweep
        self._recv_seq: dict[tuple[bytes, int], tuple[int, int]] = {}
        self._pending: dict[bytes, list[bytes]] = {}
        self._pending_since = 0  # wall-clock ns of the first publish of this batch
        self._flush_scheduled = False
        self._barrier_ids = itertools.count()
        self._next_barrier: _Barrier | None = None
        self._barriers: dict[bytes, _Barrier] = {}
        # Finished rounds' barrier topics, still subscribed: see _finish_barrier.
        self._spent_barriers: list[bytes] = []
        self._drain_scheduled = False
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._on_user = on_user
        self._on_inbox = on_inbox

    def start(self) -> None:
        """Connect to the forwarder and start reading. Returns at once; ZeroMQ connects
        (and reconnects after a forwarder restart) by itself."""
        self._pub.connect(self._forwarder.publish)
        self._sub.setsockopt(zmq.SUBSCRIBE, inbox_topic(self.member))
        self._sub.connect(self._forwarder.outbound)
        self._loop.add_reader(self._sub.FD, self._drain_sub)
        self._sweep = self._loop.call_later(SEQUENCE_IDLE, self._sweep_sequences)
        self._kick()

    def close(self) -> None:
        """Stop reading and close the sockets; pending barriers resolve with False.
        What was published is sent first (waiting at most ``CLOSE_LINGER`` s for the
        forwarder to take it)."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        for barrier in list(self._barriers.values()):
            self._finish_barrier(barrier, False)
        if self._next_barrier is not None:
            self._finish_barrier(self._next_barrier, False)
        if self._sweep is not None:
            self._sweep.cancel()
        self._loop.remove_reader(self._sub.FD)
        self._pub.close(linger=int(CLOSE_LINGER * 1000))
        self._sub.close(linger=0)
        self._ctx.term()

    # -- publishing -------------------------------------------------------------------

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue ``payload`` for members subscribed to ``topic``; sent at the end of this
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
            self._send_batches(topic, payloads)

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
        self._seq_used.add(topic)

    def _send(self, frame: bytes) -> None:
        try:
            self._pub.send(frame, zmq.NOBLOCK, copy=len(frame) < 16384)
        except zmq.Again:
            # The forwarder is behind by the high-water mark (or gone): drop rather than
            # block the loop. The sequence number was taken, so receivers count it lost.
            self.send_drops += 1
            now = time.monotonic()
            if now - self._drop_logged > 1.0:
                self._drop_logged = now
                log.warning("bus: the forwarder is not taking frames; %d dropped", self.send_drops)

    def _sweep_sequences(self) -> None:
        # A sender cannot see who subscribes, so it forgets topics gone quiet instead.
        # Starting a topic again at 0 is never counted as a loss by receivers.
        self._drop_spent_barriers()
        used, self._seq_used = self._seq_used, set()
        for topic in [topic for topic in self._send_seq if topic not in used]:
            del self._send_seq[topic]
        self._sweep = self._loop.call_later(SEQUENCE_IDLE, self._sweep_sequences)

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, topic: bytes) -> asyncio.Future[bool]:
        """Subscribe to ``topic``; the future resolves (True) once the subscription is
        live at the forwarder (and every relay), or (False) after ``sync_timeout``.
        Call once per topic (on the first local subscriber)."""
        self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._kick()
        return self._barrier()

    def sync(self) -> asyncio.Future[bool]:
        """A barrier round without a new subscription: resolves (True) once every
        subscription made so far (this member's inbox included) is live at the
        forwarder and this member's publications pass it."""
        return self._barrier()

    def when_subscribed(self, topic: bytes) -> asyncio.Future[None] | None:
        """None if ``topic`` (a member's inbox) is live now, so a message published on
        it reaches that member; otherwise a future that resolves once it is (checked
        every 10 ms, for at most 10 s). A message for a topic nobody subscribes to is
        dropped without a trace, so a request to a member that is still booting should
        wait for this first. Callers asking while a topic's future is pending get that
        same future (even if the member became live meanwhile), so callers resume in
        the order they started waiting and none overtakes an earlier one. Topics other
        than inboxes are taken as live."""
        future = self._awaited.get(topic)
        if future is not None:
            return future  # pending: removed from _awaited when it resolves
        member = _inbox_member(topic)
        live = self._inbox_live
        if member is None or live is None or live(member):
            return None
        future = self._awaited[topic] = self._loop.create_future()

        def check(polls: int) -> None:
            if live(member) or polls >= _WHEN_SUBSCRIBED_POLLS or self._closed:
                self._awaited.pop(topic, None)
                if not future.done():  # a caller may have cancelled it
                    future.set_result(None)
                return
            self._loop.call_later(0.01, check, polls + 1)

        self._loop.call_later(0.01, check, 1)
        return future

    def unsubscribe(self, topic: bytes) -> None:
        """Undo one ``subscribe`` (on the last local subscriber leaving)."""
        self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        for key in [key for key in self._recv_seq if key[0] == topic]:
            del self._recv_seq[key]
        self._kick()

    def _barrier(self) -> asyncio.Future[bool]:
        # One round at a time: subscriptions made while a round is in flight share the
        # next one, started when it ends, so a burst of subscribes costs about one
        # round (a barrier topic subscribed and unsubscribed, probes, an echo) however
        # many it carries. Its deadline runs from its first subscription, so none
        # waits longer than ``sync_timeout`` for its answer.
        barrier = self._next_barrier
        if barrier is None:
            topic = b"s%d.%d\0" % (self.member, next(self._barrier_ids))
            barrier = _Barrier(topic, set(), self._loop.create_future())
            barrier.timer = self._loop.call_later(
                self._sync_timeout, self._finish_barrier, barrier, False
            )
            self._next_barrier = barrier
            if not self._barriers:
                self._loop.call_soon(self._start_barrier, barrier)
        return barrier.future

    def _start_barrier(self, barrier: _Barrier) -> None:
        if self._next_barrier is not barrier:
            return  # already started, or timed out while it waited
        self._next_barrier = None
        if self._closed:
            self._finish_barrier(barrier, False)
            return
        barrier.expected = self._relays() - {self.member}
        self._barriers[barrier.topic] = barrier
        self._drop_spent_barriers()
        # After the topics it confirms, on the same pipe: applied after them.
        self._sub.setsockopt(zmq.SUBSCRIBE, barrier.topic)
        self._probe(barrier)

    def _drop_spent_barriers(self) -> None:
        for topic in self._spent_barriers:
            self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        if self._spent_barriers:
            self._spent_barriers.clear()
            self._kick()

    def _probe(self, barrier: _Barrier) -> None:
        # A probe reaching the forwarder before our barrier subscription is dropped
        # there, so probe again until one comes back (the barrier's timer bounds it).
        if barrier.echoed or self._closed or barrier.topic not in self._barriers:
            return
        self._send(barrier.topic + _HEADER.pack(self.member, self.incarnation, 0, 0, 0))
        self._kick()
        barrier.probe = self._loop.call_later(PROBE_INTERVAL, self._probe, barrier)

    def _finish_barrier(self, barrier: _Barrier, complete: bool) -> None:
        started = self._barriers.pop(barrier.topic, None) is not None
        if not started and self._next_barrier is not barrier:
            return  # finished already
        for handle in (barrier.timer, barrier.probe):
            if handle is not None:
                handle.cancel()
        if not complete:
            self.sync_timeouts += 1
            missing = sorted(barrier.expected - barrier.answered)
            log.warning(
                "subscribe barrier timed out (forwarder %s, waiting for relays %s)",
                "answered" if barrier.echoed else "silent" if started else "not asked yet",
                missing,
            )
        if self._next_barrier is barrier:  # timed out while the round before it ran
            self._next_barrier = None
        elif not self._closed:
            # Unsubscribed together with the next round's subscriptions (or by the
            # sweep), not now: a round then wakes this member's ZeroMQ thread and the
            # forwarder's threads once instead of twice. A late probe's echo on it is
            # ignored (no round has that topic).
            self._spent_barriers.append(barrier.topic)
        if not barrier.future.done():
            barrier.future.set_result(complete)
        waiting = self._next_barrier
        if waiting is not None and not self._barriers:
            self._loop.call_soon(self._start_barrier, waiting)

    # -- reading ----------------------------------------------------------------------

    def _kick(self) -> None:
        # ZMQ_FD is edge-triggered and any socket operation can consume the edge, so
        # after sending or changing subscriptions we poll EVENTS ourselves.
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_sub)

    def _drain_sub(self) -> None:
        self._drain_scheduled = False
        if self._closed:
            return
        for _ in range(_RECV_BUDGET):
            if not int(self._sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            self._on_frame(self._sub.recv(zmq.NOBLOCK))
            self.reads += 1
        self._drain_scheduled = True
        self._loop.call_soon(self._drain_sub)

    def _on_frame(self, frame: bytes) -> None:
        end = frame.index(b"\0") + 1
        topic = frame[:end]
        origin, incarnation, first_seq, count, stamp = _HEADER.unpack_from(frame, end)
        kind = topic[0]
        if kind == KIND_SYNC:
            barrier = self._barriers.get(topic)
            if barrier is not None:
                if origin == self.member:
                    barrier.echoed = True
                else:
                    barrier.answered.add(origin)
                if barrier.echoed and barrier.expected <= barrier.answered:
                    self._finish_barrier(barrier, True)
            return
        if origin == self.member:
            return  # our own publication, delivered locally already
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


def _inbox_member(topic: bytes) -> int | None:
    if topic[:1] != b"i" or topic[-1:] != b"\0":
        return None
    try:
        return int(topic[1:-1])
    except ValueError:
        return None
