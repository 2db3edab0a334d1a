"""The engine: what crosses hosts, and who decides a channel's order.

Two things are decided cluster-wide, and an engine is the one place that does them for
a process of a host; everything else stays per host (docs/architecture.md, "The
engine"):

* **What crosses hosts.** A channel's publications reach the workers of every host with
  a subscriber; a user's messages and disconnects reach that user's connections on every
  host; a subscription is *live* when its barrier completes (from then on, whatever any
  member of any host publishes on the channel reaches this worker).
* **Who decides.** A history channel's order and its history, its recovery window; a
  presence channel's members (native lists, Pusher rosters); a Pusher channel's occupancy
  and its cache; the counts over every worker (channel listings, presence lists). One
  decider per channel at a time, which every host agrees on.

Per host, whatever the engine: the host bus (``bus.host``: every member of the host
reads it, in C at the forwarder), the hub (``pure.hub``: which local connections want a
channel) and delivery (``server.delivery``: encode once, frame once, write to sinks).
The fronts -- the native protocol in ``server.worker``, the Pusher front
(``server.pusher``), the admin's HTTP API and ingress (``server.admin``,
``server.pusherapi``) -- reach the cluster only through the protocols of this module;
``tests/test_layers.py`` keeps them from importing what is behind it.

Engines (``[cluster] engine``):

====  ===========================================  ============================================
name  what crosses hosts                           who decides
====  ===========================================  ============================================
mesh  the bridge process of each host: the host    the channel's owner worker
      bus to and from every peer bridge (ZeroMQ,   (``pure.history.owner_of`` over the
      CurveZMQ), one hop; a subscribe barrier      membership view): ``server.owners``
      waits for the relays (``server.bridge``)     (history, presence), ``server.pusherowner``
                                                   (Pusher rosters, occupancy, cache); asked
                                                   through its bus inbox (``pure.control``)
redis the hub process of each host: the host       Redis, one Lua script per decision run by
      bus to and from one Redis (pub/sub), a       the asking process: history channels
      barrier answered once Redis confirms the     (``server.redishistory``: order, epoch,
      subscription (``server.redishub``; on a      the history in a stream), native presence
      Redis Cluster ``server.redisclusterhub``)    (``server.redispresence``), Pusher
                                                   channels (``server.redispusher``); the
                                                   rest: the mesh's owner workers, over the
                                                   view the hubs build through Redis
====  ===========================================  ============================================

Guarantees every engine gives (``docs/guarantees.md`` states them for users):

* At most once, in each publisher's order, for plain channels; a loss on the way is
  counted (``bus_lost``) where it can be seen.
* A subscribe answered ok, a greeting, ``subscription_succeeded``: live, never less. A
  barrier that cannot complete answers "not live" (the future is False).
* History channels: one order per channel (epoch and offset from its decider); a
  subscriber gets every publication once, in order, or is closed with 4505 and recovers
  itself; an answer carries the position; a repeated idempotency key within the ring's
  window is stored once.
* A decider that does not answer within the caller's timeout is an answer of None: the
  caller refuses (error 108 or 503) rather than guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shardws.pure.control import OwnerRefusal, OwnerReply, OwnerRequest, PresenceMember

if TYPE_CHECKING:
    from shardws.pure.auth import Identity
    from shardws.pure.history import Position
    from shardws.pure.publication import Kind, Publication

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)

#: Seconds a front waits for a channel's decider before it answers "retry".
ASK_TIMEOUT = 2.0


class Connection(Protocol):
    """What an engine needs of a client connection (both fronts' connections have it):
    its identity and channels, and ways to send it a reply, a publication or a history
    page in its wire format, in order with its other publications."""

    identity: Identity | None
    sink: Any
    client_id: str
    channels: set[str]
    closing: bool

    def send(self, payload: bytes) -> None: ...

    def send_publication(self, channel: str, publication: Publication) -> None:
        """One publication to this connection alone, in its wire format."""
        ...

    def send_history(
        self,
        command_id: int | None,
        position: Position,
        channel: str,
        publications: list[Publication],
    ) -> None:
        """The reply to a ``history`` command, in its wire format."""
        ...

    def close(self, code: int, reason: str) -> None: ...

    def __hash__(self) -> int: ...


@dataclass(frozen=True)
class StoreCounts:
    """What an engine did with backends' history publications (``GET /api/stats``)."""

    confirmed: int  # channel publications confirmed stored
    unconfirmed: int  # channel publications given up on (answered 503)
    held: int  # fire-and-forget ones that waited for their decider


class Engine(Protocol):
    """What every member of a host (a worker, the admin) asks of the cluster."""

    def publish(self, channel: str, record: bytes) -> None:
        """Send a publication record (``pure.publication.encode``, made once) to the
        channel's subscribers on every worker of every host but this process's own
        local sinks (the caller delivers those itself). Leaves at the end of this loop
        iteration; at most once, in order per publisher."""
        ...

    def send_to_user(self, user: str, message: bytes) -> None:
        """Send a user message (``control.encode_user_push`` or ``encode_disconnect``)
        to ``user``'s connections on every worker of every host."""
        ...

    async def ask(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = ASK_TIMEOUT
    ) -> _ReplyT | None:
        """``channel``'s decider's answer to ``request``, or None if it refused or did
        not answer within ``timeout`` seconds."""
        ...

    def tell(self, channel: str, request: OwnerRequest[Any]) -> None:
        """Send ``request`` to ``channel``'s decider; nobody waits for the answer."""
        ...

    async def ask_workers(
        self, op: str, args: Mapping[str, Any], timeout: float
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """Ask every ready worker of every host but this process (``op`` answered by
        the worker itself, e.g. ``channels``): (answers by member, those that did not
        answer within ``timeout``)."""
        ...

    async def call_workers(
        self, request: OwnerRequest[_ReplyT], timeout: float
    ) -> tuple[dict[int, _ReplyT | OwnerRefusal], set[int]]:
        """:meth:`ask_workers` for a typed request (presence lists and counts)."""
        ...

    async def ask_members(
        self, members: Iterable[int], op: str, args: Mapping[str, Any], timeout: float
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """Ask ``members`` of this host (their inboxes on the host bus, whatever the
        engine), as :meth:`ask_workers`."""
        ...

    def on_reply(self, origin: int, message: Mapping[str, Any]) -> None:
        """A reply that reached this process's inbox on the host bus."""
        ...

    def redis_counters(self) -> dict[str, int]:
        """This process's Redis counters by their ``shm.scoreboard.REDIS_COLUMNS`` name
        (copied to its scoreboard row for ``/health`` and ``/metrics``); empty on an
        engine without Redis."""
        ...


class BackendEngine(Engine, Protocol):
    """What the admin asks besides: backends' publications to history channels."""

    async def store(
        self, channels: Iterable[str], data: bytes, idem: str
    ) -> tuple[dict[str, Position], list[str]]:
        """Store ``data`` in every history channel of ``channels`` under ``idem`` and
        wait for their deciders: (the position of each confirmed one, those not
        confirmed in time -- stored or not, the caller must answer 503)."""
        ...

    def store_later(self, channel: str, data: bytes, idem: str | None) -> None:
        """Store ``data`` in the history channel ``channel``, nobody waiting for the
        position (the ingress's PUSH form); held while its decider is being replaced."""
        ...

    def store_counts(self) -> StoreCounts: ...

    async def presence_members(
        self, channel: str, timeout: float
    ) -> tuple[list[PresenceMember], set[int]] | None:
        """Every subscriber of the presence channel ``channel`` that has an identity,
        on every host, and the ready workers that did not answer within ``timeout``
        (``GET /api/presence``). The mesh asks this host's workers; the Redis hub reads
        Redis (the ``presence`` op's script: nobody missing), None when it did not
        answer."""
        ...

    def close(self) -> None:
        """The process stops: send what is held as it is."""
        ...


class WorkerEngine(Engine, Protocol):
    """What a worker's fronts ask besides: live subscriptions, sequenced channels, and
    the deciders of Pusher channels, whose roster or occupancy they keep told."""

    def subscribe(self, channel: str) -> asyncio.Future[bool]:
        """This worker wants ``channel``'s publications (the hub's first local
        subscriber): the future is True once live on every member of every host, False
        when the barrier could not complete."""
        ...

    def unsubscribe(self, channel: str) -> None:
        """This worker no longer wants ``channel`` (its last local subscriber left)."""
        ...

    def subscribe_user(self, user: str) -> asyncio.Future[bool]:
        """:meth:`subscribe` for a user's messages and disconnects."""
        ...

    def unsubscribe_user(self, user: str) -> None: ...

    # -- sequenced channels (history namespaces) --------------------------------------

    def is_sequenced(self, channel: str) -> bool:
        """Whether ``channel``'s publications are ordered by its decider (a history
        namespace; never a Pusher channel)."""
        ...

    def deliver_sequenced(self, channel: str, publications: list[Publication]) -> None:
        """Deliver a sequenced channel's publications (from the host bus) to the local
        subscribers in offset order, a gap held until repaired from the decider."""
        ...

    def subscribe_sequenced(
        self,
        conn: Connection,
        command_id: int | None,
        channel: str,
        since: Position | None,
        listed: asyncio.Future[bool] | None = None,
    ) -> None:
        """Subscribe ``conn`` to a sequenced channel and answer it: live first (and
        ``listed`` True: the member written where presence is kept, as a plain
        subscribe's ok waits for), then the position (and the publications after
        ``since``), then the live stream; a failure answers 108 and announces the leave
        (``owners.OwnerHost.left``)."""
        ...

    def publish_sequenced(
        self, conn: Connection, command_id: int | None, channel: str, data: bytes, idem: str | None
    ) -> None:
        """Publish ``data`` through the channel's decider; answer ``conn`` its position."""
        ...

    def history(
        self, conn: Connection, command_id: int | None, channel: str, args: dict[str, Any]
    ) -> None:
        """Answer ``conn`` a page of ``channel``'s history (``protocol.parse_history``)."""
        ...

    def presence(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        """Answer ``conn`` the channel's subscribers on every worker (or their counts)."""
        ...

    def announce(self, channel: str, kind: Kind, conn: Connection) -> None:
        """A join or leave of ``conn`` to the channel's subscribers on every worker."""
        ...

    def present(self, channel: str, conn: Connection, here: bool) -> asyncio.Future[bool] | None:
        """``conn`` joined (``here``) or left the presence channel ``channel`` (every
        subscriber of a ``presence = true`` namespace, whatever the reason it leaves):
        for an engine that keeps presence outside the workers (the hub: in Redis). A
        join's future is True once every worker's ``presence`` lists ``conn`` (a plain
        subscribe's ok waits for it; False refuses it like a barrier that failed); None:
        nothing to wait for. The mesh gathers presence from the workers at each call and
        has nothing to do."""
        ...

    def forget(self, channel: str) -> None:
        """This worker left ``channel``: its delivered position restarts with the next
        subscriber."""
        ...

    # -- deciders of Pusher channels -----------------------------------------------------

    def decider(self, channel: str) -> Hashable:
        """Who decides ``channel`` now, as a value that changes when the decider lost
        what it was told (it restarted, or the channel moved): tell it again then."""
        ...

    def can_decide(self, decider: Hashable) -> bool:
        """Whether ``decider`` (a :meth:`decider` value) is ready to be told."""
        ...

    # -- the worker's life ---------------------------------------------------------------

    def load(self) -> None:
        """At boot: take up what this worker's previous process left (the mesh: rings)."""
        ...

    def on_heartbeat(self, now: float, retell: Callable[[], None]) -> None:
        """Called on every heartbeat (``now``: monotonic seconds): follow the deciders'
        view and drop what gone processes held, then call ``retell`` (the fronts tell
        new deciders what they hold: :meth:`decider`), then settle what waited for
        those, and check positions."""
        ...

    def sweep(self) -> int:
        """Forget what idle channels hold here; returns how many were forgotten."""
        ...

    def save(self) -> None:
        """On a drain: keep what the next process (or the next deciders) needs."""
        ...

    def on_inbox(self, origin: int, payloads: list[bytes]) -> None:
        """This worker's inbox on the host bus (``Bus(on_inbox=...)``): replies to its
        questions, the deciders' work it is given, and the members' questions about
        the worker itself (answered by the worker)."""
        ...

    def crossing(self) -> bool:
        """Whether what crosses hosts can cross now. A subscribe or greeting on a topic
        already live here is refused too (108, 4506) while it cannot: its reply would
        otherwise say live while nothing reaches this host (the Redis hub, Redis down)."""
        ...

    def counters(self) -> tuple[int, int, int]:
        """(gaps repaired, gaps unrecoverable, sequenced subscribes not live)."""
        ...


def both(first: asyncio.Future[bool], second: asyncio.Future[bool]) -> asyncio.Future[bool]:
    """True once both futures are True; False as soon as one is False (or cancelled):
    what a subscribe's ok waits for (live on the bus, and listed in a presence kept
    outside the workers)."""
    both: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(_: asyncio.Future[bool]) -> None:
        if both.done():
            return
        if any(f.done() and (f.cancelled() or not f.result()) for f in (first, second)):
            both.set_result(False)
        elif first.done() and second.done():
            both.set_result(True)

    first.add_done_callback(settle)
    second.add_done_callback(settle)
    return both
