"""The Pusher Channels protocol in a worker: its connections, its wire format, and the
carrying out of its sessions' outcomes (the decisions are ``shardws.pure.pusher``'s).

A Pusher connection is a :class:`~shardws.server.connection.Connection` (frames,
fragments, limits, the sink and closing are shared) that keeps the state the Pusher
session needs on itself (``pure.pusher.session.PusherState``): no other object per
connection. Its channels live in the same hub and on the same bus as native ones, under
internal names (``pure.pusher.channels.internal_name``: ``|{app id}|{channel}``) that no
native channel and no other app's channel can have.

Guarantees:

* Every close of a Pusher connection, whoever decides it, is the native close reason
  mapped by ``closecodes.for_native``: a ``pusher:error`` with the Pusher code, then a
  close frame with that code. A refused upgrade (``admission.admit``) is upgraded, gets
  its ``pusher:error`` and is closed with its code.
* ``pusher_internal:subscription_succeeded`` is sent once the channel's bus
  subscription is live on every member (the hub's liveness future), never before. When
  its barrier cannot complete (the bus forwarder restarting, a relay stuck), the
  subscription is undone and answered ``pusher:subscription_error`` (``ServerError``,
  status 503), as a native subscribe is answered error 108: never a success that is
  not one.
* ``pusher:signin_success`` is sent once the user's bus topic is live (what
  ``terminate_connections`` travels on). When its barrier cannot complete, the
  connection is closed instead (``pusher:error`` and close 4100, reconnect after
  backing off: the native 4506), counted like a subscribe not live.
* A publication with an ``origin`` (a client event, an HTTP trigger with ``socket_id``)
  never reaches the connection with that socket id (:data:`PUSHER` excludes the origin;
  ``Delivery.publish`` skips it).
* A quiet connection gets ``pusher:ping`` after the app's ``activity_timeout`` (a
  WebSocket Ping frame in protocol 4, whose clients need not answer ``pusher:ping``:
  ``versions.pings_with_event``) and is closed with 4201 when nothing arrives within
  :data:`PONG_WAIT` more.
* ``pusher:connection_established`` carries ``activity_timeout`` in protocol 7 only
  (``versions.handshake_has_activity_timeout``).
* Webhook events (``client_event``, ``cache_miss`` here; occupancy and members at the
  channel's owner, ``PusherOwner``) are made only for apps with an endpoint that wants
  them, and leave as one bus message to this host's admin (``webhook``): never a wait.
* The owner of a channel of an app with occupancy webhooks hears when this worker gets
  the channel's first subscriber and loses its last (``hub_changed``): one request in
  flight per channel, the hub's state at the time re-read after each answer, so the
  owner ends up told the last state whatever the order of subscribes and leaves; asked
  up to :data:`JOIN_ATTEMPTS` times each while the owner restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from shardws.config import PusherAppConfig
from shardws.core import TokenBucket
from shardws.pure.auth import ANONYMOUS
from shardws.pure.control import (
    PusherCacheGetRequest,
    PusherJoinRequest,
    PusherLeaveRequest,
    PusherOccupancyRequest,
)
from shardws.pure.protocol import CloseCode
from shardws.pure.publication import Kind, Publication
from shardws.pure.pusher import versions, webhooks, wire
from shardws.pure.pusher.admission import Admitted, Refused
from shardws.pure.pusher.channels import (
    SocketIds,
    app_of,
    internal_name,
    kind_of,
    pusher_name,
    user_key,
)
from shardws.pure.pusher.closecodes import PusherCode, for_native
from shardws.pure.pusher.session import (
    ClientEvent,
    Nothing,
    PresenceMember,
    PusherSessions,
    PusherSignin,
    PusherSubscribe,
    PusherUnsubscribe,
)
from shardws.pure.pusher.webhooks import WebhookEvent
from shardws.pure.session import Close, Reply
from shardws.server.connection import Connection, ConnectionHost
from shardws.server.delivery import WireFormat
from shardws.shm.scoreboard import Column

if TYPE_CHECKING:
    from shardws.config import Config
    from shardws.pure.hub import Hub
    from shardws.pure.session import Count
    from shardws.server.delivery import Delivery
    from shardws.server.engine import WorkerEngine
    from shardws.server.tap import WorkerTaps

log = logging.getLogger("shardws.pusher")

#: Seconds a connection pinged after ``activity_timeout`` of silence has to answer before
#: it is closed with 4201 (at most its ``activity_timeout``): what pusher-js itself waits
#: for a pong (its ``pongTimeout``, 30 s).
PONG_WAIT = 30.0

#: Times a presence subscription asks its channel's owner (each waiting up to
#: ``engine.ASK_TIMEOUT``) before it is refused with 503: long enough for a killed
#: owner's replacement to boot.
JOIN_ATTEMPTS = 4

#: ``pusher:subscription_error``'s message for a subscription whose bus barrier did not
#: complete (``pure.protocol.NOT_LIVE_MESSAGE`` in the native protocol).
NOT_LIVE_ERROR = "The subscription could not be confirmed live on every worker; retry"


def encode(channel: str, publication: Publication) -> bytes:
    """A publication on the internal channel ``channel`` as Pusher clients receive it: an
    event (with the sender's ``user_id`` on a presence channel's client event), or
    ``member_added`` / ``member_removed`` for a presence join or leave."""
    name = pusher_name(channel)
    kind = publication.kind
    if kind is Kind.PUB:
        return wire.encode_event(
            publication.event, name, publication.data, publication.user or None
        )
    if kind is Kind.JOIN:
        return wire.encode_member_added(name, publication.user, publication.data or None)
    return wire.encode_member_removed(name, publication.user)


#: The Pusher wire format: a publication is never sent back to its origin (Pusher does
#: not echo client events, and an HTTP trigger's ``socket_id`` excludes that connection).
PUSHER = WireFormat("pusher", encode, excludes_origin=True)

#: A worker's counters per app (``pusher_stats`` inbox op, exported by the admin's
#: ``/metrics``): open connections (a gauge), and since the worker started: connections
#: accepted, messages received, client events relayed.
APP_STATS = ("connections", "accepted", "messages_in", "client_events")
_CONNECTIONS, _ACCEPTED, _MESSAGES_IN, _CLIENT_EVENTS = range(len(APP_STATS))


class PusherConnection(Connection):
    """A connection on ``/app/{key}``: the Pusher session's state
    (``PusherState``) kept on the connection, and the protocol version it is served in.
    ``refused`` is set when the upgrade was not admitted: the connection is closed with
    its code as soon as it opens."""

    wire = PUSHER

    __slots__ = ("app", "client_event_bucket", "protocol", "refused", "socket_id", "user_id")

    # The native connection's channel set holds hub names; a Pusher connection's holds
    # its Pusher channels with their presence member (the session's state).
    channels: dict[str, PresenceMember | None]  # type: ignore[assignment]

    def __init__(
        self,
        worker: ConnectionHost,
        on_message: Callable[[Connection, bool, bytes], None],
        admission: Admitted | Refused,
    ) -> None:
        super().__init__(worker, ANONYMOUS)
        self.on_message = on_message  # the Pusher front's (PusherFront.message_received)
        self.channels = {}
        self.socket_id = ""
        self.user_id = ""  # the Pusher user it signed in as (pusher:signin)
        if isinstance(admission, Refused):
            self.refused: Refused | None = admission
            # Never used: the connection is closed at once (any app's limits would do).
            self.app: PusherAppConfig = PusherAppConfig()
            self.protocol = versions.NEWEST
        else:
            self.refused = None
            self.app = admission.app
            self.protocol = admission.protocol
        self.client_event_bucket: TokenBucket = PusherSessions.new_client_event_bucket(
            self.app, time.monotonic()
        )

    def close(self, code: int, reason: str, *, stop_reading: bool = False) -> None:
        """Close for the native reason ``code`` the Pusher way (``closecodes.for_native``):
        ``pusher:error`` with the Pusher code, then the close frame with it."""
        if self.closing or self.transport is None:
            return
        pusher_close = for_native(code)
        if pusher_close.sends_error:
            self.send(wire.encode_error(pusher_close.code, pusher_close.message))
        super().close(pusher_close.code, pusher_close.message, stop_reading=stop_reading)

    def refuse(self, code: int, message: str) -> None:
        """Close with Pusher ``code`` itself (a refused upgrade): ``pusher:error``, then
        the close frame."""
        if self.closing or self.transport is None:
            return
        self.send(wire.encode_error(code, message))
        super().close(code, message)


class PusherHost(Protocol):
    """What the Pusher front needs of its worker: the settings, the hubs (channels and
    users), the counters, the one delivery path, the engine (the cluster: its channels'
    deciders), and the worker's rules it shares with the native front."""

    config: Config
    member: int  # this worker's bus member id (socket ids are made of it)
    hub: Hub
    users: Hub  # user key -> connections (``terminate_connections``)
    stats: list[int]  # by ``Column``
    delivery: Delivery
    engine: WorkerEngine
    not_live: int  # subscribes refused because their barrier did not complete
    taps: WorkerTaps  # the event tap (its hooks run only while one is open)

    def account(self, conn: Connection, count: Count | None, line: str | None) -> None: ...

    def greet_when_live(self, conn: Connection, user: str, greeting: bytes) -> None: ...

    def publish_publication(self, channel: str, publication: Publication) -> None: ...

    def to_admin(self, payload: bytes) -> None: ...


class PusherFront:
    """The Pusher protocol's part of one worker: socket ids, the sessions' rules, the
    carrying out of their outcomes, the activity check."""

    def __init__(self, worker: PusherHost) -> None:
        self.worker = worker
        self.sessions = PusherSessions(worker.config.limits)
        # The process's start time tells this incarnation's socket ids from those of an
        # earlier process with the same member id.
        self.socket_ids = SocketIds(worker.member, int(time.time() * 1000))
        self.app_stats: dict[str, list[int]] = {}  # app id -> APP_STATS
        self._tasks: set[asyncio.Task[None]] = set()
        # Presence channels with members here -> the decider that knows them.
        self._owner_seen: dict[str, Hashable] = {}
        self._joining: set[tuple[str, str]] = set()  # (socket id, channel) asking to join
        # Channels of apps with occupancy webhooks whose owner knows they have
        # subscribers here -> the decider told; and those being told.
        self._occupied_at: dict[str, Hashable] = {}
        self._telling: set[str] = set()
        self._apps = {app.id: app for app in worker.config.pusher.apps}

    # -- webhooks -----------------------------------------------------------------------

    def wants_webhook(self, internal: str, event_type: str) -> bool:
        """Whether the app of the channel ``internal`` has an endpoint for ``event_type``."""
        app = self._apps.get(app_of(internal))
        return app is not None and app.wants_webhook(event_type)

    def webhook(self, internal: str, event: WebhookEvent) -> None:
        """Hand ``event`` of the channel ``internal`` to this host's admin (the sender)
        if its app wants it: one bus message, nothing waited for."""
        if not self.wants_webhook(internal, event.name):
            return
        at_ms = int(time.time() * 1000)
        worker = self.worker
        worker.to_admin(webhooks.encode_message(app_of(internal), event, at_ms, worker.member))

    def hub_changed(self, internal: str, occupied: bool) -> None:
        """The hub's first-subscriber (``occupied``) or last-subscriber rule fired for
        ``internal``: tell the channel's owner if the app has occupancy webhooks (see
        the module doc)."""
        if internal in self._telling or not (
            self.wants_webhook(internal, "channel_occupied")
            or self.wants_webhook(internal, "channel_vacated")
        ):
            return
        self._telling.add(internal)
        told = not occupied  # what the owner knows from us: the state before
        self.spawn(self._tell_occupancy(internal, told))

    async def _tell_occupancy(self, internal: str, told: bool) -> None:
        worker = self.worker
        try:
            attempts = 0
            while attempts < JOIN_ATTEMPTS:
                occupied = internal in worker.hub
                if occupied == told:
                    return
                request = PusherOccupancyRequest(internal, worker.member, occupied)
                if await worker.engine.ask(internal, request) is None:
                    attempts += 1  # the owner restarting: ask its next process
                    continue
                attempts, told = 0, occupied
                if occupied:
                    self._occupied_at[internal] = self.worker.engine.decider(internal)
                else:
                    self._occupied_at.pop(internal, None)
            log.warning("occupancy of %s: the owner never answered", internal)
        finally:
            self._telling.discard(internal)

    def occupied_for(self, owner: int) -> tuple[str, ...]:
        """The ``pusher.occupied`` answer to ``owner``: this worker's channels with
        subscribers here (occupancy webhooks' apps only). Not filtered by our view of
        the owners, which may still differ from the asker's just after a partition: the
        asker keeps those it owns."""
        del owner  # the asker filters
        hub = self.worker.hub
        return tuple(c for c in self._occupied_at if c in hub)

    def opened(self, conn: PusherConnection) -> None:
        """A connection's upgrade completed: refuse it, or give it its socket id and send
        ``pusher:connection_established``."""
        if conn.refused is not None:
            self.worker.stats[Column.REFUSED] += 1
            conn.refuse(conn.refused.code, conn.refused.message)
            return
        self._stats_of(conn.app.id)[_CONNECTIONS] += 1
        self._stats_of(conn.app.id)[_ACCEPTED] += 1
        conn.socket_id = conn.client_id = self.socket_ids.next()
        self.worker.delivery.origin_sinks[conn.socket_id] = conn.sink
        timeout = conn.app.activity_timeout
        shown = timeout if versions.handshake_has_activity_timeout(conn.protocol) else None
        conn.send(wire.encode_connection_established(conn.socket_id, shown))

    def _stats_of(self, app_id: str) -> list[int]:
        stats = self.app_stats.get(app_id)
        if stats is None:
            stats = self.app_stats[app_id] = [0] * len(APP_STATS)
        return stats

    def closed(self, conn: PusherConnection) -> None:
        """``conn`` is gone (called once per opened connection)."""
        if conn.socket_id:
            self._stats_of(conn.app.id)[_CONNECTIONS] -= 1

    def stats_answer(self) -> dict[str, dict[str, int]]:
        """The ``pusher_stats`` answer: ``{app id: {counter: n}}``."""
        return {
            app: dict(zip(APP_STATS, stats, strict=True)) for app, stats in self.app_stats.items()
        }

    def leave_all(self, conn: PusherConnection) -> None:
        """Leave every channel of ``conn`` (closing or closed)."""
        hub, app_id = self.worker.hub, conn.app.id
        for channel, member in conn.channels.items():
            internal = internal_name(app_id, channel)
            hub.remove(internal, conn)
            if member is not None:
                self._leave_owner(internal, conn.socket_id, member.user_id)
        conn.channels.clear()
        if conn.socket_id:
            self.worker.delivery.origin_sinks.pop(conn.socket_id, None)
        if conn.user_id:
            self.worker.users.remove(user_key(app_id, conn.user_id), conn)

    def check_activity(self, conn: PusherConnection, idle: float) -> None:
        """The sweep's rule for a Pusher connection quiet for ``idle`` seconds."""
        timeout = conn.app.activity_timeout
        if idle >= timeout + min(float(timeout), PONG_WAIT):
            conn.close(CloseCode.IDLE_TIMEOUT, "no pong")
        elif idle >= timeout and not conn.ping_sent:
            conn.ping_sent = True
            if versions.pings_with_event(conn.protocol):
                conn.send(wire.encode_ping())
            elif conn.transport is not None:
                conn.transport.send_ping()  # RFC 6455 5.5.2: its WebSocket answers a Pong

    # -- messages -----------------------------------------------------------------------

    def message_received(self, conn: Connection, binary: bool, payload: bytes) -> None:
        """A complete message of a Pusher connection: the Pusher session decides
        (``pure.pusher.session``), this carries out the one outcome."""
        assert isinstance(conn, PusherConnection)
        stats = self.worker.stats
        stats[Column.MESSAGES_IN] += 1
        stats[Column.BYTES_IN] += len(payload)
        self._stats_of(conn.app.id)[_MESSAGES_IN] += 1
        outcome = self.sessions.command(conn, payload, binary, conn.last_seen)
        _CARRY_OUT[type(outcome)](self, conn, outcome)

    def _reply(self, conn: PusherConnection, reply: Reply) -> None:
        self.worker.account(conn, reply.count, reply.log)
        conn.send(reply.payload)

    def _close(self, conn: PusherConnection, close: Close) -> None:
        self.worker.account(conn, close.count, close.log)
        conn.close(close.code, close.reason, stop_reading=close.stop_reading)

    def _nothing(self, conn: PusherConnection, nothing: Nothing) -> None:
        if nothing.log is not None:
            self.worker.account(conn, None, nothing.log)

    def _subscribe(self, conn: PusherConnection, subscribe: PusherSubscribe) -> None:
        channel = subscribe.channel
        internal = internal_name(conn.app.id, channel)
        if self.worker.taps.open:
            self.worker.taps.subscribed(internal, conn)
        if subscribe.member is not None:
            # A pending member (no sink) until the owner has answered: the members it
            # sends are those before this join, what the owner publishes after comes
            # after its answer on the same bus pipe.
            live = self.worker.hub.add(internal, conn, None)
            self.spawn(self._join_presence(conn, channel, internal, subscribe.member, live))
            return
        live = self.worker.hub.add(internal, conn, conn.sink)
        cache = subscribe.type.cache
        if live.done():
            self._answer_subscribe(conn, channel, internal, cache, live)
        else:
            live.add_done_callback(
                lambda done: self._answer_subscribe(conn, channel, internal, cache, done)
            )

    def _answer_subscribe(
        self,
        conn: PusherConnection,
        channel: str,
        internal: str,
        cache: bool,
        live: asyncio.Future[bool],
    ) -> None:
        """``subscription_succeeded`` once the bus barrier completed; a barrier that
        could not complete undoes the subscription (``_refuse_not_live``)."""
        # The subscription may have been dropped (unsubscribe, close) while the bus made it.
        if channel not in conn.channels or conn.closing:
            return
        if not live.result():
            self._refuse_not_live(conn, channel, internal)
            return
        conn.send(wire.encode_subscription_succeeded(channel))
        if cache:
            self.spawn(self._replay_cache(conn, channel, internal))

    def _refuse_not_live(self, conn: PusherConnection, channel: str, internal: str) -> None:
        """Undo ``conn``'s subscription to ``channel`` and answer
        ``pusher:subscription_error`` (``ServerError``, 503: subscribe again): its bus
        barrier did not complete, so the subscription may not be live everywhere. The
        native protocol's error 108, counted in the same ``not_live``."""
        self.worker.not_live += 1
        del conn.channels[channel]
        self.worker.hub.remove(internal, conn)
        conn.send(wire.encode_subscription_error(channel, "ServerError", NOT_LIVE_ERROR, 503))

    async def _replay_cache(self, conn: PusherConnection, channel: str, internal: str) -> None:
        """After ``subscription_succeeded`` on a cache channel: its last event from the
        channel's owner, or ``pusher:cache_miss`` (also when the owner did not answer)."""
        reply = await self.worker.engine.ask(internal, PusherCacheGetRequest(internal))
        if channel not in conn.channels:
            return
        if reply is None or reply.event is None:
            conn.send(wire.encode_cache_miss(channel))
            self.webhook(internal, WebhookEvent("cache_miss", channel))
        else:
            conn.send(reply.event)

    async def _join_presence(
        self,
        conn: PusherConnection,
        channel: str,
        internal: str,
        member: PresenceMember,
        live: asyncio.Future[bool],
    ) -> None:
        """Join a presence channel at its owner once the bus subscription is live, then
        answer ``subscription_succeeded`` with the members and start delivering."""
        # While pending, a leave is not sent by the unsubscribe or the close but here,
        # after the join: so it can never reach the owner before the join does.
        pending = (conn.socket_id, internal)
        self._joining.add(pending)
        try:
            is_live = await live
            if conn.channels.get(channel) is not member or conn.closing:
                return  # left meanwhile: the owner was never told
            if not is_live:
                self._refuse_not_live(conn, channel, internal)  # the owner was never told
                return
            app = conn.app
            request = PusherJoinRequest(
                internal, conn.socket_id, member.user_id, member.user_info, app.max_presence_members
            )
            for _attempt in range(JOIN_ATTEMPTS):
                # An owner restarting does not answer: ask its next process. A join that
                # arrived twice counts once (the roster knows the socket).
                reply = await self.worker.engine.ask(internal, request)
                if reply is not None or conn.channels.get(channel) is not member:
                    break
        finally:
            self._joining.discard(pending)
        if conn.channels.get(channel) is not member:
            # Left meanwhile (unsubscribed, or closed and left its channels).
            self._leave_owner(internal, conn.socket_id, member.user_id)
            return
        if conn.closing:
            return  # its channels are left with the close, the owner told then
        if reply is None or reply.full:
            del conn.channels[channel]
            self.worker.hub.remove(internal, conn)
            if reply is None:
                # An attempt may have joined with its answer lost: take it back.
                self._leave_owner(internal, conn.socket_id, member.user_id)
                error = wire.encode_subscription_error(
                    channel, "ServerError", "The channel's owner did not answer; retry", 503
                )
            else:
                # Soketi's answer; the owner counted the users cluster-wide.
                error = wire.encode_subscription_error(
                    channel,
                    "LimitReached",
                    f"The maximum number of members in this channel is {reply.full}.",
                    int(PusherCode.OVER_CAPACITY),
                )
            conn.send(error)
            return
        conn.send(wire.encode_presence_succeeded(channel, reply.members))
        self.worker.hub.activate(internal, conn, conn.sink)
        self._owner_seen.setdefault(internal, self.worker.engine.decider(internal))
        if kind_of(channel).cache:
            await self._replay_cache(conn, channel, internal)

    def check_owners(self) -> None:
        """Called per heartbeat: when a presence channel's owner is a new process (it
        restarted) or another member (a reload moved the channel), and it is ready, tell
        it this worker's members of the channel again (``restore``: no announcement), so
        its roster says who is there."""
        self._restore_occupancy()
        if not self._owner_seen:
            return
        hub, engine = self.worker.hub, self.worker.engine
        for internal, seen in list(self._owner_seen.items()):
            members = hub.members(internal)
            if not members:
                del self._owner_seen[internal]
                continue
            now = engine.decider(internal)
            if now == seen or not engine.can_decide(now):
                continue  # told once it is ready (it could not take it before)
            self._owner_seen[internal] = now
            channel = pusher_name(internal)
            for conn in members:
                member = conn.channels.get(channel) if type(conn) is PusherConnection else None
                if member is None or (conn.socket_id, internal) in self._joining:
                    continue  # pending members join by themselves
                restore = PusherJoinRequest(
                    internal,
                    conn.socket_id,
                    member.user_id,
                    member.user_info,
                    conn.app.max_presence_members,
                    restore=True,
                )
                engine.tell(internal, restore)

    def _restore_occupancy(self) -> None:
        """Per heartbeat: tell a channel's new owner process (restarted, or another member
        after a reload) that this worker has subscribers of it (``restore``: it
        decides nothing)."""
        hub, engine = self.worker.hub, self.worker.engine
        for internal, seen in list(self._occupied_at.items()):
            if internal not in hub:
                continue  # being told it is vacant
            now = engine.decider(internal)
            if now == seen or not engine.can_decide(now):
                continue
            self._occupied_at[internal] = now
            request = PusherOccupancyRequest(internal, self.worker.member, True, restore=True)
            engine.tell(internal, request)

    def _leave_owner(self, internal: str, socket_id: str, user_id: str) -> None:
        """Tell the presence channel's owner that ``socket_id`` of ``user_id`` left -- but
        not while its join is still asking the owner (``_join_presence`` sends it then).
        Asked like a join, up to :data:`JOIN_ATTEMPTS` times: a leave sent while the
        owner restarts reaches its next process, which announces ``member_removed``
        once the other workers have restored their members (``PusherOwner``)."""
        if (socket_id, internal) in self._joining:
            return
        self.spawn(self._ask_leave(PusherLeaveRequest(internal, socket_id, user_id)))

    async def _ask_leave(self, request: PusherLeaveRequest) -> None:
        for _attempt in range(JOIN_ATTEMPTS):
            if await self.worker.engine.ask(request.channel, request) is not None:
                return
        log.warning(
            "presence leave of %s on %s: the owner never answered",
            request.socket_id,
            request.channel,
        )

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._tasks.discard)

    def _signin(self, conn: PusherConnection, signin: PusherSignin) -> None:
        """Register ``conn`` under its app's user (the bus user topic that
        ``terminate_connections`` publishes on), then answer ``signin_success`` once that
        topic is live, so a termination right after it reaches this connection. If that
        cannot be confirmed, the connection is closed instead (4506, the Pusher way:
        4100, reconnect after backing off; ``Worker.greet_when_live``)."""
        reply = wire.encode_signin_success(signin.user_data)
        self.worker.greet_when_live(conn, user_key(conn.app.id, signin.user_id), reply)

    def _unsubscribe(self, conn: PusherConnection, unsubscribe: PusherUnsubscribe) -> None:
        internal = internal_name(conn.app.id, unsubscribe.channel)
        self.worker.hub.remove(internal, conn)
        if self.worker.taps.open:
            self.worker.taps.subscribed(internal, conn, subscribed=False)
        if unsubscribe.member is not None:
            self._leave_owner(internal, conn.socket_id, unsubscribe.member.user_id)

    def _client_event(self, conn: PusherConnection, event: ClientEvent) -> None:
        self._stats_of(conn.app.id)[_CLIENT_EVENTS] += 1
        publication = Publication(
            event.data, Kind.PUB, event.event, event.origin, event.user_id or ""
        )
        internal = internal_name(conn.app.id, event.channel)
        self.worker.publish_publication(internal, publication)
        self.webhook(
            internal,
            WebhookEvent(
                "client_event",
                event.channel,
                user_id=event.user_id or None,
                event=event.event,
                data=event.data.decode(),
                socket_id=conn.socket_id,
            ),
        )


#: How the front carries out each outcome of a Pusher session.
_CARRY_OUT: dict[type, Callable[[PusherFront, PusherConnection, Any], None]] = {
    Reply: PusherFront._reply,
    Close: PusherFront._close,
    Nothing: PusherFront._nothing,
    PusherSubscribe: PusherFront._subscribe,
    PusherUnsubscribe: PusherFront._unsubscribe,
    ClientEvent: PusherFront._client_event,
    PusherSignin: PusherFront._signin,
}
