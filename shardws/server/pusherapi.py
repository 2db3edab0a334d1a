"""The Pusher HTTP API on the admin listener: ``/apps/{id}/...`` as the official server
SDKs call it (the decisions are ``shardws.pure.pusher.httpapi``'s).

The admin process is a member of the host bus: a trigger publishes one protocol-neutral
publication per channel on the channel's bus topic (the app's internal name,
``pure.pusher.channels.internal_name``), so it reaches the subscribers of every worker
(and, in a cluster, of every host) at most once, like ``POST /api/publish``. Counts are
asked of every ready worker (cluster-wide) through their inboxes, like
``GET /api/channels``.

Guarantees: nothing is published unless ``httpapi.decide`` accepted the whole request
(signature, app, every event of a batch); an event with ``socket_id`` never reaches that
connection (the Pusher wire format excludes a publication's origin).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shardws.pure.busframe import channel_topic
from shardws.pure.publication import Kind, Publication
from shardws.pure.publication import encode as publication_record
from shardws.pure.pusher import httpapi, wire
from shardws.pure.pusher.channels import app_prefix, internal_name, pusher_name
from shardws.pure.pusher.httpapi import (
    ApiError,
    ChannelCounts,
    GetChannel,
    GetUsers,
    ListChannels,
    Trigger,
    TriggerBatch,
)

if TYPE_CHECKING:
    from shardws.config import PusherAppConfig, PusherConfig
    from shardws.server.admin import Backend

log = logging.getLogger("shardws.pusher.api")

#: The most channels a listing asks each worker for (``control.MAX_CHANNELS`` caps it).
LIST_LIMIT = 100_000


class PusherApi:
    """Answers HTTP API requests of the apps in ``[pusher]`` (see the module doc)."""

    def __init__(self, backend: Backend, pusher: PusherConfig) -> None:
        self._backend = backend
        self._pusher = pusher
        self.events = 0  # events published (a batch counts each of its events)

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
            counts = await self._channel_counts(request.app, request.prefix)
            return 200, httpapi.encode_channels(request, counts)
        if isinstance(request, GetChannel):
            counts = await self._channel_counts(request.app, request.channel)
            found = counts.get(request.channel, ChannelCounts(0))
            return 200, httpapi.encode_channel(request, found)
        assert isinstance(request, GetUsers)
        refusal = ApiError(501, "GET /apps/{id}/channels/{name}/users is not served yet")
        return refusal.status, refusal.body

    def _publish(self, app: PusherAppConfig, events: Iterable[httpapi.Event]) -> None:
        bus = self._backend.bus
        assert bus is not None
        for event in events:
            publication = Publication(
                wire.data_of_string(event.data), Kind.PUB, event.name, event.exclude or ""
            )
            record = publication_record(publication)
            for channel in event.channels:
                bus.publish(channel_topic(internal_name(app.id, channel)), record)
            self.events += 1

    async def _counts_for(
        self, app: PusherAppConfig, channels: Iterable[str], info: frozenset[str]
    ) -> dict[str, ChannelCounts]:
        """The counts of ``channels`` when ``info`` asks any (else none: no round trip)."""
        if not info:
            return {}
        counts: dict[str, ChannelCounts] = {}
        for channel in channels:
            found = await self._channel_counts(app, channel)
            counts[channel] = found.get(channel, ChannelCounts(0))
        return counts

    async def _channel_counts(self, app: PusherAppConfig, prefix: str) -> dict[str, ChannelCounts]:
        """Cluster-wide counts of ``app``'s channels whose names start with ``prefix``."""
        body = await self._backend.channels(internal_name(app.id, prefix), LIST_LIMIT)
        if not body["complete"]:
            log.warning("pusher: counts without workers %s", body.get("missing"))
        start = app_prefix(app.id)
        return {
            pusher_name(name): ChannelCounts(count)
            for name, count in body["channels"].items()
            if name.startswith(start)
        }
