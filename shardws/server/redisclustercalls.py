"""A process's script calls on a Redis Cluster (``[cluster.redis] cluster_nodes``):
``redisconn.RedisCalls`` with each call routed to the master that serves its first
key's slot (docs/cluster.md, "Redis Cluster").

Every script of the Redis engine touches the keys of one channel, all under the
channel's hash tag (``<prefix>{<channel>}:...``), so one slot, so one master; a plain
command's key is its first argument. :class:`ClusterCalls` holds one ``RedisCalls`` (one
pipelined connection) per master it has called, so the calls to one master made during
one event-loop iteration still go out in one write, and the calls on one channel keep
their order (one connection). It reads the slot map (``CLUSTER SLOTS``) at start, and
again when a call is answered ``MOVED``/``ASK``/``TRYAGAIN`` (its slot moved or is
moving) or fails because a master is unreachable (it may have failed over).

* A call answered with a redirect is sent once more, to the master the new slot map
  names; answered with one again, it fails with that ``ResponseError``. A call to an
  unreachable master fails with ``RedisUnavailable``. The callers then answer as for
  one Redis (503 / 108, or retry): a call is never sent to two masters at once.
* ``up`` is True once the slot map is read and while no master called is known down.
* :func:`calls_for` opens the right kind for ``[cluster.redis]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from shardws.config import RedisConfig
from shardws.pure.redisslots import SlotMap
from shardws.server.redisconn import (
    REDIRECTS,
    Backoff,
    RedisCalls,
    RedisUnavailable,
    Script,
    _Call,
    read_slot_map,
)

log = logging.getLogger("shardws.redis")

_REFRESH_MIN = 0.1  # seconds between two slot map reads: a burst of redirects reads once


def calls_for(settings: RedisConfig, scripts: Iterable[Script] = ()) -> RedisCalls:
    """The process's script calls: on a Redis Cluster when ``cluster_nodes`` is set."""
    if settings.cluster_nodes:
        return ClusterCalls(settings, scripts)
    return RedisCalls(settings, scripts)


class ClusterCalls(RedisCalls):
    """``RedisCalls`` on a Redis Cluster; see the module. It never connects itself: its
    per-master ``RedisCalls`` do."""

    def __init__(self, settings: RedisConfig, scripts: Iterable[Script] = ()) -> None:
        super().__init__(settings, scripts)
        self.slots: SlotMap | None = None
        self._nodes: dict[str, RedisCalls] = {}
        self._waiting: list[_Call] = []  # calls made before the first slot map
        self._redirected: list[_Call] = []  # sent again after the next slot map
        self._refresh = asyncio.Event()
        self._mapper: asyncio.Task[None] | None = None
        self._first_map_failed = False
        self._map_changes = 0  # slot maps read that differ from the one before
        self._closed_reconnects = 0  # reconnections of the masters let go
        self.redirects = 0

    @property
    def up(self) -> bool:
        return self.slots is not None and not any(
            not node.up and not node._connecting for node in self._nodes.values()
        )

    @up.setter
    def up(self, value: bool) -> None:
        """Set by ``RedisCalls``'s own connection, which this class does not open."""

    @property
    def reconnects(self) -> int:
        """A master's connections after its first, plus each change of the slot map (a
        promoted replica, a slot moved): what a caller that must write again after a
        reconnection (``server.redispresence``) watches."""
        live = sum(node.reconnects for node in self._nodes.values())
        return self._closed_reconnects + live + self._map_changes

    @reconnects.setter
    def reconnects(self, value: int) -> None:
        """Set by ``RedisCalls``'s own connection, which this class does not open."""

    @property
    def batches(self) -> int:
        return sum(node.batches for node in self._nodes.values())

    def register(self, script: Script) -> None:
        super().register(script)
        for node in getattr(self, "_nodes", {}).values():
            node.register(script)

    @property
    def all_failures(self) -> int:
        """Calls failed here (no slot map, no master) and on every master."""
        return self.failures + sum(node.failures for node in self._nodes.values())

    def totals(self) -> dict[str, int]:
        return {**super().totals(), "failures": self.all_failures}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._mapper is None:
            self._refresh.set()
            self._mapper = asyncio.get_running_loop().create_task(self._map())

    def close(self) -> None:
        mapper, self._mapper = self._mapper, None
        if mapper is not None:
            mapper.cancel()
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
        self._fail([*self._waiting, *self._redirected], "stopped")
        self._waiting.clear()
        self._redirected.clear()

    async def stop(self) -> None:
        mapper, nodes = self._mapper, list(self._nodes.values())
        self.close()
        await asyncio.gather(
            *(node.stop() for node in nodes),
            *([mapper] if mapper is not None else []),
            return_exceptions=True,
        )

    # -- routing --------------------------------------------------------------------------

    def _put(self, call: _Call) -> asyncio.Future[Any]:
        self.calls += 1
        self.start()
        if self.slots is None:
            if self._first_map_failed:
                self._fail([call], "no node of the Redis Cluster answers")
            else:
                self._waiting.append(call)  # sent once the slot map is read
            return call.future
        self._send(call)
        return call.future

    def _send(self, call: _Call) -> None:
        assert self.slots is not None
        owner = self.slots.owner_of(_key_of(call))
        if owner is None:
            self._fail([call], "no master serves the slot")
            self._refresh.set()
            return
        node = self._nodes.get(owner)
        if node is None:
            node = self._nodes[owner] = RedisCalls(
                self.settings, self._scripts.values(), address=owner
            )
        inner = _Call(call.args, asyncio.get_running_loop().create_future(), call.script, call.keys)
        inner.future.add_done_callback(lambda done: self._answered_by_node(call, done))
        node._put(inner)

    def _answered_by_node(self, call: _Call, done: asyncio.Future[Any]) -> None:
        if call.future.done():
            return
        error = done.exception() if not done.cancelled() else RedisUnavailable("stopped")
        if error is None:
            call.future.set_result(done.result())
            return
        if isinstance(error, REDIRECTS):
            self.redirects += 1
            self._refresh.set()
            if not call.retried:
                call.retried = True
                self._redirected.append(call)
                return
        elif isinstance(error, RedisUnavailable):
            self._refresh.set()  # the master may have failed over
        call.future.set_exception(error)

    async def _map(self) -> None:
        backoff = Backoff(self.settings.reconnect_max)
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            slots = await read_slot_map(self.settings, [*self._nodes, *self.settings.cluster_nodes])
            if slots is None:
                self._log.warning("Redis Cluster: no node answers CLUSTER SLOTS")
                self._first_map_failed = True
                self._fail([*self._waiting, *self._redirected], "no node answers")
                self._waiting.clear()
                self._redirected.clear()
                await asyncio.sleep(backoff.next())
                self._refresh.set()
                continue
            backoff.reset()
            self._first_map_failed = False
            if self.slots is not None and slots != self.slots:
                self._map_changes += 1
            self.slots = slots
            for address in [a for a in self._nodes if a not in slots.masters]:
                node = self._nodes.pop(address)
                self._closed_reconnects += node.reconnects
                node.close()  # serves no slot now: its calls fail
            calls = [*self._waiting, *self._redirected]
            self._waiting.clear()
            self._redirected.clear()
            for call in calls:
                self._send(call)
            await asyncio.sleep(_REFRESH_MIN)


def _key_of(call: _Call) -> bytes:
    """The key that routes a call: a script's first key, a command's first argument."""
    args = call.args
    if call.script is not None:
        key = args[0] if call.keys > 0 else b""
    else:
        key = args[1] if len(args) > 1 else b""
    return key.encode() if isinstance(key, str) else bytes(key)
