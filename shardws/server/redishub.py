"""The hub process (``shardws: hub``) of ``[cluster] engine = "redis"``: this host's bus
to and from the other hosts through one Redis (docs/cluster.md, "Choosing how hosts
join"; docs/architecture.md, "The engine").

It takes the bridge's place (the same scoreboard slot, the same relay for the host's
barriers) and its host bus side (``server.crosshost``); the workers and the admin run
the mesh's engine unchanged, since inside a host the bus stays. It holds two Redis
connections: one subscribed (pub/sub) and one that publishes.

* **Subscriptions.** ``local_xpub`` shows each bus topic (channel, user, inbox) once
  while some member of the host subscribes it; the hub subscribes the Redis channel
  ``prefix + topic`` then, and unsubscribes it when the last member leaves. So a host
  subscribes a channel once, not once per worker, and Redis sends a publication only
  to the hosts that want it.
* **Publications.** Every frame of this host's members on a channel or user topic, and
  to another host's inbox, is published to ``prefix + topic`` (the frame without its
  topic; Redis drops what nobody subscribes). The frames read during one event-loop
  iteration go out in one write, without waiting for the answers of the writes before
  it (a reader takes them in order), so Redis round trips do not grow with publications
  in flight (one ``PUBLISH`` per bus frame, and a bus frame carries every publication of
  a worker's loop iteration on its topic).
* **Barriers** (a subscribe reply means live on every host): a member's barrier topic
  follows its new topics on ``local_xpub``, so the hub subscribes ``prefix + barrier``
  after them on the same connection. Redis applies commands in order, so when it
  confirms the barrier's subscription the new topics are subscribed; every host
  publishes to that same Redis, so whatever any member of any host publishes from then
  on reaches this host. The hub then answers the member on the bus (and unsubscribes the
  barrier). While Redis is unreachable nothing is answered: the member's barrier times
  out and its subscribe is refused (error 108, close 4506 for a greeting).
* **Loss is counted, never silent.** A frame that cannot be published (Redis down, or
  more than ``[cluster] hwm`` waiting), or that was written but not answered when the
  connection failed, is counted in ``lost`` (its publications); what
  Redis drops on the way (a subscriber connection cut, e.g. by
  ``client-output-buffer-limit pubsub``) is counted by the receiving workers through the
  bus header's per-origin sequence numbers (``bus_lost``), as the mesh's losses are.
  Delivery inside a host goes on whatever Redis does.
* **Reconnection**: a connection that fails, or a subscriber that hears nothing (not even
  its own heartbeat) for ``timeout`` plus a heartbeat interval, is closed and opened
  again after a backoff (0.1 s doubling up to ``reconnect_max``); the subscriber then
  subscribes every topic the host has in one command. With ``sentinels``, each
  connection asks them for the master first, so a failover moves both connections.
* **Membership**: heartbeats on ``prefix + "m"`` (``crosshost.PeerView``): every hub
  publishes its own and subscribes everyone's, like the mesh's ``m`` topic; the view is
  written to shared memory as the bridge writes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

import zmq
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from shardws.config import Config
from shardws.log import RateLimitedLogger
from shardws.pure.busframe import (
    HEADER,
    KIND_INBOX,
    KIND_SYNC,
    ORIGIN,
)
from shardws.pure.cluster import host_number, host_of, member_id
from shardws.server.crosshost import (
    FORWARDED,
    HEARTBEAT_TOPIC,
    PeerView,
    host_bus_sockets,
    start_process,
)
from shardws.server.redisconn import (
    Backoff,
    Pipeline,
    connect,
    replies,
    sentinel_of,
    until_one_ends,
)
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables
from shardws.shm.view import effective_host_id

log = logging.getLogger("shardws.hub")

_RECV_BUDGET = 1024  # frames per socket per drain: one busy direction cannot starve
_SUBSCRIBE_CHUNK = 1000  # channels per SUBSCRIBE when subscribing everything again
_TICK = 0.1  # seconds between scoreboard heartbeats


class RedisHub:
    """The hub's sockets, connections and state; :meth:`run` until :meth:`stop`."""

    def __init__(self, slot: int, config: Config, tables: SharedTables, run_dir: str) -> None:
        cluster = config.cluster
        self.cluster = cluster
        self.settings = cluster.redis
        self.board = tables.board
        self.slot = slot
        self.host_id = effective_host_id(cluster.host_id)
        self.number = host_number(self.host_id)
        self.member = member_id(self.number, slot)
        self.prefix = self.settings.prefix.encode()
        self.membership = PeerView(
            self.host_id, self.number, tables.view, cluster.peer_timeout, log
        )
        self._incarnation = int.from_bytes(os.urandom(4), "big")
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self.local_xpub, self.local_sub = host_bus_sockets(self._ctx, config, run_dir)
        self.topics: set[bytes] = set()  # bus topics some member of this host subscribes
        # Subscription changes not yet sent: (subscribe?, Redis channel), in order.
        self._changes: list[tuple[bool, bytes]] = []
        self._barriers: dict[bytes, bytes] = {}  # Redis channel -> the member's bus topic
        self._held: list[bytes] = []  # barriers that came while the subscriber connected
        self._connecting = False
        # Frames to publish: (Redis channel, frame without its topic, publications).
        self._outbox: Pipeline[tuple[bytes, bytes, int]] | None = None
        self.subscriber_up = False
        self.publisher_up = False
        self._publisher_connecting = False  # frames wait meanwhile (bounded by hwm)
        self.connects = 0  # successful connections (both kinds)
        self.sent = 0  # bus frames published
        self.sent_bytes = 0
        self.lost = 0  # publications that could not be published
        self.barrier_timeouts = 0  # barriers not answered (Redis unreachable)
        self._stopping: asyncio.Event | None = None
        self._wake_subscriber: asyncio.Event | None = None
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refusal_log = RateLimitedLogger("shardws.hub", burst=5, level=logging.WARNING)
        self._sentinel = sentinel_of(self.settings)

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def close(self) -> None:
        for sock in (self.local_xpub, self.local_sub):
            sock.close(linger=0)
        self._ctx.term()

    async def run(self) -> None:
        """Forward until :meth:`stop`; stamps the scoreboard heartbeat as it goes."""
        loop = self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._outbox = Pipeline(_publish_command, self._published)
        self._wake_subscriber = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            loop.add_signal_handler(signum, self.stop)
        for sock in (self.local_sub, self.local_xpub):
            loop.add_reader(sock.FD, self._kick)
        log.info(
            "hub of host %r (number %d) through Redis %s, prefix %r",
            self.host_id,
            self.number,
            list(self.settings.cluster_nodes or self.settings.sentinels) or self.settings.address,
            self.settings.prefix,
        )
        tasks = [
            asyncio.create_task(coroutine) for coroutine in (*self._redis_tasks(), self._ticker())
        ]
        self._kick()
        try:
            await self._stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in (self.local_sub, self.local_xpub):
                loop.remove_reader(sock.FD)

    def _redis_tasks(self) -> tuple[Coroutine[Any, Any, None], ...]:
        """What carries the host's traffic to and from Redis (one connection each way)."""
        return (self._subscriber(), self._publisher())

    async def _ticker(self) -> None:
        row = self.board.row(self.slot)
        interval = self.cluster.heartbeat_interval
        next_beat = 0.0
        while True:
            now = time.monotonic()
            row[Column.HEARTBEAT_NS] = time.monotonic_ns()
            if now >= next_beat:
                next_beat = now + interval
                workers = self.board.workers()
                self._publish_topic(HEARTBEAT_TOPIC, self.membership.beat(workers), 0)
                self._write_view()
            self._kick()  # ZMQ_FD is edge-triggered: never rely on one edge alone
            await asyncio.sleep(_TICK)

    def _write_view(self) -> None:
        """The view and this process's state, to shared memory (every heartbeat, and at
        once when the subscriber goes up or down: the workers read ``crossing``)."""
        self.membership.refresh(time.monotonic(), tuple(self.board.workers()), self.own_stats())

    def own_stats(self) -> dict[str, Any]:
        """What ``/health`` shows of this process (the view's own entry)."""
        return {
            "host_id": self.host_id,
            "engine": "redis",
            "redis": list(self.settings.sentinels) or self.settings.address,
            "redis_up": self.subscriber_up and self.publisher_up,
            # Read by the workers (View.crossing): no subscribe or greeting is live while
            # the subscriber is down, even on a topic this host has.
            "crossing": self.subscriber_up,
            "redis_connects": self.connects,
            "messages_sent": self.sent,
            "bytes_sent": self.sent_bytes,
            "messages_lost": self.lost,
            "own_messages_dropped": self.membership.received_own,
            "barrier_timeouts": self.barrier_timeouts,
            "malformed": self.membership.malformed,
            "conflicts": sorted(self.membership.conflicts),
            "topics": len(self.topics),
        }

    # -- Redis connections ----------------------------------------------------------------

    async def _connect(self) -> Connection:
        connection = await connect(self.settings, self._sentinel)
        self.connects += 1
        return connection

    async def _subscriber(self) -> None:
        backoff = Backoff(self.settings.reconnect_max)
        while True:
            self._connecting = True
            try:
                connection = await self._connect()
            except (RedisError, OSError) as exc:
                self._refusal_log.warning("Redis subscriber: cannot connect: %s", exc)
                self._connecting = False
                self.barrier_timeouts += len(self._held)
                self._held.clear()
                await asyncio.sleep(backoff.next())
                continue
            try:
                await self._subscribed(connection, backoff)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("Redis subscriber connection lost: %s", exc or type(exc).__name__)
            finally:
                self.subscriber_up = self._connecting = False
                self._write_view()
                self.barrier_timeouts += len(self._barriers) + len(self._held)
                self._held.clear()
                self._barriers.clear()
                await connection.disconnect(nowait=True)
            await asyncio.sleep(backoff.next())

    async def _subscribed(self, connection: Connection, backoff: Backoff) -> None:
        """Subscribe everything this host wants, then read and follow its changes
        until the connection fails."""
        channels = [self.prefix + HEARTBEAT_TOPIC, *(self.prefix + t for t in self.topics)]
        self._changes.clear()  # all in the snapshot: no await since it was taken
        commands: list[list[bytes | str]] = [
            ["SUBSCRIBE", *channels[i : i + _SUBSCRIBE_CHUNK]]
            for i in range(0, len(channels), _SUBSCRIBE_CHUNK)
        ]
        await connection.send_packed_command(connection.pack_commands(commands), False)
        self.subscriber_up = True
        self._connecting = False
        self._write_view()
        held, self._held = self._held, []
        for topic in held:  # after the topics they confirm, as on the bus
            self._barrier(topic)
        log.info("Redis subscriber connected: %d topic(s) subscribed", len(self.topics))
        await until_one_ends(
            asyncio.create_task(self._read(connection, backoff)),
            asyncio.create_task(self._send_changes(connection)),
        )

    async def _send_changes(self, connection: Connection) -> None:
        assert self._wake_subscriber is not None
        while True:
            await self._wake_subscriber.wait()
            self._wake_subscriber.clear()
            changes, self._changes = self._changes, []
            commands: list[list[bytes | str]] = []
            for subscribe, channel in changes:  # consecutive ones of a kind: one command
                name = "SUBSCRIBE" if subscribe else "UNSUBSCRIBE"
                if commands and commands[-1][0] == name:
                    commands[-1].append(channel)
                else:
                    commands.append([name, channel])
            if commands:
                await connection.send_packed_command(connection.pack_commands(commands), False)

    async def _read(self, connection: Connection, backoff: Backoff) -> None:
        # Our own heartbeat comes back every heartbeat_interval: silence means a dead link.
        silence = self.settings.timeout + self.cluster.heartbeat_interval
        heartbeat = self.prefix + HEARTBEAT_TOPIC
        prefix_length = len(self.prefix)
        async for response in replies(connection, silence):
            if isinstance(response, ResponseError):
                raise response
            kind, channel = response[0], response[1]
            if kind == b"message":
                if channel == heartbeat:
                    backoff.reset()
                    self.membership.on_heartbeat(response[2])
                else:
                    self._on_remote_frame(channel[prefix_length:] + response[2])
            elif kind == b"subscribe":
                topic = self._barriers.pop(channel, None)
                if topic is not None:  # a member's barrier: live on every host now
                    self._answer(topic)
                    self._change(False, channel)

    def _on_remote_frame(self, frame: bytes) -> None:
        # Dropped: ours, back from a channel this host subscribes too, and malformed ones.
        if self.membership.origin_of(frame, frame.find(b"\0") + 1) is None:
            return
        self.local_xpub.send(frame, 0, copy=len(frame) < 16384)
        self._kick()

    async def _publisher(self) -> None:
        outbox = self._outbox
        assert outbox is not None
        backoff = Backoff(self.settings.reconnect_max)
        while True:
            self._publisher_connecting = True
            try:
                connection = await self._connect()
            except (RedisError, OSError) as exc:
                self._refusal_log.warning("Redis publisher: cannot connect: %s", exc)
                self._publisher_connecting = False
                self._lose(outbox.take())
                await asyncio.sleep(backoff.next())
                continue
            self.publisher_up = True
            self._publisher_connecting = False
            backoff.reset()
            try:
                await outbox.run(connection)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("Redis publisher connection lost: %s", exc or type(exc).__name__)
            finally:
                self.publisher_up = False
                self._lose(outbox.take())  # written but not answered: counted as lost
                await connection.disconnect(nowait=True)
            await asyncio.sleep(backoff.next())

    def _published(self, frame: tuple[bytes, bytes, int], answer: Any) -> None:
        if isinstance(answer, RedisError):  # refused (e.g. an ACL): not published
            self._lose([frame])
        else:
            self.sent += 1
            self.sent_bytes += len(frame[1])

    def _lose(self, frames: list[tuple[bytes, bytes, int]]) -> None:
        lost = sum(count for _, _, count in frames)
        if lost:
            self.lost += lost
            self._refusal_log.warning("%d publication(s) could not cross to Redis", lost)

    def _publish(self, channel: bytes, data: bytes, count: int) -> None:
        outbox = self._outbox
        if outbox is None or not (self.publisher_up or self._publisher_connecting):
            self._lose([(channel, data, count)])
            return
        if len(outbox.outbox) >= self.cluster.hwm:
            self._lose([(channel, data, count)])
            return
        outbox.put((channel, data, count))

    # -- the host bus -------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        more = False
        for sock, handler in (
            (self.local_xpub, self._on_local_subscription),
            (self.local_sub, self._on_local_frame),
        ):
            for _ in range(_RECV_BUDGET):
                if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    break
                handler(sock.recv(zmq.NOBLOCK))
            else:
                more = True
        if more:
            self._kick()

    def _on_local_subscription(self, message: bytes) -> None:
        subscribe, topic = message[0] == 1, message[1:]
        kind = topic[0] if topic else 0
        if kind == KIND_SYNC:
            if subscribe:
                self._barrier(topic)
        elif kind in FORWARDED:
            if subscribe:
                self.topics.add(topic)
            else:
                self.topics.discard(topic)
            self._change_topic(subscribe, topic)

    def _change_topic(self, subscribe: bool, topic: bytes) -> None:
        """Subscribe (or unsubscribe) the Redis channel of bus ``topic``."""
        self._change(subscribe, self.prefix + topic)

    def _change(self, subscribe: bool, channel: bytes) -> None:
        if not self.subscriber_up:
            return  # the next connection subscribes self.topics
        self._changes.append((subscribe, channel))
        assert self._wake_subscriber is not None
        self._wake_subscriber.set()

    def _barrier(self, topic: bytes) -> None:
        """A member's barrier: answered once Redis confirms it (see the module)."""
        if self._connecting:
            self._held.append(topic)  # answered once connected, or given up with it
            return
        if not self.subscriber_up:
            self.barrier_timeouts += 1
            self._refusal_log.warning("barrier %r not answered: Redis is unreachable", topic)
            return
        channel = self.prefix + topic
        self._barriers[channel] = topic
        self._change(True, channel)

    def _answer(self, topic: bytes) -> None:
        self.local_xpub.send(topic + HEADER.pack(self.member, self._incarnation, 0, 0, 0))
        self._kick()

    def _on_local_frame(self, frame: bytes) -> None:
        end = frame.index(b"\0") + 1
        kind = frame[0]
        if kind not in FORWARDED:
            return  # a barrier probe
        (origin,) = ORIGIN.unpack_from(frame, end)
        if host_of(origin) != self.number:
            return  # another host's frame we delivered here, back through the forwarder
        if kind == KIND_INBOX and _inbox_host(frame[:end]) == self.number:
            return  # from one member of this host to another
        self._publish_topic(frame[:end], frame[end:], HEADER.unpack_from(frame, end)[3])

    def _publish_topic(self, topic: bytes, data: bytes, count: int) -> None:
        """Publish a frame of bus ``topic`` (``data``: the frame without its topic;
        ``count``: its publications, counted if lost)."""
        self._publish(self.prefix + topic, data, count)


def _publish_command(frame: tuple[bytes, bytes, int]) -> tuple[str, bytes, bytes]:
    return ("PUBLISH", frame[0], frame[1])


def _inbox_host(topic: bytes) -> int | None:
    try:
        return host_of(int(topic[1:-1]))
    except ValueError:
        return None


def run_hub(slot: int, config: Config, tables: SharedTables, run_dir: str) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    row = start_process("hub", slot, config, tables)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    hub: RedisHub
    if config.cluster.redis.cluster_nodes:
        from shardws.server.redisclusterhub import ClusterHub  # its subclass

        hub = ClusterHub(slot, config, tables, run_dir)
    else:
        hub = RedisHub(slot, config, tables, run_dir)
    row[Column.STATE] = ProcessState.READY
    try:
        asyncio.run(hub.run())
    finally:
        hub.close()
        row[Column.STATE] = ProcessState.DEAD
    log.info("hub stopped")
    return 0
