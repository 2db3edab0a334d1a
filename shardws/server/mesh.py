"""The mesh engine: the default ``server.engine``, no broker (docs/cluster.md).

What crosses hosts travels on the host bus, and each host's bridge process
(``server.bridge``) forwards it to and from every peer bridge: a channel's topic
reaches a peer only while one of its workers subscribes (ZeroMQ's subscription
forwarding), and a subscribe barrier waits for the bridge's relays. Who decides a
channel is its owner worker, ``pure.history.owner_of`` over the membership view (every
host with the same view picks the same one), asked through its bus inbox with the
owner operations of ``pure.control``: ``server.owners`` keeps history and native
presence, ``server.pusherowner`` Pusher rosters, occupancy and cache.

* :class:`MeshClient` -- the part every member has: publish, user messages, asking a
  channel's owner or every worker.
* :class:`MeshBackend` -- the admin's: backends' publications to history channels,
  confirmed (``server.stored``) or fire-and-forget held while the owner is replaced
  (``server.notices``).
* :class:`MeshEngine` -- a worker's: live subscriptions, sequenced channels (this worker
  is also the owner of its share of them), the owners of Pusher channels, and the
  answers to the other members' requests (:meth:`MeshEngine.on_inbox`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shardws.bus.requests import Requests
from shardws.pure import control
from shardws.pure.busframe import channel_topic, inbox_topic, user_topic
from shardws.pure.control import HistoryPublishRequest, OwnerRefusal, OwnerReply, OwnerRequest
from shardws.pure.history import Position, owner_of
from shardws.server.engine import ASK_TIMEOUT, StoreCounts
from shardws.server.notices import HeldNotices
from shardws.server.owners import OWNER_OPS, POSITION_CHECK_INTERVAL, OwnerHost, Owners
from shardws.server.pusherowner import PusherOwner, PusherOwnerHost
from shardws.server.stored import StoredPublisher

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.pure.publication import Kind, Publication
    from shardws.pure.pusher.webhooks import WebhookEvent
    from shardws.server.engine import Connection
    from shardws.shm.view import Members

log = logging.getLogger("shardws.mesh")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)


class MeshClient:
    """The mesh for any member of a host: ``members`` is its view of the cluster,
    ``bus()`` its host bus (None before it started), ``requests`` its request table
    (fed by :meth:`on_reply`)."""

    def __init__(
        self, members: Members, bus: Callable[[], Bus | None], requests: Requests | None = None
    ) -> None:
        self.members = members
        self._bus = bus
        self.requests = requests if requests is not None else Requests(members.me, self._send)

    def _send(self, member: int, payload: bytes) -> None:
        bus = self._bus()
        if bus is not None:
            bus.publish(inbox_topic(member), payload)

    def publish(self, channel: str, record: bytes) -> None:
        bus = self._bus()
        if bus is not None:
            # Always sent: through the forwarder, other members' subscriptions never
            # reach this member's Python; the forwarder drops a record nobody wants.
            bus.publish(channel_topic(channel), record)

    def send_to_user(self, user: str, message: bytes) -> None:
        bus = self._bus()
        if bus is not None:
            bus.publish(user_topic(user), message)

    def owner(self, channel: str) -> int:
        """The member id of ``channel``'s owner worker."""
        return owner_of(channel, self.members.owners())

    async def ask(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = ASK_TIMEOUT
    ) -> _ReplyT | None:
        owner = self.owner(channel)
        replies, _missing = await self.requests.call({owner}, request, timeout)
        reply = replies.get(owner)
        return None if reply is None or isinstance(reply, OwnerRefusal) else reply

    def tell(self, channel: str, request: OwnerRequest[Any]) -> None:
        # id 0: a notification, nobody waits for an answer.
        self._send(self.owner(channel), control.encode_owner_request(request, 0, self.members.me))

    async def ask_workers(
        self, op: str, args: Mapping[str, Any], timeout: float
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        return await self.requests.ask(self.members.ready_workers(), op, args, timeout)

    async def call_workers(
        self, request: OwnerRequest[_ReplyT], timeout: float
    ) -> tuple[dict[int, _ReplyT | OwnerRefusal], set[int]]:
        return await self.requests.call(self.members.ready_workers(), request, timeout)

    async def ask_members(
        self, members: Iterable[int], op: str, args: Mapping[str, Any], timeout: float
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        return await self.requests.ask(members, op, args, timeout)

    def on_reply(self, origin: int, message: Mapping[str, Any]) -> None:
        """A reply that reached this member's inbox."""
        self.requests.on_reply(origin, message)

    def redis_counters(self) -> dict[str, int]:
        return {}  # the mesh asks no Redis


class MeshBackend(MeshClient):
    """The mesh for the admin: :class:`MeshClient`, and backends' publications to
    history channels stored through their owners."""

    def __init__(self, members: Members, bus: Callable[[], Bus | None]) -> None:
        super().__init__(members, bus)
        self._stored = StoredPublisher(self.requests, members.owners, bus)
        self._notices = HeldNotices(members.owners, members.inbox_live, self._send)

    async def store(
        self, channels: Iterable[str], data: bytes, idem: str
    ) -> tuple[dict[str, Position], list[str]]:
        return await self._stored.store(channels, data, idem)

    def store_later(self, channel: str, data: bytes, idem: str | None) -> None:
        request = HistoryPublishRequest(channel, data, idem)
        self._notices.send(channel, control.encode_owner_request(request, 0, self.members.me))

    async def presence_members(
        self, channel: str, timeout: float
    ) -> tuple[list[control.PresenceMember], set[int]] | None:
        answers, missing = await self.call_workers(control.PresenceListRequest(channel), timeout)
        members = [
            member
            for answer in answers.values()
            if isinstance(answer, control.PresenceListReply)
            for member in answer.members
        ]
        return members, missing

    def store_counts(self) -> StoreCounts:
        stored = self._stored
        return StoreCounts(stored.stored, stored.unconfirmed, self._notices.held)

    def close(self) -> None:
        self._notices.close()


class MeshHost(OwnerHost, PusherOwnerHost, Protocol):
    """What a worker gives its mesh engine: the owners' host and the Pusher owners' in
    one object (the worker)."""


class MeshEngine(MeshClient):
    """The mesh for a worker (``engine.WorkerEngine``). ``host`` is the worker (an
    ``OwnerHost`` and a ``PusherOwnerHost``); ``answer_local(op, request)`` answers the
    members' requests that are not owner operations (the worker's own counts);
    ``webhook`` and ``occupied_here`` are the Pusher front's (``PusherOwner``)."""

    def __init__(
        self,
        host: MeshHost,
        answer_local: Callable[[str, dict[str, Any]], dict[str, Any]],
        webhook: Callable[[str, WebhookEvent], None],
        occupied_here: Callable[[int], tuple[str, ...]],
    ) -> None:
        self.owners = Owners(host)
        super().__init__(host.members, lambda: host.bus, self.owners.requests)
        self._host = host
        self.pusher_owner = PusherOwner(host, self.owners, webhook, occupied_here)
        self.owners.pusher_owner = self.pusher_owner
        self._answer_local = answer_local
        self._next_position_check = 0.0

    # -- asking ---------------------------------------------------------------------------

    def owner(self, channel: str) -> int:
        return self.owners.owner(channel)

    async def ask(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = ASK_TIMEOUT
    ) -> _ReplyT | None:
        # Answered here when this worker is the owner; waits for a booting owner's inbox.
        return await self.owners.ask_owner(channel, request, timeout)

    def tell(self, channel: str, request: OwnerRequest[Any]) -> None:
        if self.owners.owner(channel) == self.members.me:
            self.owners.answer(request)
        else:
            super().tell(channel, request)

    # -- what crosses hosts -------------------------------------------------------------

    def subscribe(self, channel: str) -> asyncio.Future[bool]:
        return self._subscribe_topic(channel_topic(channel))

    def unsubscribe(self, channel: str) -> None:
        self._unsubscribe_topic(channel_topic(channel))

    def subscribe_user(self, user: str) -> asyncio.Future[bool]:
        return self._subscribe_topic(user_topic(user))

    def unsubscribe_user(self, user: str) -> None:
        self._unsubscribe_topic(user_topic(user))

    def _subscribe_topic(self, topic: bytes) -> asyncio.Future[bool]:
        bus = self._host.bus
        assert bus is not None  # the hub asks only once the worker accepts connections
        return bus.subscribe(topic)

    def _unsubscribe_topic(self, topic: bytes) -> None:
        bus = self._host.bus
        if bus is not None:
            bus.unsubscribe(topic)

    # -- sequenced channels ---------------------------------------------------------------

    def is_sequenced(self, channel: str) -> bool:
        return self.owners.has_history(channel)

    def deliver_sequenced(self, channel: str, publications: list[Publication]) -> None:
        self.owners.deliver(channel, publications)

    def subscribe_sequenced(
        self,
        conn: Connection,
        command_id: int | None,
        channel: str,
        since: Position | None,
        listed: asyncio.Future[bool] | None = None,
    ) -> None:
        self.owners.subscribe(conn, command_id, channel, since, listed)

    def publish_sequenced(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        self.owners.publish(conn, command_id, channel, data, idem)

    def history(
        self, conn: Connection, command_id: int | None, channel: str, args: dict[str, Any]
    ) -> None:
        self.owners.history(conn, command_id, channel, args)

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        self.owners.presence(conn, command_id, channel, stats)

    def announce(self, channel: str, kind: Kind, conn: Connection) -> None:
        self.owners.announce(channel, kind, conn)

    def present(self, channel: str, conn: Connection, here: bool) -> asyncio.Future[bool] | None:
        return None  # presence is each worker's hub, gathered at each call

    def forget(self, channel: str) -> None:
        self.owners.tracker.forget(channel)

    # -- deciders of Pusher channels ----------------------------------------------------

    def decider(self, channel: str) -> Hashable:
        """(the owner's member id, its pid; 0 for another host's)."""
        owner = self.owners.owner(channel)
        return owner, self.pusher_owner.pid_of(owner)

    def can_decide(self, decider: Hashable) -> bool:
        assert isinstance(decider, tuple)
        me = self.members.me
        return decider[0] == me or decider[0] in self.members.ready_workers()

    # -- the worker's life ----------------------------------------------------------------

    def load(self) -> None:
        self.owners.load()

    def on_heartbeat(self, now: float, retell: Callable[[], None]) -> None:
        """Follow the owners' view (rings handed over), drop gone processes' rosters,
        let the fronts tell new owners again (``retell``), settle what waited for them,
        and every ``POSITION_CHECK_INTERVAL`` ask the owners for their positions."""
        self.owners.on_view()
        self.pusher_owner.check_processes()
        retell()
        self.pusher_owner.expire()
        if now >= self._next_position_check:
            self._next_position_check = now + POSITION_CHECK_INTERVAL
            self.owners.check_positions()

    def sweep(self) -> int:
        return self.owners.sequencer.sweep()  # idle rings of the channels it owns

    def save(self) -> None:
        self.owners.save()

    def crossing(self) -> bool:
        view = self.members.view()
        return view is None or view.crossing()

    def counters(self) -> tuple[int, int, int]:
        owners = self.owners
        return owners.repairs, owners.unrecoverable, owners.not_live

    # -- the other members' requests ------------------------------------------------------

    def on_inbox(self, origin: int, payloads: list[bytes]) -> None:
        """The host bus's inbox callback: owner operations answered by the owners,
        replies to this worker's requests, and the worker's own questions
        (``answer_local``)."""
        for request in control.inbox_messages(origin, payloads):
            bus = self._host.bus
            if bus is None:
                return
            if "op" not in request:
                self.requests.on_reply(origin, request)
                continue
            reply: dict[str, Any]
            if request["op"] in OWNER_OPS:
                reply = self.owners.handle(request["op"], request)
                if request["id"] == 0:  # a notification (hand-over): nobody waits
                    continue
            else:
                reply = self._answer_local(request["op"], request)
            bus.publish(
                inbox_topic(request["reply_to"]), control.encode_reply(request["id"], reply)
            )
