"""The owner's side of Pusher presence and cache channels: one ``Roster`` per presence
channel it owns, the last events of the cache channels it owns (``LastEvents``).

Cache channels: the HTTP API tells the channel's owner each event it publishes to a
cache channel (``pusher.cache_put``); a subscriber worker asks the owner for it
(``pusher.cache_get``) after ``subscription_succeeded`` and sends it, or
``pusher:cache_miss``. Client events are not kept (as Soketi).

A presence channel's owner is its internal name's owner (``history.owner_of`` over the
owners' view, as for history). Every subscriber worker asks it ``pusher.join`` before
answering ``subscription_succeeded`` and tells it ``pusher.leave``; the owner alone
decides ``member_added`` (a user's first connection) and ``member_removed`` (its last),
and publishes them on the channel like any publication, with the connection as
``origin`` (so the connection that caused it does not get it).

Guarantees:

* ``member_added`` and ``member_removed`` are announced once per user per run of
  overlapping connections (``Roster``), cluster-wide, whichever workers they are on.
* No zombies after a worker dies: on every heartbeat the owner drops the subscriptions
  of processes that are gone (a slot of this host whose process changed or is not
  alive, a member of another host that left the owners' view) and announces the users
  that left with them; a join from a newer incarnation of a member drops its older
  incarnation's subscriptions at once.

* An owner that restarted (its roster lost) or a channel that moved to another owner (a
  reload changed the owners' view) gets the existing subscriptions back: each subscriber
  worker tells the new owner process its members (``pusher.join`` with ``restore``, not
  announced) once it is ready (``PusherFront.check_owners``); the old owner forgets the
  channels it no longer owns.
* A leave sent while the owner was down is asked again of its next process (as a join
  is). An owner that may still be restoring (:data:`RESTORING` seconds after its start or
  a change of the owners' view) and gets the leave of a socket it does not know waits
  :data:`SETTLE` seconds for the restores, then announces ``member_removed`` if the user
  has no subscription left -- so other clients keep no zombie member.
* A member of another host that drops out of the view is kept :data:`REMOTE_GRACE`
  seconds: a host that comes back within it (a blink, a short partition) announces
  nothing, as its connections never closed; after it, its users are announced as left
  (a member leaves when its last connection is gone, and one on an unreachable host is
  taken for gone).

Occupancy webhooks (``channel_occupied``, ``channel_vacated``), for apps that have them:
each subscriber worker tells the owner when it gets a channel's first subscriber and
loses its last (``pusher.occupancy``); the owner's :class:`Occupancy` decides, so the
events are cluster-wide and once per change, whichever workers and hosts the
subscribers are on. The same rules as for rosters hold: a restarted owner, or one a
channel moved to, is told the occupied channels again (``restore``, no event); a vacate
it cannot place while restoring is decided after :data:`SETTLE`; a process that is gone
(a local one at once, another host's after :data:`REMOTE_GRACE`) leaves its channels, which
may vacate them. A worker of another host dropped that way and seen again (a partition
healed, a stalled host resumed) is asked which of this owner's channels it has
(``pusher.occupied``), and those that were vacated meanwhile are announced occupied again.
``member_added`` / ``member_removed`` webhooks go with the announcements above.

Not covered (docs/pusher.md): a cache channel's last event is lost with its owner; the
users of a host dropped after :data:`REMOTE_GRACE` that comes back are not announced
again until they subscribe again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from shardws.pure.cluster import slot_of
from shardws.pure.control import (
    OwnerReply,
    PusherCacheGetReply,
    PusherCacheGetRequest,
    PusherCachePutReply,
    PusherCachePutRequest,
    PusherJoinReply,
    PusherJoinRequest,
    PusherLeaveReply,
    PusherLeaveRequest,
    PusherOccupancyReply,
    PusherOccupancyRequest,
    PusherOccupiedReply,
    PusherOccupiedRequest,
    PusherUsersReply,
    PusherUsersRequest,
)
from shardws.pure.publication import Kind, Publication
from shardws.pure.pusher.cache import LastEvents
from shardws.pure.pusher.channels import app_of, incarnation_of, member_of, pusher_name
from shardws.pure.pusher.occupancy import Occupancy
from shardws.pure.pusher.presence import Full, Roster
from shardws.pure.pusher.session import PresenceMember
from shardws.pure.pusher.webhooks import WebhookEvent, member_event
from shardws.server.engine import ASK_TIMEOUT
from shardws.shm.scoreboard import Column

if TYPE_CHECKING:
    from shardws.bus.requests import Requests
    from shardws.shm.scoreboard import Scoreboard
    from shardws.shm.view import Members

log = logging.getLogger("shardws.pusher.owner")

#: Seconds after an owner's start, or a change of the owners' view, during which its
#: rosters may lack members that the subscriber workers have yet to restore.
RESTORING = 30.0
#: Seconds a restoring owner waits, after the leave of a socket it does not know, for the
#: restores (each subscriber worker sends them on its next heartbeat once the owner is
#: ready) before deciding whether the user left.
SETTLE = 5.0
#: Seconds a member of another host may be out of the cluster's view before its
#: subscriptions are dropped and its users announced as left (several peer timeouts).
REMOTE_GRACE = 15.0

#: The owner operations of Pusher channels.
PusherRequest = (
    PusherJoinRequest
    | PusherLeaveRequest
    | PusherUsersRequest
    | PusherCachePutRequest
    | PusherCacheGetRequest
    | PusherOccupancyRequest
    | PusherOccupiedRequest
)

#: Seconds a worker of another host taken for gone is remembered, to ask it for its
#: channels when it is seen again (a partition longer than this is not healed that way).
TAKEN_FOR_GONE_MEMORY = 600.0


class PusherOwnerHost(Protocol):
    """What the Pusher owner needs of its worker: its member id, the cluster's members
    and this host's scoreboard (whose processes are gone), and the one path that
    delivers a publication to a channel's subscribers everywhere."""

    member: int
    members: Members
    board: Scoreboard

    def publish_publication(self, channel: str, publication: Publication) -> None: ...


class Ownership(Protocol):
    """Which member owns a channel, and asking members (``server.owners.Owners``)."""

    requests: Requests

    def owner(self, channel: str) -> int: ...

    def view(self) -> tuple[int, ...]: ...

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class PusherOwner:
    """The rosters of the presence channels this worker owns (see the module doc).

    ``webhook(channel, event)`` hands an event to this host's admin if the channel's app
    wants it; ``occupied_here(asker)`` is this worker's answer to ``pusher.occupied``
    (the Pusher front's: the channels with subscribers here)."""

    def __init__(
        self,
        worker: PusherOwnerHost,
        owners: Ownership,
        webhook: Callable[[str, WebhookEvent], None],
        occupied_here: Callable[[int], tuple[str, ...]],
    ) -> None:
        self.worker = worker
        self.owners = owners
        self._send_webhook = webhook
        self._occupied_here = occupied_here
        self.rosters: dict[str, Roster] = {}
        self.caches: dict[str, LastEvents] = {}  # by app id (each app has its TTL)
        self._view: tuple[int, ...] = ()  # the owners' view the rosters were checked in
        # member id -> (incarnation, pid) of the process we last saw subscriptions from
        self._processes: dict[int, tuple[int, int]] = {}
        self._restoring_since = time.monotonic()
        # Leaves of sockets the roster did not know while restoring:
        # (channel, user id) -> when to decide whether the user left.
        self._unknown_leaves: dict[tuple[str, str], float] = {}
        self._missing_since: dict[int, float] = {}  # member of another host -> first missed
        self.occupancy = Occupancy()  # channels of apps with occupancy webhooks
        self._occupant_pids: dict[int, int] = {}  # occupant member -> its pid (0: remote)
        self._unknown_vacates: dict[str, float] = {}  # channel -> when to decide
        self._taken_for_gone: dict[int, float] = {}  # remote occupant dropped -> when

    def answer(self, request: PusherRequest) -> OwnerReply:
        """Carry out and answer one ``pusher.*`` owner request."""
        if isinstance(request, PusherOccupancyRequest):
            self._occupancy(request)
            return PusherOccupancyReply()
        if isinstance(request, PusherOccupiedRequest):
            return PusherOccupiedReply(self._occupied_here(request.owner))
        if isinstance(request, PusherCachePutRequest):
            app_id = app_of(request.channel)
            cache = self.caches.get(app_id)
            if cache is None:
                cache = self.caches[app_id] = LastEvents(request.ttl)
            cache.store(request.channel, request.event, time.monotonic())
            return PusherCachePutReply()
        if isinstance(request, PusherCacheGetRequest):
            cache = self.caches.get(app_of(request.channel))
            event = None if cache is None else cache.get(request.channel, time.monotonic())
            return PusherCacheGetReply(event)
        if isinstance(request, PusherUsersRequest):
            roster = self.rosters.get(request.channel)
            if roster is None:
                return PusherUsersReply((), 0)
            users = tuple(user for user, _info in roster.members())
            return PusherUsersReply(users, roster.subscription_count)
        if isinstance(request, PusherLeaveRequest):
            self._leave(request.channel, request.socket_id, request.user_id)
            return PusherLeaveReply()
        return self._join(request)

    def _join(self, request: PusherJoinRequest) -> PusherJoinReply:
        channel, socket_id = request.channel, request.socket_id
        self._saw(socket_id)
        roster = self.rosters.get(channel)
        if roster is None:
            roster = self.rosters[channel] = Roster(request.max_members)
        member = PresenceMember(request.user_id, request.user_info)
        if request.restore:
            roster.restore(socket_id, member)
            return PusherJoinReply(())  # a notification: nobody reads the members
        joined = roster.join(socket_id, member)
        if isinstance(joined, Full):
            if not roster.subscription_count:
                del self.rosters[channel]
            return PusherJoinReply((), joined.limit)
        if joined.first:
            data = request.user_info or b""
            self._announce(channel, Publication(data, Kind.JOIN, "", socket_id, request.user_id))
        return PusherJoinReply(tuple(roster.members()))

    def _leave(self, channel: str, socket_id: str, user_id: str) -> None:
        roster = self.rosters.get(channel)
        known = roster is not None and roster.knows(socket_id)
        now = time.monotonic()
        if not known and user_id and now - self._restoring_since < RESTORING:
            # Joined at the previous owner, whose roster is lost; decide once restored.
            self._unknown_leaves[(channel, user_id)] = now + SETTLE
        if roster is None:
            return
        user = roster.leave(socket_id)
        if user is not None:
            self._announce(channel, Publication(b"", Kind.LEAVE, "", socket_id, user))
        if not roster.subscription_count:
            del self.rosters[channel]

    def _announce(self, channel: str, publication: Publication) -> None:
        self.worker.publish_publication(channel, publication)
        self._send_webhook(channel, member_event(channel, publication))

    def _webhook(self, channel: str, name: str) -> None:
        self._send_webhook(channel, WebhookEvent(name, pusher_name(channel)))

    # -- occupancy (channel_occupied, channel_vacated) --------------------------------------

    def _occupancy(self, request: PusherOccupancyRequest) -> None:
        channel, member = request.channel, request.member
        # A worker we took for gone: its channels were announced vacated, so what it
        # restores is announced occupied again, and a vacate we cannot place was said.
        back = member in self._taken_for_gone
        self._note_occupant(member)
        occupancy = self.occupancy
        if request.restore and not back:
            occupancy.restore(channel, member)
        elif request.occupied or request.restore:
            if occupancy.occupy(channel, member):
                self._webhook(channel, "channel_occupied")
        elif channel not in occupancy:
            now = time.monotonic()
            if not back and now - self._restoring_since < RESTORING:
                # Occupied at the previous owner, whose state is lost: decide once the
                # other workers have restored theirs.
                self._unknown_vacates[channel] = now + SETTLE
        elif occupancy.vacate(channel, member):
            self._webhook(channel, "channel_vacated")

    def _note_occupant(self, member: int) -> None:
        """Remember ``member``'s process; a new process in a local slot means the old one
        is gone (its channels are left first)."""
        pid = self.pid_of(member)
        known = self._occupant_pids.get(member)
        if known is not None and known != pid:
            self._drop_occupant(member)
        self._occupant_pids[member] = pid

    def _drop_occupant(self, member: int) -> None:
        self._occupant_pids.pop(member, None)
        for channel in self.occupancy.drop_member(member):
            self._webhook(channel, "channel_vacated")

    def check_occupants(self, ready_elsewhere: set[int]) -> None:
        """Per heartbeat: drop the occupancy of processes that are gone (as
        :meth:`check_processes` for rosters); ask a worker of another host that was taken
        for gone and is back (in ``ready_elsewhere``) which of our channels it has."""
        now = time.monotonic()
        for member in self.occupancy.members():
            if self.worker.members.is_local(member):
                if self.pid_of(member) != self._occupant_pids.get(member):
                    self._drop_occupant(member)
                continue
            if member in ready_elsewhere:
                self._missing_since.pop(member, None)
            elif now - self._missing_since.setdefault(member, now) >= REMOTE_GRACE:
                self._missing_since.pop(member, None)
                self._drop_occupant(member)
                self._taken_for_gone[member] = now
        for member, since in list(self._taken_for_gone.items()):
            if now - since > TAKEN_FOR_GONE_MEMORY:
                del self._taken_for_gone[member]
            elif member in ready_elsewhere:
                del self._taken_for_gone[member]
                self.owners.spawn(self._ask_occupied(member))

    async def _ask_occupied(self, member: int) -> None:
        """Ask ``member`` (back after being taken for gone) which of our channels it has;
        those with no subscriber elsewhere were announced vacated: announce them occupied."""
        owners = self.owners
        request = PusherOccupiedRequest(self.worker.member)
        replies, _missing = await owners.requests.call({member}, request, ASK_TIMEOUT)
        reply = replies.get(member)
        if not isinstance(reply, PusherOccupiedReply):
            log.warning("worker %d did not say which channels it has", member)
            return
        self._occupant_pids[member] = 0
        for channel in reply.channels:
            if owners.owner(channel) == self.worker.member and self.occupancy.occupy(
                channel, member
            ):
                self._webhook(channel, "channel_occupied")

    # -- gone processes ----------------------------------------------------------------

    def pid_of(self, member: int) -> int:
        """The pid in this host's scoreboard row of ``member`` (0 when not local)."""
        if not self.worker.members.is_local(member):
            return 0
        return int(self.worker.board.row(slot_of(member))[Column.PID])

    def _saw(self, socket_id: str) -> None:
        """A join from ``socket_id``: remember its process; a newer incarnation of a
        member means the older one is gone."""
        member, incarnation = member_of(socket_id), incarnation_of(socket_id)
        assert member is not None and incarnation is not None  # checked by the decoder
        known = self._processes.get(member)
        if known is not None and known[0] == incarnation:
            return
        if known is not None and known[0] > incarnation:
            return  # a late join of a process already replaced: the check drops it
        self._processes[member] = (incarnation, self.pid_of(member))
        if known is not None:
            self._drop(member, keep=incarnation)

    def expire(self) -> None:
        """Forget cache channels' events older than their TTL, and announce the users whose
        leave came while restoring and who have no subscription after all (called per
        heartbeat)."""
        now = time.monotonic()
        for cache in self.caches.values():
            cache.expire(now)
        for (channel, user), due in list(self._unknown_leaves.items()):
            if due > now:
                continue
            del self._unknown_leaves[(channel, user)]
            roster = self.rosters.get(channel)
            if roster is None or not roster.has_user(user):
                self._announce(channel, Publication(b"", Kind.LEAVE, "", "", user))
        for channel, due in list(self._unknown_vacates.items()):
            if due <= now:
                del self._unknown_vacates[channel]
                if channel not in self.occupancy:
                    self._webhook(channel, "channel_vacated")

    def check_processes(self) -> None:
        """Drop the subscriptions of processes that are gone (called per heartbeat): a
        slot of this host whose pid is no longer the one that joined (it died, or was
        replaced: the supervisor zeroes a dead worker's row), a member of another host
        that is not among the live hosts' ready workers. And forget the rosters and
        last events of channels this worker no longer owns (a reload moved them: their
        subscriber workers restore them at the new owner)."""
        owners, me = self.owners, self.worker.member
        view = owners.view()
        if view != self._view:  # owners change with the view only: check then
            self._view = view
            self._restoring_since = time.monotonic()
            for channel in [c for c in self.rosters if owners.owner(c) != me]:
                del self.rosters[channel]
            for cache in self.caches.values():
                cache.forget(lambda channel: owners.owner(channel) != me)
            self.occupancy.forget(lambda channel: owners.owner(channel) != me)
        if self.occupancy or self._taken_for_gone:
            self.check_occupants(self.worker.members.ready_workers())
        if not self.rosters:
            self._processes.clear()
            return
        members = self.worker.members
        elsewhere: set[int] | None = None
        now = time.monotonic()
        subscribed = {m for roster in self.rosters.values() for m, _ in roster.processes()}
        for member in list(self._missing_since):
            if member not in subscribed:
                del self._missing_since[member]
        for member in subscribed:
            if members.is_local(member):
                known = self._processes.get(member)
                gone = known is None or self.pid_of(member) != known[1]
            else:
                if elsewhere is None:
                    elsewhere = members.ready_workers()
                if member in elsewhere:
                    self._missing_since.pop(member, None)
                    continue
                since = self._missing_since.setdefault(member, now)
                gone = now - since >= REMOTE_GRACE
            if gone:
                self._missing_since.pop(member, None)
                self._drop(member, keep=None)
                self._processes.pop(member, None)

    def _drop(self, member: int, keep: int | None) -> None:
        for channel, roster in list(self.rosters.items()):
            for user in roster.leave_member(member, keep):
                self._announce(channel, Publication(b"", Kind.LEAVE, "", "", user))
            if not roster.subscription_count:
                del self.rosters[channel]
