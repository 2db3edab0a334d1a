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
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from shardws.server.mesh import MeshBackend, MeshEngine
from shardws.server.redisclustercalls import calls_for
from shardws.server.redispresence import RedisPresence
from shardws.server.redispusher import PusherInRedis, RedisPusher, RedisPusherReader

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.config import Config
    from shardws.pure.pusher.webhooks import WebhookEvent
    from shardws.server.engine import Connection
    from shardws.server.mesh import MeshHost
    from shardws.shm.view import Members


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
        self.native_presence = RedisPresence(self.redis, config.cluster.redis)

    # -- presence (server.redispresence) ---------------------------------------------------

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        self.native_presence.answer(conn, command_id, channel, stats)

    def present(self, channel: str, conn: Connection, here: bool) -> asyncio.Future[bool] | None:
        return self.native_presence.present(channel, conn, here)

    # -- deciders of Pusher channels (server.redispusher plugs in here) --------------------

    def decider(self, channel: str) -> Hashable:
        return self.pusher.decider(channel)

    def can_decide(self, decider: Hashable) -> bool:
        return self.pusher.can_decide()

    # -- the worker's life ---------------------------------------------------------------

    def load(self) -> None:
        self.redis.start()
        super().load()

    def on_heartbeat(self, now: float, retell: Callable[[], None]) -> None:
        if self._pusher_apps:  # refreshes and sweeps (a reload replaces the process)
            self.pusher.on_heartbeat(now)
        super().on_heartbeat(now, retell)
        self.native_presence.on_tick(now)  # refresh what this worker holds, when due

    def save(self) -> None:
        super().save()
        self.redis.close()


class RedisBackend(PusherInRedis, MeshBackend):
    """The admin's engine on the hub (``engine.BackendEngine``); see the module."""

    def __init__(self, config: Config, members: Members, bus: Callable[[], Bus | None]) -> None:
        super().__init__(members, bus)
        #: The admin's script connection (connects on its first call).
        self.redis = calls_for(config.cluster.redis)
        self.pusher = RedisPusherReader(self.redis, config.cluster.redis.prefix)

    def close(self) -> None:
        super().close()
        self.redis.close()
