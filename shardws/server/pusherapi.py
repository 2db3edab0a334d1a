"""The Pusher HTTP API on the admin listener: ``/apps/{id}/...`` as the official server
SDKs call it (the decisions are ``shardws.pure.pusher.httpapi``'s).

The admin process publishes through the engine (``server.engine``): a trigger is one
protocol-neutral publication record for each of its channels (the app's internal name,
``pure.pusher.channels.internal_name``), so it reaches the subscribers of every worker
(and, in a cluster, of every host) at most once, like ``POST /api/publish``. Counts are
asked of every ready worker (cluster-wide), like ``GET /api/channels``.

Guarantees: nothing is published unless ``httpapi.decide`` accepted the whole request
(signature, app, every event of a batch); an event with ``socket_id`` never reaches that
connection (the Pusher wire format excludes a publication's origin).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from shardws.pure.control import Disconnect, PusherCachePutRequest, PusherUsersReply
from shardws.pure.protocol import CloseCode
from shardws.pure.publication import Kind, Publication
from shardws.pure.publication import encode as publication_record
from shardws.pure.pusher import httpapi, wire
from shardws.pure.pusher.channels import (
    ChannelKind,
    app_prefix,
    internal_name,
    kind_of,
    pusher_name,
    user_key,
)
from shardws.pure.pusher.httpapi import (
    ApiError,
    ChannelCounts,
    GetChannel,
    GetUsers,
    ListChannels,
    TerminateUser,
    Trigger,
    TriggerBatch,
)

if TYPE_CHECKING:
    from shardws.config import PusherAppConfig, PusherConfig
    from shardws.server.engine import Engine
    from shardws.server.tapstream import TapStreams

log = logging.getLogger("shardws.pusher.api")

#: The most channels a listing asks each worker for (``control.MAX_CHANNELS`` caps it).
LIST_LIMIT = 100_000


class PusherBackend(Protocol):
    """What the Pusher HTTP API needs of the admin's backend (``admin.Backend``): the
    engine, and the native API's cluster-wide answers it shares."""

    @property
    def engine(self) -> Engine: ...

    @property
    def taps(self) -> TapStreams: ...

    def disconnect(self, user: str, how: Disconnect) -> None: ...

    async def channels(self, prefix: str, limit: int) -> dict[str, Any]: ...

    async def pusher_users(self, channel: str) -> PusherUsersReply | None: ...


class PusherApi:
    """Answers HTTP API requests of the apps in ``[pusher]`` (see the module doc)."""

    def __init__(self, backend: PusherBackend, pusher: PusherConfig) -> None:
        self._backend = backend
        self._pusher = pusher
        self.events: dict[str, int] = {}  # app id -> events published (each of a batch)

    async def answer(self, method: str, target: str, body: bytes, now: float) -> tuple[int, bytes]:
        """The status and JSON body answering ``method target`` (path and query as
        received) with ``body``, at ``now`` (unix seconds)."""
        request = httpapi.decide(method, target, body, self._pusher, now)
        if isinstance(request, ApiError):
            return request.status, request.body
        if isinstance(request, Trigger):
            self._publish(request.app, [request.event])
            counts = await self._counts_for(request.app, request.event.channels, request.event.info)
            return 200, httpapi.encode_trigger(request.event, counts)
        if isinstance(request, TriggerBatch):
            self._publish(request.app, request.events)
            wanted = {e.channels[0] for e in request.events if e.info}
            info = frozenset().union(*(e.info for e in request.events))
            counts = await self._counts_for(request.app, sorted(wanted), info)
            return 200, httpapi.encode_batch(request.events, counts)
        if isinstance(request, ListChannels):
            counts = await self._channel_counts(request.app, request.prefix, request.info)
            return 200, httpapi.encode_channels(request, counts)
        if isinstance(request, GetChannel):
            counts = await self._channel_counts(request.app, request.channel, request.info)
            found = counts.get(request.channel, ChannelCounts(0))
            return 200, httpapi.encode_channel(request, found)
        if isinstance(request, TerminateUser):
            # Every worker of every host closes the user's connections (4009, as Soketi).
            how = Disconnect(CloseCode.DISCONNECTED, "terminated by the app")
            self._backend.disconnect(user_key(request.app.id, request.user_id), how)
            return 200, b"{}"
        assert isinstance(request, GetUsers)
        users = await self._backend.pusher_users(internal_name(request.app.id, request.channel))
        if users is None:
            refusal = ApiError(503, "The channel's owner did not answer; retry.")
            return refusal.status, refusal.body
        return 200, httpapi.encode_users(list(users.users))

    def _publish(self, app: PusherAppConfig, events: Iterable[httpapi.Event]) -> None:
        engine = self._backend.engine
        for event in events:
            publication = Publication(
                wire.data_of_string(event.data), Kind.PUB, event.name, event.exclude or ""
            )
            record = publication_record(publication)
            for channel in event.channels:
                internal = internal_name(app.id, channel)
                engine.publish(internal, record)
                if self._backend.taps.open:
                    self._backend.taps.local(internal, publication.data, "http", event.name)
                if kind_of(channel).cache:  # its owner keeps it for later subscribers
                    encoded = wire.encode_event(event.name, channel, publication.data)
                    put = PusherCachePutRequest(internal, encoded, app.cache_ttl)
                    engine.tell(internal, put)
            self.events[app.id] = self.events.get(app.id, 0) + 1

    async def _counts_for(
        self, app: PusherAppConfig, channels: Iterable[str], info: frozenset[str]
    ) -> dict[str, ChannelCounts]:
        """The counts of ``channels`` when ``info`` asks any (else none: no round trip)."""
        if not info:
            return {}
        names = list(dict.fromkeys(channels))
        found = await asyncio.gather(*(self._channel_counts(app, c, info) for c in names))
        return {c: f.get(c, ChannelCounts(0)) for c, f in zip(names, found, strict=True)}

    async def _channel_counts(
        self, app: PusherAppConfig, prefix: str, info: frozenset[str]
    ) -> dict[str, ChannelCounts]:
        """Cluster-wide counts of ``app``'s channels whose names start with ``prefix``
        (``user_count`` of presence channels only when ``info`` asks it)."""
        body = await self._backend.channels(internal_name(app.id, prefix), LIST_LIMIT)
        if not body["complete"]:
            log.warning("pusher: counts without workers %s", body.get("missing"))
        start = app_prefix(app.id)
        mine = {name: n for name, n in body["channels"].items() if name.startswith(start)}
        presence = [
            name
            for name in mine
            if "user_count" in info and kind_of(pusher_name(name)).kind is ChannelKind.PRESENCE
        ]
        # Distinct users come from each presence channel's owner, asked all at once.
        rosters = await asyncio.gather(*(self._backend.pusher_users(name) for name in presence))
        users = {
            name: len(roster.users)
            for name, roster in zip(presence, rosters, strict=True)
            if roster is not None
        }
        return {pusher_name(name): ChannelCounts(n, users.get(name)) for name, n in mine.items()}
