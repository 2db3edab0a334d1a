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

Not covered (docs/pusher.md): a cache channel's last event is lost with its owner; the
users of a host dropped after :data:`REMOTE_GRACE` that comes back are not announced
again until they subscribe again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

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
    PusherUsersReply,
    PusherUsersRequest,
)
from shardws.pure.publication import Kind, Publication
from shardws.pure.pusher.cache import LastEvents
from shardws.pure.pusher.channels import app_of, incarnation_of, member_of
from shardws.pure.pusher.presence import Full, Roster
from shardws.pure.pusher.session import PresenceMember
from shardws.shm.scoreboard import Column

if TYPE_CHECKING:
    from shardws.server.worker import Worker

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
)


class PusherOwner:
    """The rosters of the presence channels this worker owns (see the module doc)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
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

    def answer(self, request: PusherRequest) -> OwnerReply:
        """Carry out and answer one ``pusher.*`` owner request."""
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

    def check_processes(self) -> None:
        """Drop the subscriptions of processes that are gone (called per heartbeat): a
        slot of this host whose pid is no longer the one that joined (it died, or was
        replaced: the supervisor zeroes a dead worker's row), a member of another host
        that is not among the live hosts' ready workers. And forget the rosters and
        last events of channels this worker no longer owns (a reload moved them: their
        subscriber workers restore them at the new owner)."""
        owners, me = self.worker.owners, self.worker.member
        view = owners.view()
        if view != self._view:  # owners change with the view only: check then
            self._view = view
            self._restoring_since = time.monotonic()
            for channel in [c for c in self.rosters if owners.owner(c) != me]:
                del self.rosters[channel]
            for cache in self.caches.values():
                cache.forget(lambda channel: owners.owner(channel) != me)
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
