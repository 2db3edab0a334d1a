"""The hub process of ``[cluster] engine = "redis"`` on a Redis Cluster (``[cluster.redis]
cluster_nodes``): ``server.redishub``'s host side unchanged, its Redis side sharded
(docs/cluster.md, "Redis Cluster").

* **Names and slots.** A bus topic's Redis channel is ``prefix + kind + "{" + name + "}"``
  (``pure.redisslots.redis_channel``): the topic's name is the hash tag, so a channel's
  pub/sub lives on the slot, and the master, of its keys (``prefix + "{" + channel +
  "}:..."``). Frames go out with ``SPUBLISH`` and subscriptions with ``SSUBSCRIBE``: a
  publication reaches only the master serving its channel's slot (and that master's
  replicas), never every node as ``PUBLISH`` does on a cluster.
* **One link per master.** The slot map (``CLUSTER SLOTS``, asked of the masters known,
  then of the seeds ``cluster_nodes``) places each channel the host wants on its master.
  Each master the host needs gets one subscription connection (opened when the first
  channel lands there) and one publishing connection (opened with the first frame for
  it); what one event-loop iteration routes to a master goes out in one write
  (``redisconn.Pipeline``). Both stay open while that node serves slots.
* **Membership.** The heartbeat topic ``m`` is one channel, so one slot: the master of
  that slot carries every host's heartbeats (each hub ``SPUBLISH``es its own and
  ``SSUBSCRIBE``s everyone's there).
* **Barriers** (a subscribe reply means live on every host). One connection's commands
  are applied in order, and a ``PING n`` on a subscribed connection answers ``pong n``
  in that order. A member's barrier follows its new topics on ``local_xpub``; when it
  comes, every master whose subscription connection has changes not yet confirmed gets
  a mark (``PING n``) after them, and the heartbeat's master gets one in any case (proof
  that the cluster answers). The barrier is answered once each of those marks is back:
  then every topic any member subscribed before it is subscribed on the master serving
  its slot, and since every host publishes a channel to that same master, whatever any
  member of any host publishes from then on reaches this host. A master whose connection
  is being opened confirms with the mark that follows its ``SSUBSCRIBE`` of everything.
  A barrier that comes while the first slot map is read, or while a channel dropped by
  its master (a slot moved) waits for its new one, is held until the next slot map has
  placed the channels (then refused if one is still nowhere). A barrier that depends on
  a connection that fails, on a master that answered a redirect or dropped a channel
  meanwhile, or that comes while a master it depends on is unreachable, is not answered
  (counted in ``barrier_timeouts``; the member's subscribe is refused with 108 and
  retried by the client).
* **Slots that move** (resharding). When a slot leaves a master, the master drops its
  shard channels with a ``sunsubscribe`` the hub did not ask for; a command about a slot
  a master does not serve answers ``MOVED`` (``ASK`` while the slot migrates). Either
  makes the hub ask for the slot map again (at most every ``_REFRESH_MIN`` s) and place
  its channels again: a channel whose master changed is subscribed on the new one. An
  ``SPUBLISH`` answered with ``MOVED``/``ASK`` is routed once more after the map is
  refreshed, then counted lost. Publications made while a channel is between masters do
  not reach this host: the receiving workers count them (``bus_lost``, from the frames'
  per-origin sequence numbers), as every loss on the hub is counted, never silent.
* **Failover.** A connection that fails, or hears nothing (not even its periodic mark's
  ``pong``) for ``timeout`` plus a heartbeat interval, is closed; the frames it had not
  had answered are counted lost (``messages_lost``), the slot map is asked again and the
  connection opened again after a backoff, so when the cluster promotes a replica the
  channels and frames move to it. A node that no longer serves any slot is let go (its
  frames not answered counted lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from shardws.config import Config
from shardws.pure.redisslots import SlotMap, key_slot, redis_channel, topic_of
from shardws.server.crosshost import HEARTBEAT_TOPIC
from shardws.server.redisconn import (
    REDIRECTS,
    Backoff,
    Pipeline,
    connect,
    read_slot_map,
    replies,
    until_one_ends,
)
from shardws.server.redishub import RedisHub
from shardws.shm.tables import SharedTables

log = logging.getLogger("shardws.hub")

_REFRESH_MIN = 0.1  # seconds between two slot map refreshes: a burst of MOVED asks once

#: A frame to publish: Redis channel, the frame without its topic, its publications, and
#: whether it was already routed again after a redirect.
_Item = tuple[bytes, bytes, int, bool]


@dataclass(eq=False)
class _Barrier:
    topic: bytes  # the member's barrier topic, answered on the bus
    needs: dict[_Shard, int] = field(default_factory=dict)  # master -> mark to confirm


class _Shard:
    """One master as this hub uses it (see the module): the channels of the host it
    serves, its subscription connection with its marks, and its publishing pipeline."""

    def __init__(self, hub: ClusterHub, address: str) -> None:
        self.hub = hub
        self.address = address
        self.channels: set[bytes] = set()  # subscribed there (or to be, once connected)
        # Not yet written: (subscribe?, channel), or a mark's number.
        self.changes: list[tuple[bool, bytes] | int] = []
        self.wake = asyncio.Event()
        self.subscriber_up = False
        self.connecting = False
        self.dirty = False  # changes since the last mark
        self.marks = 0  # marks queued
        self.confirmed = 0  # marks answered
        self.pipeline: Pipeline[_Item] = Pipeline(_spublish_command, self._published)
        self.publisher_up = False
        self.publisher_connecting = False
        self._subscriber: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None

    # -- what the hub asks ------------------------------------------------------------------

    def want(self, channel: bytes) -> None:
        self.channels.add(channel)
        self.dirty = True
        self._queue((True, channel))
        if self._subscriber is None:
            self.connecting = True
            self._subscriber = asyncio.create_task(self._subscribe_loop())

    def drop(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self._queue((False, channel))

    def mark(self, always: bool) -> int | None:
        """The mark a barrier waits for on this master: a new one after the changes not
        confirmed yet (``always``: even with none); None when the connection is down."""
        if self.subscriber_up:
            if self.dirty or (always and self.confirmed == self.marks):
                self._queue_mark()
            return self.marks
        if self.connecting:
            return self.marks + 1  # the one written after subscribing everything
        return None

    def pending(self) -> bool:
        """True while some change here is not confirmed by a mark."""
        return self.dirty or self.confirmed < self.marks or self.connecting

    def publish(self, item: _Item) -> bool:
        """Queue ``item`` for the next write; False when it cannot be (counted by the
        caller)."""
        if self._publisher is None:
            self.publisher_connecting = True
            self._publisher = asyncio.create_task(self._publish_loop())
        if not (self.publisher_up or self.publisher_connecting):
            return False
        if len(self.pipeline.outbox) >= self.hub.cluster.hwm:
            return False
        self.pipeline.put(item)
        return True

    async def close(self) -> None:
        tasks = [task for task in (self._subscriber, self._publisher) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.subscriber_up = self.publisher_up = self.connecting = False
        self.hub._lose_items(self.pipeline.take())

    def stats(self) -> dict[str, Any]:
        return {
            "channels": len(self.channels),
            "subscriber_up": self.subscriber_up,
            "publisher_up": self.publisher_up,
        }

    def _queue(self, change: tuple[bool, bytes] | int) -> None:
        if self.subscriber_up:  # else the next connection subscribes self.channels
            self.changes.append(change)
            self.wake.set()

    def _queue_mark(self) -> None:
        self.marks += 1
        self.dirty = False
        self._queue(self.marks)

    # -- the subscription connection --------------------------------------------------------

    async def _subscribe_loop(self) -> None:
        hub = self.hub
        backoff = Backoff(hub.settings.reconnect_max)
        while True:
            self.connecting = True
            try:
                connection = await hub.connect_to(self.address)
            except (RedisError, OSError) as exc:
                hub.refusal_log.warning(
                    "Redis %s subscriber: cannot connect: %s", self.address, exc
                )
                self.connecting = False
                hub.shard_down(self)
                await asyncio.sleep(backoff.next())
                continue
            try:
                await self._subscribed(connection, backoff)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("Redis %s subscriber lost: %s", self.address, exc or type(exc).__name__)
            finally:
                self.subscriber_up = self.connecting = False
                hub.shard_down(self)
                await connection.disconnect(nowait=True)
            await asyncio.sleep(backoff.next())

    async def _subscribed(self, connection: Connection, backoff: Backoff) -> None:
        by_slot: dict[int, list[bytes]] = {}
        for channel in self.channels:  # one SSUBSCRIBE may name channels of one slot only
            by_slot.setdefault(key_slot(channel), []).append(channel)
        self.changes.clear()  # all in the snapshot: no await since it was taken
        self.marks += 1
        self.dirty = False
        commands: list[list[bytes | str]] = [["SSUBSCRIBE", *group] for group in by_slot.values()]
        commands.append(["PING", b"%d" % self.marks])
        await connection.send_packed_command(connection.pack_commands(commands), False)
        self.subscriber_up = True
        self.connecting = False
        self.hub.shard_up()
        log.info("Redis %s subscriber: %d channel(s) subscribed", self.address, len(self.channels))
        await until_one_ends(
            asyncio.create_task(self._read(connection, backoff)),
            asyncio.create_task(self._send_changes(connection)),
        )

    async def _send_changes(self, connection: Connection) -> None:
        interval = self.hub.cluster.heartbeat_interval
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except TimeoutError:  # quiet: a mark proves the link alive (see _read)
                if self.confirmed == self.marks:
                    self._queue_mark()
            self.wake.clear()
            changes, self.changes = self.changes, []
            commands: list[tuple[str | bytes, ...]] = []
            for change in changes:
                if isinstance(change, int):
                    commands.append(("PING", b"%d" % change))
                else:
                    subscribe, channel = change
                    commands.append(("SSUBSCRIBE" if subscribe else "SUNSUBSCRIBE", channel))
            if commands:
                await connection.send_packed_command(connection.pack_commands(commands), False)

    async def _read(self, connection: Connection, backoff: Backoff) -> None:
        hub = self.hub
        silence = hub.settings.timeout + hub.cluster.heartbeat_interval
        async for response in replies(connection, silence):
            if isinstance(response, ResponseError):  # e.g. SSUBSCRIBE of a moved slot: MOVED
                hub.redirected(response, self)
                continue
            if not isinstance(response, list):  # PING's answer outside pub/sub mode
                self._confirm(response)
                continue
            kind = response[0]
            if kind == b"smessage":
                hub.on_message(response[1], response[2])
            elif kind == b"pong":
                backoff.reset()
                self._confirm(response[1])
            elif kind == b"sunsubscribe" and response[1] in self.channels:
                # Not asked for: the slot left this master (resharding).
                self.channels.discard(response[1])
                hub.moved(response[1], self)

    def _confirm(self, answer: Any) -> None:
        if isinstance(answer, bytes) and answer.isdigit():
            self.confirmed = max(self.confirmed, int(answer))
            self.hub.confirmed(self)

    # -- the publishing connection ----------------------------------------------------------

    async def _publish_loop(self) -> None:
        hub = self.hub
        backoff = Backoff(hub.settings.reconnect_max)
        while True:
            self.publisher_connecting = True
            try:
                connection = await hub.connect_to(self.address)
            except (RedisError, OSError) as exc:
                hub.refusal_log.warning("Redis %s publisher: cannot connect: %s", self.address, exc)
                self.publisher_connecting = False
                hub.connection_failed(self)
                hub._lose_items(self.pipeline.take())
                await asyncio.sleep(backoff.next())
                continue
            self.publisher_up = True
            self.publisher_connecting = False
            backoff.reset()
            try:
                await self.pipeline.run(connection)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("Redis %s publisher lost: %s", self.address, exc or type(exc).__name__)
            finally:
                self.publisher_up = False
                hub.connection_failed(self)
                hub._lose_items(self.pipeline.take())  # written but not answered: lost
                await connection.disconnect(nowait=True)
            await asyncio.sleep(backoff.next())

    def _published(self, item: _Item, answer: Any) -> None:
        if isinstance(answer, ResponseError):
            self.hub.publish_refused(item, answer, self)
        else:
            self.hub.sent += 1
            self.hub.sent_bytes += len(item[1])


class ClusterHub(RedisHub):
    """The hub on a Redis Cluster; see the module."""

    def __init__(self, slot: int, config: Config, tables: SharedTables, run_dir: str) -> None:
        super().__init__(slot, config, tables, run_dir)
        self.refusal_log = self._refusal_log
        self.slots: SlotMap | None = None
        self._shards: dict[str, _Shard] = {}
        self._heartbeat = redis_channel(self.prefix, HEARTBEAT_TOPIC)
        self.wanted: set[bytes] = {self._heartbeat}  # Redis channels the host subscribes
        self._placed: dict[bytes, _Shard] = {}
        # Wanted, dropped by their master (a slot moved) or of an unserved slot: not
        # subscribed anywhere until the next slot map places them.
        self._displaced: set[bytes] = set()
        self._waiting: list[_Barrier] = []
        self._retry: list[_Item] = []  # redirected frames, routed again after a refresh
        self._refresh: asyncio.Event | None = None
        self._first_map = True  # the first slot map is being read (barriers wait for it)
        self.refreshes = 0  # slot maps read
        self.redirects = 0  # MOVED/ASK answers and slots dropped under a subscription
        self.rerouted = 0  # frames routed again after a redirect

    # -- the slot map -----------------------------------------------------------------------

    def _redis_tasks(self) -> tuple[Coroutine[Any, Any, None], ...]:
        return (self._mapper(),)

    async def _mapper(self) -> None:
        """Read the slot map whenever asked (and at start), place the channels by it."""
        self._refresh = refresh = asyncio.Event()
        refresh.set()
        backoff = Backoff(self.settings.reconnect_max)
        try:
            while True:
                await refresh.wait()
                refresh.clear()
                slots = await self._read_slots()
                if slots is None:
                    self.refusal_log.warning("Redis Cluster: no node answers CLUSTER SLOTS")
                    self._first_map = False
                    self.barrier_timeouts += len(self._held)
                    self._held.clear()
                    await asyncio.sleep(backoff.next())
                    refresh.set()
                    continue
                backoff.reset()
                self.refreshes += 1
                if slots != self.slots:
                    log.info("Redis Cluster slot map: %d master(s)", len(slots.masters))
                self.slots = slots
                await self._place()
                self._first_map = False
                held, self._held = self._held, []
                for topic in held:  # after the topics they confirm, as on the bus
                    self._barrier(topic, held=True)
                retry, self._retry = self._retry, []
                for item in retry:
                    self._route(item)
                await asyncio.sleep(_REFRESH_MIN)
        finally:
            shards = list(self._shards.values())
            self._shards.clear()
            await asyncio.gather(*(shard.close() for shard in shards), return_exceptions=True)

    def refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.set()

    async def _read_slots(self) -> SlotMap | None:
        return await read_slot_map(self.settings, [*self._shards, *self.settings.cluster_nodes])

    async def _place(self) -> None:
        for channel in self.wanted:
            self._place_one(channel)
        assert self.slots is not None
        masters = self.slots.masters
        for address in [a for a in self._shards if a not in masters]:
            shard = self._shards.pop(address)  # serves no slot any more
            self._fail_barriers(shard)
            await shard.close()
        self.shard_up()

    def _place_one(self, channel: bytes) -> None:
        owner = self.slots.owner_of(channel) if self.slots is not None else None
        current = self._placed.get(channel)
        if current is not None:
            if current.address == owner and channel in current.channels:
                return
            current.drop(channel)
            del self._placed[channel]
        if owner is None:
            self._displaced.add(channel)
        else:
            shard = self._shard(owner)
            shard.want(channel)
            self._placed[channel] = shard
            self._displaced.discard(channel)

    def _shard(self, address: str) -> _Shard:
        shard = self._shards.get(address)
        if shard is None:
            shard = self._shards[address] = _Shard(self, address)
        return shard

    async def connect_to(self, address: str) -> Connection:
        connection = await connect(self.settings, address=address)
        self.connects += 1
        return connection

    # -- what the shards tell ---------------------------------------------------------------

    def on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._heartbeat:
            self.membership.on_heartbeat(data)
        else:
            self._on_remote_frame(topic_of(len(self.prefix), channel) + data)

    def moved(self, channel: bytes, shard: _Shard) -> None:
        """``channel`` was dropped by ``shard``'s master: placed again after a refresh."""
        self.redirects += 1
        self._displace(channel, shard)
        self._fail_barriers(shard)  # what they confirm may have been dropped with it
        self.refresh()

    def redirected(self, error: ResponseError, shard: _Shard) -> None:
        """An error answer on a subscription connection: a redirect drops the channels
        of its slot there (placed again after a refresh); others are logged."""
        if not isinstance(error, REDIRECTS):
            self.refusal_log.warning("Redis %s subscriber: %s", shard.address, error)
            return
        self.redirects += 1
        slot = getattr(error, "slot_id", None)  # MOVED and ASK name it
        for channel in [c for c in shard.channels if slot is None or key_slot(c) == slot]:
            shard.channels.discard(channel)
            self._displace(channel, shard)
        self._fail_barriers(shard)  # a mark after the refused SSUBSCRIBE proves nothing
        self.refresh()

    def _displace(self, channel: bytes, shard: _Shard) -> None:
        if self._placed.get(channel) is shard:
            del self._placed[channel]
            self._displaced.add(channel)

    def publish_refused(self, item: _Item, error: ResponseError, shard: _Shard) -> None:
        if isinstance(error, REDIRECTS) and not item[3]:
            self.redirects += 1
            self.rerouted += 1
            self._retry.append((item[0], item[1], item[2], True))
            self.refresh()
        else:
            self.refusal_log.warning("Redis %s refused a frame: %s", shard.address, error)
            self._lose_items([item])

    def confirmed(self, shard: _Shard) -> None:
        for barrier in list(self._waiting):
            needed = barrier.needs.get(shard)
            if needed is not None and needed <= shard.confirmed:
                del barrier.needs[shard]
                if not barrier.needs:
                    self._waiting.remove(barrier)
                    self._answer(barrier.topic)

    def shard_up(self) -> None:
        up = self.slots is not None and all(
            shard.subscriber_up for shard in self._shards.values() if shard.channels
        )
        if up != self.subscriber_up:
            self.subscriber_up = up
            self._write_view()

    def shard_down(self, shard: _Shard) -> None:
        shard.confirmed = shard.marks  # the marks written are never answered now
        self._fail_barriers(shard)
        self.shard_up()
        self.refresh()  # the master may have failed over: ask where its slots went

    def connection_failed(self, shard: _Shard) -> None:
        self.refresh()

    def _fail_barriers(self, shard: _Shard) -> None:
        for barrier in [b for b in self._waiting if shard in b.needs]:
            self._waiting.remove(barrier)
            self.barrier_timeouts += 1

    def _lose_items(self, items: list[_Item]) -> None:
        self._lose([(channel, data, count) for channel, data, count, _ in items])

    # -- the host side's hooks --------------------------------------------------------------

    def _change_topic(self, subscribe: bool, topic: bytes) -> None:
        channel = redis_channel(self.prefix, topic)
        if subscribe:
            self.wanted.add(channel)
            self._place_one(channel)
        else:
            self.wanted.discard(channel)
            self._displaced.discard(channel)
            shard = self._placed.pop(channel, None)
            if shard is not None:
                shard.drop(channel)

    def _barrier(self, topic: bytes, held: bool = False) -> None:
        if self._first_map or (self._displaced and not held):
            # The first slot map is being read, or a channel waits for its new master
            # (a slot moved): answered after the next one (see the module).
            self._held.append(topic)
            return
        heartbeat = self._placed.get(self._heartbeat)
        barrier = _Barrier(topic)
        if heartbeat is not None and not self._displaced:
            for shard in self._shards.values():
                if shard is heartbeat or shard.pending():
                    mark = shard.mark(always=shard is heartbeat)
                    if mark is None:
                        break
                    barrier.needs[shard] = mark
            else:
                self._waiting.append(barrier)
                return
        self.barrier_timeouts += 1
        self.refusal_log.warning("barrier %r not answered: the Redis Cluster is unreachable", topic)

    def _publish_topic(self, topic: bytes, data: bytes, count: int) -> None:
        self._route((redis_channel(self.prefix, topic), data, count, False))

    def _route(self, item: _Item) -> None:
        owner = self.slots.owner_of(item[0]) if self.slots is not None else None
        if owner is None or not self._shard(owner).publish(item):
            self._lose_items([item])

    def own_stats(self) -> dict[str, Any]:
        stats = super().own_stats()
        publishers = [s for s in self._shards.values() if s.publisher_connecting or s.publisher_up]
        stats.update(
            redis=list(self.settings.cluster_nodes),
            redis_up=self.subscriber_up and all(s.publisher_up for s in publishers),
            redis_cluster={
                "masters": len(self.slots.masters) if self.slots is not None else 0,
                "slot_map_refreshes": self.refreshes,
                "redirects": self.redirects,
                "rerouted": self.rerouted,
                "shards": {address: shard.stats() for address, shard in self._shards.items()},
            },
        )
        return stats


def _spublish_command(item: _Item) -> tuple[str, bytes, bytes]:
    return ("SPUBLISH", item[0], item[1])
