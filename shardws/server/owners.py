"""A worker's part in channels with history and in presence.

For namespaces with ``history_size > 0`` every channel has one **owner** worker:
``history.owner_of`` over the configured worker slots of the host (the scoreboard's
``CONFIGURED`` mark, so every worker computes the same owner, and a worker that crashed
stays the owner of its channels while the supervisor restarts it) and, in a cluster,
those of the other live hosts in the membership view (``membership.Members.owners``:
hosts with the same view pick the same owner; a host that leaves the view takes its
ownerships with it, and the new owners start new epochs). The owner is the
channel's sequencer (``sequencer.Sequencer``); every other worker asks it through its
bus inbox (the owner operations of ``control``; their table is in
``docs/architecture.md``):

* ``history.publish`` — sequence and publish ``data`` (optional ``idem`` key): the owner
  stores the push in the ring, delivers it to its own subscribers and publishes it on
  the channel's bus topic, then answers with its position.
* ``history.position`` — the channel's position, and with ``since`` whether that
  position is recoverable and the missed pushes.
* ``history.positions`` — the positions of several channels (the periodic check).
* ``history.page`` — a page of the history.
* ``history.handover`` — rings moving to this worker (a planned replacement or a scale
  change).
* ``presence.list``, ``presence.stats`` — this worker's subscribers of a channel (asked
  of every worker).
* ``pusher.join``, ``pusher.leave``, ``pusher.users`` — a Pusher presence channel's
  roster, kept by its owner (``server.pusherowner``).

Guarantees (what ``docs/guarantees.md`` states and the tests check):

* One order per channel: only the owner publishes a channel's pushes, and the bus keeps
  one origin's order; a subscriber worker delivers a channel's pushes in offset order.
* No silent gap: a worker tracks the last offset it delivered per channel
  (``sequencer.Tracker``); a later offset after a gap is held back until the missing
  ones are fetched from the owner. If they cannot be (the ring moved on, the owner is
  gone), the channel's local subscribers are closed with 4505 and recover themselves.
* A subscribe reply means live *and positioned*: the reply carries the position; with
  ``recover``, the missed pushes follow in order, then the live stream, nothing twice.
  This holds because the owner's reply travels behind its earlier pushes on the same
  bus pipe (one XPUB to one SUB keeps order across topics). While a channel's first
  subscribers here wait for that reply, its pushes are held untracked; the first reply
  positions the channel and the held pushes then go through the gap check. A subscriber
  whose reply is ahead of the deliveries here joins when they reach its position; one
  behind gets what was delivered meanwhile (or, if that has a hole, is closed with 4505).
* A repeated ``idem`` key within the ring's window gets the first offset, no new push.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from shardws.bus.requests import Requests
from shardws.config import NamespaceConfig
from shardws.pure import control, protocol
from shardws.pure.busframe import channel_topic, inbox_topic
from shardws.pure.cluster import slot_of
from shardws.pure.control import (
    HistoryHandoverReply,
    HistoryHandoverRequest,
    HistoryPageRequest,
    HistoryPositionRequest,
    HistoryPositionsReply,
    HistoryPositionsRequest,
    HistoryPublishReply,
    HistoryPublishRequest,
    OwnerRefusal,
    OwnerReply,
    OwnerRequest,
    PresenceListReply,
    PresenceListRequest,
    PresenceMember,
    PresenceStatsReply,
    PresenceStatsRequest,
)
from shardws.pure.history import Position, RingState, owner_of
from shardws.pure.protocol import CloseCode, ErrorCode
from shardws.pure.publication import Kind, Publication
from shardws.pure.publication import encode as publication_record
from shardws.pure.pusher.channels import is_internal
from shardws.pure.sequencer import Seen, Sequencer, Tracker
from shardws.server.engine import ASK_TIMEOUT, Connection, both
from shardws.server.pusherowner import PusherRequest
from shardws.server.ringfile import load_rings, rings_path, save_rings

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.pure.hub import Hub
    from shardws.server.delivery import Delivery
    from shardws.server.pusherowner import PusherOwner
    from shardws.shm.view import Members

log = logging.getLogger("shardws.owners")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)

OWNER_TIMEOUT = ASK_TIMEOUT  # seconds to wait for a channel owner's answer
PRESENCE_TIMEOUT = 1.0  # seconds to wait for the other workers' presence answers
OWNER_OPS = frozenset(control.OWNER_REQUESTS)  # the ops a worker's inbox hands to ``handle``
#: Seconds between checks of the owners' positions (finds a lost *last* publication,
#: which no later offset would reveal).
POSITION_CHECK_INTERVAL = 2.0


class OwnerHost(Protocol):
    """The narrow interface between the owner logic and its worker: the worker's bus,
    hub and member ids, and the delivery and accounting the worker does for it. The
    worker implements it; unit tests implement it without sockets."""

    bus: Bus | None  # None until the worker booted
    hub: Hub
    member: int
    members: Members
    run_dir: str
    slot: int

    delivery: Delivery

    def options_for(self, channel: str) -> NamespaceConfig: ...

    def stats_publication(self) -> None: ...

    def left(self, channel: str, conn: Connection) -> None:
        """``conn`` is no longer subscribed to ``channel`` (a refused subscribe): its
        leave is announced and it leaves the channel's presence, where the namespace
        says so."""
        ...


class HistoryDecider(Protocol):
    """Who decides the history channels when no worker owns them (the Redis engine:
    ``server.redishistory``): it answers the history requests (``history.publish``,
    ``.position``, ``.positions``, ``.page``) in place of an owner worker, and publishes
    the channels' publications itself. Its answers travel apart from its publications
    (a position may overtake the publications up to it): see ``Owners.check_positions``."""

    async def ask(self, request: OwnerRequest[_ReplyT], timeout: float) -> _ReplyT | None:
        """The answer, or None if it was not given within ``timeout`` seconds."""
        ...


#: The requests a ``HistoryDecider`` answers.
HISTORY_REQUESTS = (
    HistoryPublishRequest,
    HistoryPositionRequest,
    HistoryPageRequest,
    HistoryPositionsRequest,
)


def is_history_request(request: OwnerRequest[Any]) -> bool:
    """Whether a ``HistoryDecider`` answers ``request`` (one of ``HISTORY_REQUESTS``)."""
    return isinstance(request, HISTORY_REQUESTS)


@dataclass(eq=False)
class _Pending:
    """A subscriber whose position (and recovery) is being fetched: it receives nothing
    from the live stream yet; what the channel's subscribers here are delivered meanwhile
    is kept here, in delivery order."""

    conn: Connection
    buffer: list[Publication] = field(default_factory=list)


class Owners:
    """Channel owners, recovery, gap repair and presence for one worker."""

    def __init__(self, worker: OwnerHost, decider: HistoryDecider | None = None) -> None:
        self.worker = worker
        #: Who answers history requests instead of the owner workers (None: the owners).
        self.decider = decider
        # The decider's positions at the last check that this worker was behind of
        # (only with a decider: see check_positions).
        self._behind: dict[str, Position] = {}
        self.sequencer = Sequencer(self._options)
        self.tracker = Tracker()
        self.requests = Requests(worker.member, self._send)
        #: The rosters of the Pusher presence channels owned here (set by the worker).
        self.pusher_owner: PusherOwner | None = None
        self.repairs = 0  # gaps repaired from the owner
        self.unrecoverable = 0  # gaps that could not be repaired (subscribers closed)
        self.not_live = 0  # subscribes refused with 108: their bus barrier did not complete
        self._pending: dict[str, list[_Pending]] = {}
        # Pushes of channels not positioned here yet, held while their first subscribers
        # wait for the owner's answer (which says where the channel stands).
        self._unpositioned: dict[str, list[Publication]] = {}
        # Subscribers whose answer is ahead of what this worker delivered (a push before
        # it is still in flight or being repaired), by the position they start after.
        self._joining: dict[str, dict[Connection, Position]] = {}
        self._repairing: dict[str, list[Publication]] = {}
        self._view: tuple[int, ...] = ()
        self._handing = False  # rings may still need to move to their new owners
        self._tasks: set[asyncio.Task[None]] = set()

    # -- ownership -----------------------------------------------------------------------

    def _options(self, channel: str) -> NamespaceConfig:
        return self.worker.options_for(channel)

    def has_history(self, channel: str) -> bool:
        # Pusher channels (internal names) have no history, whatever the default
        # namespace says: their names have no namespace.
        return self._options(channel).history_size > 0 and not is_internal(channel)

    def view(self) -> tuple[int, ...]:
        """The member ids of the workers that own channels now: this host's configured
        worker slots and, in a cluster, the other live hosts' (``Members.owners``)."""
        return self.worker.members.owners()

    def owner(self, channel: str) -> int:
        return owner_of(channel, self.view() or (self.worker.member,))

    def _send(self, member: int, payload: bytes) -> None:
        bus = self.worker.bus
        if bus is not None:
            bus.publish(inbox_topic(member), payload)

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._tasks.discard)

    async def ask_owner(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = OWNER_TIMEOUT
    ) -> _ReplyT | None:
        """The owner's answer to ``request`` (computed here when this worker is the
        owner; the decider's for a history request, when there is one), or None if it
        refused or did not answer within ``timeout`` seconds."""
        if self.decider is not None and is_history_request(request):
            return await self.decider.ask(request, timeout)
        owner = self.owner(channel)
        if owner == self.worker.member:
            mine = self.answer(request)
            return None if isinstance(mine, OwnerRefusal) else mine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        bus = self.worker.bus
        # An owner still booting has not subscribed its inbox yet: a request sent now
        # would vanish and time out, and a client's retry would overtake its later
        # publishes. Wait for the inbox (requests waiting here keep their order).
        waiting = None if bus is None else bus.when_subscribed(inbox_topic(owner))
        if waiting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiting), timeout)
            except TimeoutError:
                return None
        remaining = max(deadline - loop.time(), 0.1)
        replies, _missing = await self.requests.call({owner}, request, remaining)
        reply = replies.get(owner)
        if isinstance(reply, OwnerRefusal):
            log.debug("worker %d refused %s on %s: %s", owner, request.op, channel, reply.error)
            return None
        return reply

    # -- owner side --------------------------------------------------------------------

    def handle(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """Answer an owner request from the inbox (``op`` is one of ``OWNER_OPS``, the
        rest of ``request`` its members): the fields of the reply."""
        try:
            decoded = control.decode_owner_request(op, request)
        except ValueError as exc:
            return OwnerRefusal(str(exc)).fields()
        return self.answer(decoded).fields()

    def answer(self, request: OwnerRequest[_ReplyT]) -> _ReplyT | OwnerRefusal:
        """Answer an owner request (from the inbox, or from this worker itself)."""
        reply = self._answer(request)
        assert isinstance(reply, request.reply_type | OwnerRefusal)
        return cast("_ReplyT | OwnerRefusal", reply)

    def _answer(self, request: OwnerRequest[Any]) -> OwnerReply:
        me = self.worker.member
        if isinstance(request, HistoryHandoverRequest):
            self.sequencer.adopt(dict(request.rings))
            return HistoryHandoverReply()
        if isinstance(request, HistoryPositionsRequest):
            mine = [c for c in request.channels if self.owner(c) == me]
            return HistoryPositionsReply(self.sequencer.positions(mine))
        if isinstance(request, PresenceListRequest):
            return self.local_presence(request.channel)
        if isinstance(request, PresenceStatsRequest):
            return self.local_presence_stats(request.channel)
        if isinstance(request, PusherRequest):
            if self.pusher_owner is None:
                return OwnerRefusal("no Pusher presence here")
            return self.pusher_owner.answer(request)
        if not isinstance(
            request, HistoryPublishRequest | HistoryPositionRequest | HistoryPageRequest
        ):
            return OwnerRefusal(f"unknown op {request.op!r}")
        channel = request.channel
        self._sync_view()  # a retired worker's rings are taken over before answering
        if self.owner(channel) != me or not self.has_history(channel):
            return OwnerRefusal("not the owner of this channel")

        if isinstance(request, HistoryPublishRequest):
            position, publication = self.sequencer.publish(channel, request.data, request.idem)
            if publication is not None:
                self._emit(channel, publication)
            return HistoryPublishReply(position)
        if isinstance(request, HistoryPositionRequest):
            return self.sequencer.position(channel, request.since)
        return self.sequencer.history(channel, request.since, request.limit, request.reverse)

    def _emit(self, channel: str, publication: Publication) -> None:
        """A sequenced publication leaves the owner: local subscribers, then the bus."""
        self.worker.stats_publication()
        self.deliver(channel, [publication])
        bus = self.worker.bus
        if bus is not None:
            bus.publish(channel_topic(channel), publication_record(publication))

    # -- subscriber side ---------------------------------------------------------------

    def deliver(self, channel: str, publications: list[Publication]) -> None:
        """Deliver a channel's publications (from the bus or the owner itself) to the
        local subscribers in offset order: old ones skipped, a gap held until repaired.

        While the channel's first subscribers here wait for the owner's answer, nothing
        tells a missing publication from one before their start: they are held untracked
        until the first answer positions the channel, then go through the gap check."""
        if self.tracker.position(channel) is None and self._pending.get(channel):
            self._unpositioned.setdefault(channel, []).extend(publications)
            return
        self._deliver(channel, publications)

    def _deliver(self, channel: str, publications: list[Publication]) -> None:
        held = self._repairing.get(channel)
        if held is not None:
            held.extend(publications)
            return
        worker = self.worker
        delivery = worker.delivery
        drop = delivery.drop_for(channel)  # False: history namespaces never drop
        pending = self._pending.get(channel, ())
        for index, publication in enumerate(publications):
            position = publication.position
            if position is not None:
                seen = self.tracker.check(channel, position)
                if seen is Seen.OLD:
                    continue
                if seen is Seen.GAP:
                    self._start_repair(channel, position.epoch, publications[index:])
                    return
                if channel in self._joining:
                    self._join(channel, position, delivered=False)
            groups = worker.hub.groups(channel)
            if groups:
                delivery.publish(channel, publication, groups, drop)
            for waiting in pending:
                waiting.buffer.append(publication)
            if position is not None and channel in self._joining:
                self._join(channel, position, delivered=True)

    def _join(self, channel: str, at: Position, delivered: bool) -> None:
        """Activate the joining subscribers of ``channel`` that must get the push at
        ``at`` (called before delivering it), or that start right after it (called once
        it is ``delivered``)."""
        joining = self._joining[channel]
        for conn, start in list(joining.items()):
            if (start == at) if delivered else _after(at, start):
                del joining[conn]
                if not conn.closing and channel in conn.channels:
                    self._activate(channel, conn)
        if not joining:
            del self._joining[channel]

    def _start_repair(self, channel: str, epoch: str, held: list[Publication]) -> None:
        self._repairing[channel] = list(held)
        base = Position(epoch, self.tracker.gap_base(channel, epoch))
        self.spawn(self._repair(channel, base))

    async def _repair(self, channel: str, base: Position) -> None:
        answer = await self.ask_owner(channel, HistoryPositionRequest(channel, base))
        held = self._repairing.pop(channel, [])
        if answer is None or not answer.recovered:
            self.unrecoverable += 1
            why = "no answer" if answer is None else answer.reason
            log.warning("channel %s: publications after %s:%d are lost (%s)", channel, *base, why)
            self.tracker.forget(channel)
            for sink in list(self.worker.hub.sinks(channel)):
                sink.owner.close(CloseCode.INSUFFICIENT_STATE, _MISSED)
            for conn in self._joining.pop(channel, {}):
                conn.close(CloseCode.INSUFFICIENT_STATE, _MISSED)
            return
        self.repairs += 1
        self._deliver(channel, [*answer.publications, *held])

    def check_positions(self) -> None:
        """Ask each owner (one request per owner) for the position of the channels this
        worker delivers: a publication lost on the bus with nothing after it would
        otherwise go unnoticed until the next one. Behind the owner -> repair."""
        if self.decider is not None:
            channels = [c for c in self.tracker.channels() if c not in self._repairing]
            if channels:
                self.spawn(self._check_decider(channels))
            return
        by_owner: dict[int, list[str]] = {}
        me = self.worker.member
        for channel in self.tracker.channels():
            owner = self.owner(channel)
            if owner != me and channel not in self._repairing:
                by_owner.setdefault(owner, []).append(channel)
        for owner, channels in by_owner.items():
            self.spawn(self._check_owner(owner, channels))

    async def _check_owner(self, owner: int, channels: list[str]) -> None:
        request = HistoryPositionsRequest(tuple(channels))
        replies, _missing = await self.requests.call({owner}, request, OWNER_TIMEOUT)
        reply = replies.get(owner)
        positions = reply.positions if isinstance(reply, HistoryPositionsReply) else {}
        for channel, at in positions.items():
            # The owner sent everything up to ``at`` before this answer, on the same
            # pipe: whatever of it is not delivered here by now was lost.
            if self._is_behind(channel, at):
                self._repair_behind(channel, at)

    async def _check_decider(self, channels: list[str]) -> None:
        """:meth:`check_positions` with a decider, whose answer may overtake the
        publications up to it (they cross through Redis and the hub, the answer comes on
        the script connection): a channel is repaired when what is delivered here is
        still behind the position the decider answered at the check before, whose
        publications had a whole interval to arrive."""
        assert self.decider is not None
        request = HistoryPositionsRequest(tuple(channels))
        reply = await self.decider.ask(request, OWNER_TIMEOUT)
        if reply is None:
            return
        earlier, self._behind = self._behind, {}
        for channel, at in reply.positions.items():
            if not self._is_behind(channel, at):
                continue
            before = earlier.get(channel)
            if before is not None and self._is_behind(channel, before):
                self._repair_behind(channel, before)
            else:
                self._behind[channel] = at

    def _is_behind(self, channel: str, at: Position) -> bool:
        """Whether the deliveries here on ``channel`` are behind the decider's ``at``."""
        known = self.tracker.position(channel)
        if known is None or channel in self._repairing or at.offset == 0:
            return False
        return known.epoch != at.epoch or at.offset > known.offset

    def _repair_behind(self, channel: str, at: Position) -> None:
        log.warning("channel %s: behind its owner (%s:%d); repairing", channel, *at)
        self._start_repair(channel, at.epoch, [])

    def subscribe(
        self,
        conn: Connection,
        command_id: int | None,
        channel: str,
        since: Position | None,
        listed: asyncio.Future[bool] | None = None,
    ) -> None:
        """Subscribe ``conn`` to a channel with history: live on the bus first (and
        listed in the channel's presence, when ``listed`` is given: kept outside the
        workers), then the owner's position (and the missed pushes), then the live
        stream. A subscribe that fails (not live, not listed, no position) is undone
        and answered 108: ``worker.left`` announces its leave, as its join was."""
        pending = _Pending(conn)
        self._pending.setdefault(channel, []).append(pending)
        live = self.worker.hub.add(channel, conn, None)
        if listed is not None:
            live = both(live, listed)
        self.spawn(self._complete_subscribe(conn, command_id, channel, since, live, pending))

    async def _complete_subscribe(
        self,
        conn: Connection,
        command_id: int | None,
        channel: str,
        since: Position | None,
        live: asyncio.Future[bool],
        pending: _Pending,
    ) -> None:
        try:
            is_live = await live
            answer = None
            if is_live:
                answer = await self.ask_owner(channel, HistoryPositionRequest(channel, since))
        finally:
            waiting = self._pending.get(channel, [])
            if pending in waiting:
                waiting.remove(pending)
            if not waiting:
                self._pending.pop(channel, None)
        if conn.closing or channel not in conn.channels:
            self._forget_unpositioned(channel)
            return
        if answer is None:
            # Not live on every worker (barrier timed out) or no position from the owner:
            # either way no ok, which would promise more than holds; the client retries.
            self._forget_unpositioned(channel)
            conn.channels.discard(channel)
            self.worker.hub.remove(channel, conn)
            self.worker.left(channel, conn)
            if is_live:
                message = "the channel's owner did not answer; retry"
            else:
                self.not_live += 1
                message = protocol.NOT_LIVE_MESSAGE
            conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, message))
            return
        top = answer.position
        extra: dict[str, Any] = {"epoch": top.epoch, "offset": top.offset}
        if since is not None:
            extra["recovered"] = answer.recovered
            if answer.reason is not None:
                extra["reason"] = answer.reason.value
        conn.send(protocol.encode_ok(command_id, **extra))
        for publication in answer.publications:
            conn.send_publication(channel, publication)
        self._place(channel, pending, top)

    def _place(self, channel: str, pending: _Pending, top: Position) -> None:
        """Start delivering to a subscriber that has everything up to ``top`` (its answer)
        from where this worker's deliveries on the channel stand: every push after
        ``top`` exactly once, in order."""
        conn = pending.conn
        delivered = self.tracker.position(channel)
        if delivered is None:
            # The first positioned subscriber: the channel starts at its answer. The
            # pushes held meanwhile go through the gap check: older ones are skipped, a
            # missing one is repaired before any later one is delivered.
            self.tracker.advance(channel, top)
            self._activate(channel, conn)
            held = self._unpositioned.pop(channel, [])
            for other in self._pending.get(channel, ()):
                # Still waiting, and may start before ``top``: keep what it may need.
                other.buffer.extend(p for p in held if _at_or_before(p, top))
            self._deliver(channel, held)
            return
        if top.epoch == delivered.epoch and top.offset > delivered.offset:
            # The answer overtook pushes still on their way (or being repaired): start
            # once the deliveries here reach ``top``.
            self._joining.setdefault(channel, {})[conn] = top
            return
        # Behind (or level with) the deliveries here: what it lacks was delivered while
        # it waited, so its buffer holds it, unless the answer came from an epoch left
        # since (then all of the new one) or raced a loss the others had no need to
        # repair: never skip silently, tell it to recover.
        base = top if top.epoch == delivered.epoch else Position(delivered.epoch, 0)
        missed = _catch_up(pending.buffer, base, delivered)
        if missed is None:
            self.unrecoverable += 1
            log.warning("channel %s: a subscriber cannot catch up from %s:%d", channel, *top)
            conn.close(CloseCode.INSUFFICIENT_STATE, _MISSED)
            return
        for publication in missed:
            conn.send_publication(channel, publication)
        self._activate(channel, conn)

    def _activate(self, channel: str, conn: Connection) -> None:
        """Start delivering to a pending subscriber (deltas resume where its recovered
        publications end, ``Delivery.resume_deltas``)."""
        self.worker.hub.activate(channel, conn, conn.sink)
        self.worker.delivery.resume_deltas(conn, channel)

    def _forget_unpositioned(self, channel: str) -> None:
        """A waiting subscriber gave up: if it was the last, nobody needs the held pushes."""
        if not self._pending.get(channel):
            self._unpositioned.pop(channel, None)

    # -- commands ----------------------------------------------------------------------

    def publish(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        self.spawn(self._publish(conn, command_id, channel, data, idem))

    async def _publish(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        answer = await self.ask_owner(channel, HistoryPublishRequest(channel, data, idem))
        if answer is None:
            reason = "the channel's owner did not answer; retry with the same idem"
            conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, reason))
        else:
            position = answer.position
            conn.send(protocol.encode_ok(command_id, offset=position.offset, epoch=position.epoch))

    def history(
        self, conn: Connection, command_id: int | None, channel: str, args: dict[str, Any]
    ) -> None:
        """``args``: ``since``, ``limit``, ``reverse`` (``protocol.parse_history``)."""
        request = HistoryPageRequest(channel, **args)
        self.spawn(self._history(conn, command_id, request))

    async def _history(
        self, conn: Connection, command_id: int | None, request: HistoryPageRequest
    ) -> None:
        answer = await self.ask_owner(request.channel, request)
        if answer is None:
            reason = "the channel's owner did not answer; retry"
            conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, reason))
            return
        conn.send_history(command_id, answer.position, request.channel, list(answer.publications))

    # -- presence ------------------------------------------------------------------------

    def local_presence(self, channel: str) -> PresenceListReply:
        """This worker's subscribers of ``channel`` that have an identity."""
        members = []
        for conn in self.worker.hub.members(channel):
            identity = conn.identity
            if identity is not None:
                info = identity.info.decode() if identity.info is not None else None
                members.append(PresenceMember(identity.user, conn.client_id, info))
        return PresenceListReply(tuple(members))

    def local_presence_stats(self, channel: str) -> PresenceStatsReply:
        """How many subscribers of ``channel`` this worker has and their distinct user
        ids (no client ids or infos: small for channels with many members)."""
        conns = self.worker.hub.members(channel)
        users = {c.identity.user for c in conns if c.identity is not None and c.identity.user}
        return PresenceStatsReply(len(conns), tuple(sorted(users)))

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        self.spawn(self._presence(conn, command_id, channel, stats))

    async def _presence(
        self, conn: Connection, command_id: int | None, channel: str, stats: bool
    ) -> None:
        others = self.worker.members.ready_workers()
        if stats:
            counted, _ = await self.requests.call(
                others, PresenceStatsRequest(channel), PRESENCE_TIMEOUT
            )
            counts = [self.local_presence_stats(channel), *_replies(counted, PresenceStatsReply)]
            clients = sum(count.clients for count in counts)
            users = {user for count in counts for user in count.users}
            conn.send(protocol.encode_ok(command_id, clients=clients, users=len(users)))
        else:
            listed, _ = await self.requests.call(
                others, PresenceListRequest(channel), PRESENCE_TIMEOUT
            )
            lists = [self.local_presence(channel), *_replies(listed, PresenceListReply)]
            members = [list(member) for part in lists for member in part.members]
            conn.send(protocol.encode_presence(command_id, members))

    def announce(self, channel: str, kind: Kind, conn: Connection) -> None:
        """A join or leave (``kind``) of ``conn`` to the channel's subscribers on every
        worker."""
        identity = conn.identity
        user = identity.user if identity is not None else ""
        publication = Publication(b"", kind, origin=conn.client_id, user=user)
        groups = self.worker.hub.groups(channel)
        if groups:  # the channel's rule, as on the workers that get it from the bus
            delivery = self.worker.delivery
            delivery.publish(channel, publication, groups, delivery.drop_for(channel))
        bus = self.worker.bus
        if bus is not None:
            bus.publish(channel_topic(channel), publication_record(publication))

    # -- hand-over -------------------------------------------------------------------------

    def on_view(self) -> None:
        """Called on every heartbeat. When the owners' view changed (a reload added or
        retired workers): take over the saved rings of retired slots that this worker
        owns now, and hand the rings it no longer owns to their new owners as soon as
        those are ready."""
        view = self._sync_view()
        me = self.worker.member
        if not self._handing:
            return
        ready = self.worker.members.ready_workers() | {self.worker.member}
        members = view or (me,)
        released = self.sequencer.release(
            lambda channel: (owner := owner_of(channel, members)) == me or owner not in ready
        )
        self._hand_over(released, members)
        self._handing = any(owner_of(c, members) != me for c in self.sequencer.channels())

    def _sync_view(self) -> tuple[int, ...]:
        """The owners' view; when it changed since last seen, take over the saved rings
        of the retired slots this worker owns now (also called before answering a
        history request, so that one arriving before the next heartbeat does not start
        a new epoch for a channel whose ring is in a retired slot's file)."""
        view = self.view()
        if view != self._view:
            gone = set(self._view) - set(view)
            self._view = view
            self._handing = True
            for member in gone:  # a retired slot of this host left its rings in a file
                if self.worker.members.is_local(member):
                    self._adopt_orphans(slot_of(member))
        return view

    def _adopt_orphans(self, slot: int) -> None:
        """A retired slot saved its rings when it drained: adopt those this worker owns
        now (each remaining worker takes its own share; the file stays for the others
        and is replaced if the slot comes back)."""
        me = self.worker.member
        taken = self.sequencer.adopt_mine(
            load_rings(self._rings_path(slot), keep=True), lambda channel: self.owner(channel) == me
        )
        if taken[0]:
            log.info("took over %d ring(s) of retired worker %d", taken[0], slot)

    def _hand_over(self, rings: dict[str, RingState], view: Iterable[int]) -> None:
        members = tuple(view)
        by_owner: dict[int, dict[str, RingState]] = {}
        for channel, state in rings.items():
            by_owner.setdefault(owner_of(channel, members), {})[channel] = state
        for owner, states in by_owner.items():
            request = HistoryHandoverRequest(states)
            self._send(owner, control.encode_owner_request(request, 0, self.worker.member))
            log.info("handed %d ring(s) over to worker %d", len(states), owner)

    def save(self) -> None:
        """On a drain: keep every ring for this slot's next process (or, when a reload
        retires this slot, for the workers that own its channels next)."""
        if len(self.sequencer):
            count = save_rings(self._rings_path(self.worker.slot), self.sequencer.snapshot())
            log.info("saved %d ring(s) for the next process of this slot", count)

    def load(self) -> None:
        """At boot: continue the rings the previous process of this slot saved; rings
        that belong to other workers now are handed to them."""
        me = self.worker.member
        adopted, others = self.sequencer.adopt_mine(
            load_rings(self._rings_path(self.worker.slot)),
            lambda channel: self.owner(channel) == me,
        )
        if adopted or others:
            log.info("continued %d ring(s) saved by this slot's previous process", adopted)
        if others:
            self._hand_over(others, self.view())

    def _rings_path(self, slot: int) -> str:
        return rings_path(self.worker.run_dir, slot)


_MISSED = "missed publications; recover"


def _after(at: Position, start: Position) -> bool:
    """Whether a joining subscriber that starts after ``start`` must get the push at
    ``at`` (a push of a later epoch: all of it)."""
    return at.epoch != start.epoch or at.offset > start.offset


def _at_or_before(publication: Publication, top: Position) -> bool:
    at = publication.position
    return at is not None and at.epoch == top.epoch and at.offset <= top.offset


def _catch_up(
    buffer: list[Publication], base: Position, delivered: Position
) -> list[Publication] | None:
    """The publications of ``buffer`` after ``base`` up to ``delivered`` (same epoch),
    each once and in order, with the unnumbered ones (join, leave) among them; None if
    one is missing."""
    chosen: list[Publication] = []
    expected = base.offset + 1
    for publication in buffer:
        at = publication.position
        if at is None:
            chosen.append(publication)
        elif at.epoch == delivered.epoch and expected <= at.offset <= delivered.offset:
            if at.offset != expected:
                return None
            chosen.append(publication)
            expected += 1
    return chosen if expected > delivered.offset else None


def _replies(replies: dict[int, Any], kind: type[_ReplyT]) -> list[_ReplyT]:
    """The answers of type ``kind`` among ``replies`` (refusals left out)."""
    return [reply for reply in replies.values() if isinstance(reply, kind)]
