"""The Redis engine (``[cluster] engine = "redis"``) for the members of a host: what
the workers and the admin run while the hub process (``server.redishub``) carries the
host bus to and from Redis (docs/architecture.md, "The engine"; docs/cluster.md).

Plain channels, user messages and every member's inbox stay on the host bus, through
the hub, as on the mesh: :class:`RedisEngine` and :class:`RedisBackend` extend the
mesh's classes and take over only what Redis decides. Each process holds one
:class:`~shardws.server.redisconn.RedisCalls` (its pipelined script connection; on a Redis
Cluster, ``server.redisclustercalls``: one per master, each call routed by its key),
shared by the parts below:

* history channels -- decided and kept in Redis (``server.redishistory``);
* native presence -- kept in Redis by ``server.redispresence`` (:meth:`RedisEngine.present`
  and the refresh in :meth:`RedisEngine.on_heartbeat`; read by :meth:`RedisEngine.presence`);
  joins and leaves still travel on the channel's bus topic (the mesh's ``announce``);
* Pusher rosters, occupancy and cache -- ``server.redispusher`` (plugs in at
  :meth:`RedisEngine.decider`, :meth:`RedisEngine.can_decide`, :meth:`RedisEngine.ask`,
  :meth:`RedisEngine.tell`).

What is not taken over here is the mesh's, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from shardws.config import NamespaceConfig
from shardws.pure.control import (
    HistoryPublishRequest,
    OwnerReply,
    OwnerRequest,
    PresenceMember,
)
from shardws.pure.protocol import namespace_of
from shardws.server.engine import ASK_TIMEOUT, StoreCounts
from shardws.server.mesh import MeshBackend, MeshEngine
from shardws.server.owners import is_history_request
from shardws.server.redisclustercalls import calls_for
from shardws.server.redishistory import RedisHistory
from shardws.server.redispresence import RedisPresence, read_members
from shardws.server.redispusher import PusherInRedis, RedisPusher, RedisPusherReader
from shardws.server.stored import STORE_TIMEOUT

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.config import Config
    from shardws.pure.history import Position
    from shardws.pure.pusher.webhooks import WebhookEvent
    from shardws.server.engine import Connection
    from shardws.server.mesh import MeshHost
    from shardws.shm.view import Members

log = logging.getLogger("shardws.redisengine")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)
#: Seconds between two attempts of a confirmed store while Redis does not answer.
_RETRY_PAUSE = 0.1


class RedisEngine(PusherInRedis, MeshEngine):
    """A worker's engine on the hub (``engine.WorkerEngine``); see the module."""

    def __init__(
        self,
        config: Config,
        host: MeshHost,
        answer_local: Callable[[str, dict[str, Any]], dict[str, Any]],
        webhook: Callable[[str, WebhookEvent], None],
        occupied_here: Callable[[int], tuple[str, ...]],
    ) -> None:
        super().__init__(host, answer_local, webhook, occupied_here)
        #: This worker's script connection, shared by history, presence and Pusher.
        self.redis = calls_for(config.cluster.redis)
        settings = config.cluster.redis
        self.pusher: RedisPusher = RedisPusher(
            self.redis, settings.prefix, host.member, host, webhook, settings.presence_ttl
        )
        self._pusher_apps = bool(config.pusher.apps)
        #: Native presence, kept in Redis (join and leave still cross on the bus).
        self.native_presence = RedisPresence(self.redis, settings)
        #: History channels: Redis decides them, not the owner workers.
        self.history_decider = RedisHistory(
            self.redis, settings, host.options_for, host.stats_publication
        )
        self.owners.decider = self.history_decider

    # -- presence (server.redispresence) ---------------------------------------------------

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        self.native_presence.answer(conn, command_id, channel, stats)

    def present(self, channel: str, conn: Connection, here: bool) -> asyncio.Future[bool] | None:
        return self.native_presence.present(channel, conn, here)

    # -- deciders of Pusher channels (server.redispusher plugs in here) --------------------

    def decider(self, channel: str) -> Hashable:
        return self.pusher.decider(channel)

    def redis_counters(self) -> dict[str, int]:
        sets = self.native_presence.sets
        return {
            **self.redis.totals(),
            "presence_writes": sets.scripts,
            "presence_writes_failed": sets.failed,
        }

    def can_decide(self, decider: Hashable) -> bool:
        return self.pusher.can_decide()

    # -- the worker's life ---------------------------------------------------------------

    def load(self) -> None:
        """Connect to Redis; no rings to continue (Redis keeps the histories)."""
        self.redis.start()

    def on_heartbeat(self, now: float, retell: Callable[[], None]) -> None:
        if self._pusher_apps:  # refreshes and sweeps (a reload replaces the process)
            self.pusher.on_heartbeat(now)
        super().on_heartbeat(now, retell)
        self.native_presence.on_tick(now)  # refresh what this worker holds, when due

    def save(self) -> None:
        """Nothing to keep for the next process: Redis holds it."""
        self.redis.close()


class RedisBackend(PusherInRedis, MeshBackend):
    """The admin's engine on the hub (``engine.BackendEngine``); see the module.

    Backends' publications to history channels are stored by Redis: :meth:`store`
    answers once Redis stored each channel's (asking again with the same ``idem`` while
    Redis does not answer, up to ``stored.STORE_TIMEOUT``: a confirmed position is
    stored, an unconfirmed channel may or may not be -- the caller answers 503);
    :meth:`store_later` (the ingress's PUSH form) sends it once, in order with the
    channel's other publications, and counts one that Redis did not confirm in
    ``unconfirmed`` (never a silent loss)."""

    def __init__(self, config: Config, members: Members, bus: Callable[[], Bus | None]) -> None:
        super().__init__(members, bus)
        #: The admin's script connection (connects on its first call).
        self.redis = calls_for(config.cluster.redis)
        self._prefix = config.cluster.redis.prefix
        self.pusher = RedisPusherReader(self.redis, self._prefix)
        namespaces = config.namespaces
        self.history_decider = RedisHistory(
            self.redis,
            config.cluster.redis,
            lambda channel: namespaces.get(namespace_of(channel)) or NamespaceConfig(),
        )
        self._confirmed = 0
        self._unconfirmed = 0
        self._tasks: set[asyncio.Future[None]] = set()

    async def ask(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = ASK_TIMEOUT
    ) -> _ReplyT | None:
        if is_history_request(request):
            return await self.history_decider.ask(request, timeout)
        return await super().ask(channel, request, timeout)

    async def store(
        self, channels: Iterable[str], data: bytes, idem: str
    ) -> tuple[dict[str, Position], list[str]]:
        targets = list(channels)
        answers = await asyncio.gather(*(self._store(c, data, idem) for c in targets))
        positions = {c: at for c, at in zip(targets, answers, strict=True) if at is not None}
        missing = [c for c, at in zip(targets, answers, strict=True) if at is None]
        self._confirmed += len(positions)
        self._unconfirmed += len(missing)
        return positions, missing

    async def _store(self, channel: str, data: bytes, idem: str) -> Position | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORE_TIMEOUT
        request = HistoryPublishRequest(channel, data, idem)
        while (remaining := deadline - loop.time()) > 0:
            reply = await self.history_decider.ask(request, remaining)
            if reply is not None:
                return reply.position
            await asyncio.sleep(min(_RETRY_PAUSE, max(deadline - loop.time(), 0)))
        return None

    def store_later(self, channel: str, data: bytes, idem: str | None) -> None:
        request = HistoryPublishRequest(channel, data, idem)
        task = asyncio.ensure_future(self._store_later(request))
        self._tasks.add(task)  # keep a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._tasks.discard)

    async def _store_later(self, request: HistoryPublishRequest) -> None:
        # Tasks start in the order they were made: the calls keep the ingress's order.
        if await self.history_decider.ask(request, STORE_TIMEOUT) is None:
            self._unconfirmed += 1
            log.warning("an ingress publication to %s was not stored by Redis", request.channel)
        else:
            self._confirmed += 1

    def store_counts(self) -> StoreCounts:
        return StoreCounts(self._confirmed, self._unconfirmed, 0)

    def redis_counters(self) -> dict[str, int]:
        return self.redis.totals()  # the admin holds no presence

    async def presence_members(
        self, channel: str, timeout: float
    ) -> tuple[list[PresenceMember], set[int]] | None:
        members = await read_members(self.redis, self._prefix, channel, timeout)
        return None if members is None else (members, set())

    def close(self) -> None:
        super().close()
        self.redis.close()
