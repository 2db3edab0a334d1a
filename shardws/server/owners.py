"""A worker's part in channels with history and in presence.

For namespaces with ``history_size > 0`` every channel has one **owner** worker:
``history.owner_of`` over the configured worker slots of the host (the scoreboard's
``CONFIGURED`` mark, so every worker computes the same owner, and a worker that crashed
stays the owner of its channels while the supervisor restarts it) and, in a cluster,
those of the other live hosts in the membership view (``membership.Members.owners``:
hosts with the same view pick the same owner; a host that leaves the view takes its
ownerships with it, and the new owners start new epochs). The owner is the
channel's sequencer (``sequencer.Sequencer``); every other worker asks it through its
bus inbox (``control`` requests):

* ``hpub`` — sequence and publish ``data`` (optional ``idem`` key): the owner stores the
  push in the ring, delivers it to its own subscribers and publishes it on the channel's
  bus topic, then answers ``{offset, epoch}``.
* ``hpos`` — the channel's position, and with ``since`` = ``[epoch, offset]`` whether
  that position is recoverable and the missed pushes.
* ``hhist`` — a page of the history.
* ``handover`` — rings moving to this worker (a planned replacement or a scale change).
* ``presence`` — this worker's subscribers of a channel (asked of every worker).

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
  bus pipe (one XPUB to one SUB keeps order across topics).
* A repeated ``idem`` key within the ring's window gets the first offset, no new push.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shardws.bus.requests import Requests
from shardws.config import NamespaceConfig
from shardws.pure import control, protocol
from shardws.pure.busframe import channel_topic, inbox_topic
from shardws.pure.cluster import slot_of
from shardws.pure.history import Entry, RingState, owner_of
from shardws.pure.protocol import CloseCode, ErrorCode, pub_position
from shardws.pure.sequencer import Seen, Sequencer, Tracker
from shardws.server.ringfile import load_rings, rings_path, save_rings

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.pure.auth import Identity
    from shardws.pure.hub import Hub
    from shardws.server.delivery import Delivery
    from shardws.shm.view import Members

log = logging.getLogger("shardws.owners")

OWNER_TIMEOUT = 2.0  # seconds to wait for a channel owner's answer
PRESENCE_TIMEOUT = 1.0  # seconds to wait for the other workers' presence answers
OWNER_OPS = frozenset({"hpub", "hpos", "hposs", "hhist", "handover", "presence"})
#: Seconds between checks of the owners' positions (finds a lost *last* publication,
#: which no later offset would reveal).
POSITION_CHECK_INTERVAL = 2.0


class Connection(Protocol):
    """What the owner logic needs of a client connection (the worker's connections have
    it): its identity and channels, and a way to send it a text message in order with
    its publications."""

    identity: Identity | None
    sink: Any
    client_id: str
    channels: set[str]
    closing: bool

    def send(self, payload: bytes) -> None: ...

    def __hash__(self) -> int: ...


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


@dataclass(eq=False)
class _Pending:
    """A subscriber whose position (and recovery) is being fetched: it receives nothing
    from the live stream yet; what arrives meanwhile is kept here."""

    conn: Connection
    buffer: list[bytes] = field(default_factory=list)


class Owners:
    """Channel owners, recovery, gap repair and presence for one worker."""

    def __init__(self, worker: OwnerHost) -> None:
        self.worker = worker
        self.sequencer = Sequencer(self._options)
        self.tracker = Tracker()
        self.requests = Requests(worker.member, self._send)
        self.repairs = 0  # gaps repaired from the owner
        self.unrecoverable = 0  # gaps that could not be repaired (subscribers closed)
        self._pending: dict[str, list[_Pending]] = {}
        self._repairing: dict[str, list[bytes]] = {}
        self._view: tuple[int, ...] = ()
        self._handing = False  # rings may still need to move to their new owners
        self._tasks: set[asyncio.Task[None]] = set()

    # -- ownership -----------------------------------------------------------------------

    def _options(self, channel: str) -> NamespaceConfig:
        return self.worker.options_for(channel)

    def has_history(self, channel: str) -> bool:
        return self._options(channel).history_size > 0

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

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._tasks.discard)

    async def ask_owner(self, channel: str, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The owner's answer to ``op`` (computed here when this worker is the owner), or
        None if it did not answer within ``OWNER_TIMEOUT``."""
        owner = self.owner(channel)
        if owner == self.worker.member:
            return self.handle(op, args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OWNER_TIMEOUT
        bus = self.worker.bus
        # An owner still booting has not subscribed its inbox yet: a request sent now
        # would vanish and time out, and a client's retry would overtake its later
        # publishes. Wait for the inbox (requests waiting here keep their order).
        waiting = None if bus is None else bus.when_subscribed(inbox_topic(owner))
        if waiting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiting), OWNER_TIMEOUT)
            except TimeoutError:
                return None
        remaining = max(deadline - loop.time(), 0.1)
        answers, _missing = await self.requests.ask({owner}, op, args, remaining)
        return answers.get(owner)

    # -- owner side --------------------------------------------------------------------

    def handle(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """Answer an owner request (from the inbox, or from this worker itself)."""
        channel = request.get("channel")
        if op == "handover":
            self.sequencer.adopt(_states_from_json(request.get("rings", {})))
            return {"ok": True}
        if op == "hposs":
            channels = request.get("channels")
            if not isinstance(channels, list):
                return {"error": "channels must be a list"}
            me = self.worker.member
            mine = [c for c in channels if isinstance(c, str) and self.owner(c) == me]
            return {"positions": self.sequencer.positions(mine)}
        if not isinstance(channel, str) or protocol.channel_error(channel) is not None:
            return {"error": "bad channel"}
        if op == "presence":
            return self.local_presence(channel, bool(request.get("stats")))
        if self.owner(channel) != self.worker.member or not self.has_history(channel):
            return {"error": "not the owner of this channel"}
        if op == "hpub":
            data, idem = request.get("data"), request.get("idem")
            if not isinstance(data, str) or not (idem is None or isinstance(idem, str)):
                return {"error": "bad publication"}
            offset, epoch, push = self.sequencer.publish(channel, data.encode(), idem)
            if push is not None:
                self._emit(channel, push)
            return {"offset": offset, "epoch": epoch}
        if op == "hpos":
            since = _position(request.get("since"))
            return self.sequencer.position(channel, since)
        if op == "hhist":
            since, limit = request.get("since", 0), request.get("limit", 100)
            if not isinstance(since, int) or not isinstance(limit, int):
                return {"error": "since and limit must be integers"}
            return self.sequencer.history(channel, since, limit, bool(request.get("reverse")))
        return {"error": f"unknown op {op!r}"}

    def _emit(self, channel: str, push: bytes) -> None:
        """A sequenced push leaves the owner: local subscribers, then the bus."""
        self.worker.stats_publication()
        self.deliver(channel, [push])
        bus = self.worker.bus
        if bus is not None:
            bus.publish(channel_topic(channel), push)

    # -- subscriber side ---------------------------------------------------------------

    def deliver(self, channel: str, payloads: list[bytes]) -> None:
        """Deliver a channel's pushes (from the bus or the owner itself) to the local
        subscribers in offset order: old ones skipped, a gap held until repaired."""
        for pending in self._pending.get(channel, ()):
            pending.buffer.extend(payloads)
        held = self._repairing.get(channel)
        if held is not None:
            held.extend(payloads)
            return
        worker = self.worker
        sinks = worker.hub.sinks(channel)
        delivery = worker.delivery
        drop = delivery.drop_for(channel)  # False: history namespaces never drop
        for index, push in enumerate(payloads):
            position = pub_position(push, channel)
            if position is not None:
                offset, epoch = position
                seen = self.tracker.check(channel, epoch, offset)
                if seen is Seen.OLD:
                    continue
                if seen is Seen.GAP:
                    self._start_repair(channel, epoch, payloads[index:])
                    return
            if sinks:
                delivery.push(push, sinks, drop)

    def _start_repair(self, channel: str, epoch: str, held: list[bytes]) -> None:
        self._repairing[channel] = list(held)
        base = self.tracker.gap_base(channel, epoch)
        self._spawn(self._repair(channel, epoch, base))

    async def _repair(self, channel: str, epoch: str, base: int) -> None:
        answer = await self.ask_owner(channel, "hpos", {"channel": channel, "since": [epoch, base]})
        held = self._repairing.pop(channel, [])
        if answer is None or not answer.get("recovered"):
            self.unrecoverable += 1
            log.warning("channel %s: publications after %s:%d are lost", channel, epoch, base)
            self.tracker.forget(channel)
            for sink in list(self.worker.hub.sinks(channel)):
                sink.owner.close(CloseCode.INSUFFICIENT_STATE, "missed publications; recover")
            return
        self.repairs += 1
        missed = [text.encode() for text in answer.get("pushes", ())]
        self.deliver(channel, missed + held)

    def check_positions(self) -> None:
        """Ask each owner (one request per owner) for the position of the channels this
        worker delivers: a publication lost on the bus with nothing after it would
        otherwise go unnoticed until the next one. Behind the owner -> repair."""
        by_owner: dict[int, list[str]] = {}
        me = self.worker.member
        for channel in self.tracker.channels():
            owner = self.owner(channel)
            if owner != me and channel not in self._repairing:
                by_owner.setdefault(owner, []).append(channel)
        for owner, channels in by_owner.items():
            self._spawn(self._check_owner(owner, channels))

    async def _check_owner(self, owner: int, channels: list[str]) -> None:
        answers, _missing = await self.requests.ask(
            {owner}, "hposs", {"channels": channels}, OWNER_TIMEOUT
        )
        positions = (answers.get(owner) or {}).get("positions", {})
        for channel, (epoch, offset) in positions.items():
            known = self.tracker.position(channel)
            # The owner sent everything up to ``offset`` before this answer, on the same
            # pipe: whatever of it is not delivered here by now was lost.
            if known is None or channel in self._repairing or offset == 0:
                continue
            if known[0] != epoch or offset > known[1]:
                log.warning(
                    "channel %s: behind its owner (%s:%d); repairing", channel, epoch, offset
                )
                self._start_repair(channel, epoch, [])

    def subscribe(
        self, conn: Connection, command_id: int | None, channel: str, since: tuple[str, int] | None
    ) -> None:
        """Subscribe ``conn`` to a channel with history: live on the bus first, then the
        owner's position (and the missed pushes), then the live stream."""
        pending = _Pending(conn)
        self._pending.setdefault(channel, []).append(pending)
        live = self.worker.hub.add(channel, conn, None)
        self._spawn(self._complete_subscribe(conn, command_id, channel, since, live, pending))

    async def _complete_subscribe(
        self,
        conn: Connection,
        command_id: int | None,
        channel: str,
        since: tuple[str, int] | None,
        live: asyncio.Future[bool],
        pending: _Pending,
    ) -> None:
        try:
            await live
            args = {"channel": channel, "since": None if since is None else list(since)}
            answer = await self.ask_owner(channel, "hpos", args)
        finally:
            waiting = self._pending.get(channel, [])
            if pending in waiting:
                waiting.remove(pending)
            if not waiting:
                self._pending.pop(channel, None)
        if conn.closing or channel not in conn.channels:
            return
        if answer is None or "error" in answer:
            conn.channels.discard(channel)
            self.worker.hub.remove(channel, conn)
            conn.send(
                protocol.encode_error(
                    command_id, ErrorCode.NOT_AVAILABLE, "the channel's owner did not answer; retry"
                )
            )
            return
        epoch, top = answer["epoch"], answer["offset"]
        extra: dict[str, Any] = {"epoch": epoch, "offset": top}
        if since is not None:
            extra["recovered"] = answer["recovered"]
        conn.send(protocol.encode_ok(command_id, **extra))
        for text in answer.get("pushes", ()):
            conn.send(text.encode())
        if self.tracker.position(channel) is None:
            self.tracker.advance(channel, epoch, top)
        # Pushes that arrived while waiting: those the live stream already delivered to
        # the other subscribers and the owner's answer did not include. Later ones are
        # held by a repair and reach this subscriber with everyone else's.
        delivered = self.tracker.position(channel)
        for push in pending.buffer:
            position = pub_position(push, channel)
            if position is None or (
                delivered is not None
                and position[1] == delivered[0]
                and (position[1] != epoch or position[0] > top)
                and position[0] <= delivered[1]
            ):
                conn.send(push)
        self.worker.hub.activate(channel, conn, conn.sink)

    # -- commands ----------------------------------------------------------------------

    def publish(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        self._spawn(self._publish(conn, command_id, channel, data, idem))

    async def _publish(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        args = {"channel": channel, "data": data.decode(), "idem": idem}
        answer = await self.ask_owner(channel, "hpub", args)
        if answer is None or "error" in answer:
            reason = "the channel's owner did not answer; retry with the same idem"
            conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, reason))
        else:
            conn.send(
                protocol.encode_ok(command_id, offset=answer["offset"], epoch=answer["epoch"])
            )

    def history(
        self, conn: Connection, command_id: int | None, channel: str, args: dict[str, Any]
    ) -> None:
        self._spawn(self._history(conn, command_id, channel, args))

    async def _history(
        self, conn: Connection, command_id: int | None, channel: str, args: dict[str, Any]
    ) -> None:
        answer = await self.ask_owner(channel, "hhist", {"channel": channel, **args})
        if answer is None or "error" in answer:
            reason = "the channel's owner did not answer; retry"
            conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, reason))
            return
        conn.send(
            protocol.encode_history(
                command_id,
                answer["epoch"],
                answer["offset"],
                [text.encode() for text in answer["pushes"]],
            )
        )

    # -- presence ------------------------------------------------------------------------

    def local_presence(self, channel: str, stats: bool = False) -> dict[str, Any]:
        """This worker's subscribers of ``channel``: ``{"members": [[user, client, info
        JSON text]]}``, or with ``stats`` only ``{"clients": N, "users": [distinct
        user ids]}`` (no client ids or infos: small for channels with many members)."""
        if stats:
            conns = self.worker.hub.members(channel)
            users = {c.identity.user for c in conns if c.identity is not None and c.identity.user}
            return {"clients": len(conns), "users": sorted(users)}
        members = []
        for conn in self.worker.hub.members(channel):
            identity = conn.identity
            if identity is not None:
                info = identity.info.decode() if identity.info is not None else None
                members.append([identity.user, conn.client_id, info])
        return {"members": members}

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        self._spawn(self._presence(conn, command_id, channel, stats))

    async def _presence(
        self, conn: Connection, command_id: int | None, channel: str, stats: bool
    ) -> None:
        worker = self.worker
        others = worker.members.ready_workers()
        answers, _missing = await self.requests.ask(
            others, "presence", {"channel": channel, "stats": stats}, PRESENCE_TIMEOUT
        )
        everyone = [self.local_presence(channel, stats), *answers.values()]
        if stats:
            clients = sum(int(answer.get("clients", 0)) for answer in everyone)
            users = {user for answer in everyone for user in answer.get("users", ())}
            conn.send(protocol.encode_ok(command_id, clients=clients, users=len(users)))
        else:
            members = [member for answer in everyone for member in answer.get("members", ())]
            conn.send(protocol.encode_presence(command_id, members))

    def announce(self, channel: str, kind: str, conn: Connection) -> None:
        """A ``join``/``leave`` push to the channel's subscribers on every worker."""
        identity = conn.identity
        push = protocol.encode_presence_event(
            kind, channel, identity.user if identity is not None else "", conn.client_id
        )
        sinks = self.worker.hub.sinks(channel)
        if sinks:  # the channel's rule, as on the workers that get it from the bus
            delivery = self.worker.delivery
            delivery.push(push, sinks, delivery.drop_for(channel))
        bus = self.worker.bus
        if bus is not None:
            bus.publish(channel_topic(channel), push)

    # -- hand-over -------------------------------------------------------------------------

    def on_view(self) -> None:
        """Called on every heartbeat. When the owners' view changed (a reload added or
        retired workers): take over the saved rings of retired slots that this worker
        owns now, and hand the rings it no longer owns to their new owners as soon as
        those are ready."""
        view = self.view()
        me = self.worker.member
        if view != self._view:
            gone = set(self._view) - set(view)
            self._view = view
            self._handing = True
            for member in gone:  # a retired slot of this host left its rings in a file
                if self.worker.members.is_local(member):
                    self._adopt_orphans(slot_of(member))
        if not self._handing:
            return
        ready = self.worker.members.ready_workers() | {self.worker.member}
        members = view or (me,)
        released = self.sequencer.release(
            lambda channel: (owner := owner_of(channel, members)) == me or owner not in ready
        )
        self._hand_over(released, members)
        self._handing = any(owner_of(c, members) != me for c in self.sequencer.channels())

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
            payload = control.encode_request(
                "handover", 0, self.worker.member, {"rings": _states_to_json(states)}
            )
            self._send(owner, payload)
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


def _position(value: Any) -> tuple[str, int] | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        return value[0], value[1]
    return None


def _states_to_json(states: dict[str, RingState]) -> dict[str, Any]:
    return {
        channel: {
            "size": state.size,
            "ttl": state.ttl,
            "epoch": state.epoch,
            "offset": state.offset,
            "entries": [[e.offset, e.stored_at, e.push.decode(), e.idem] for e in state.entries],
        }
        for channel, state in states.items()
    }


def _states_from_json(rings: Any) -> dict[str, RingState]:
    states: dict[str, RingState] = {}
    if not isinstance(rings, dict):
        return states
    for channel, ring in rings.items():
        entries = tuple(
            Entry(offset, stored_at, push.encode(), idem)
            for offset, stored_at, push, idem in ring["entries"]
        )
        states[channel] = RingState(
            ring["size"], ring["ttl"], ring["epoch"], ring["offset"], entries
        )
    return states
