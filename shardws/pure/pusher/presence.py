"""A Pusher presence channel's members, as the channel's owner keeps them (no I/O).

Pusher counts presence members by *user*: ``member_added`` goes out when a user's first
connection joins, ``member_removed`` when its last one leaves, and the member limit
(``max_presence_members``) bounds distinct users. One process -- the channel's owner --
keeps the :class:`Roster` of every subscription (by socket id) so that these decisions
are made once, cluster-wide.

Guarantees:

* :meth:`Roster.join` and :meth:`Roster.leave` report a user's arrival and departure
  exactly once per run of overlapping connections, whatever the order of joins and
  leaves, repeated joins of one socket and leaves of unknown sockets included.
* A join that would add a user past the limit is refused and changes nothing; another
  connection of a user already present is always accepted.
* :meth:`Roster.leave_member` drops every subscription of a process that is gone (its
  member id is part of each socket id: :func:`.channels.member_of`).
* :meth:`Roster.restore` puts back a subscription an owner lost, beyond the limit if it
  must (the user is in the channel already): the roster again says who is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardws.pure.pusher.channels import incarnation_of, member_of
from shardws.pure.pusher.session import PresenceMember


@dataclass(frozen=True, slots=True)
class Joined:
    """The subscription is in; ``first``: it is the user's first connection (send
    ``member_added`` to the channel, except to this connection)."""

    first: bool


@dataclass(frozen=True, slots=True)
class Full:
    """Refused: the channel has ``limit`` users already (send the subscriber a
    ``pusher:subscription_error``, ``LimitReached``)."""

    limit: int


class Roster:
    """One presence channel's subscriptions, grouped by user."""

    __slots__ = ("_by_socket", "_limit", "_sockets_of")

    def __init__(self, max_members: int) -> None:
        self._limit = max_members
        self._by_socket: dict[str, PresenceMember] = {}
        # user id -> its sockets; a user is a member while this set is non-empty
        self._sockets_of: dict[str, set[str]] = {}

    def join(self, socket_id: str, member: PresenceMember) -> Joined | Full:
        """Add the subscription of ``socket_id`` as ``member``. The same socket joining
        again (a retried request) keeps one subscription and takes the new user_info;
        joining again as another user is a caller's error (``ValueError``): a connection
        subscribes to a channel once (the session sees to it)."""
        previous = self._by_socket.get(socket_id)
        if previous is not None:
            if previous.user_id != member.user_id:
                raise ValueError(f"socket {socket_id} already joined as another user")
            self._by_socket[socket_id] = member
            return Joined(first=False)
        sockets = self._sockets_of.get(member.user_id)
        if sockets is None:
            if len(self._sockets_of) >= self._limit:
                return Full(self._limit)
            sockets = self._sockets_of[member.user_id] = set()
        sockets.add(socket_id)
        self._by_socket[socket_id] = member
        return Joined(first=len(sockets) == 1)

    def restore(self, socket_id: str, member: PresenceMember) -> None:
        """Put back a subscription that exists already (the roster was lost, or moved
        here): no limit, nothing to announce -- its user was announced when it joined.
        A socket known as another user is a caller's error (``ValueError``)."""
        previous = self._by_socket.get(socket_id)
        if previous is not None and previous.user_id != member.user_id:
            raise ValueError(f"socket {socket_id} already joined as another user")
        self._sockets_of.setdefault(member.user_id, set()).add(socket_id)
        self._by_socket[socket_id] = member

    def leave(self, socket_id: str) -> str | None:
        """Remove the subscription of ``socket_id``: the user id whose last connection
        this was (send ``member_removed``), else None (unknown socket included)."""
        member = self._by_socket.pop(socket_id, None)
        if member is None:
            return None
        sockets = self._sockets_of[member.user_id]
        sockets.discard(socket_id)
        if sockets:
            return None
        del self._sockets_of[member.user_id]
        return member.user_id

    def leave_member(self, member: int, keep: int | None = None) -> list[str]:
        """Remove every subscription of the process whose member id is ``member`` (it
        died or left the cluster) -- but those of incarnation ``keep``, when given (the
        process that holds the member id now): the users that left with it, in no set
        order."""
        gone = [
            socket_id
            for socket_id in self._by_socket
            if member_of(socket_id) == member
            and (keep is None or incarnation_of(socket_id) != keep)
        ]
        return [user for user in map(self.leave, gone) if user is not None]

    def knows(self, socket_id: str) -> bool:
        """Whether ``socket_id`` has a subscription here."""
        return socket_id in self._by_socket

    def has_user(self, user_id: str) -> bool:
        """Whether ``user_id`` has a subscription here (it is a member)."""
        return user_id in self._sockets_of

    def processes(self) -> set[tuple[int, int]]:
        """The ``(member, incarnation)`` of every process with a subscription here."""
        return {
            (int(first) & 0xFFFFFFFF, int(first) >> 32)
            for first, _, _ in (socket_id.partition(".") for socket_id in self._by_socket)
        }

    def members(self) -> list[tuple[str, bytes | None]]:
        """One ``(user_id, user_info)`` per user, for ``subscription_succeeded`` and
        ``GET /users``; a user's info is that of its most recent connection (as Soketi,
        which keeps the last one written)."""
        latest: dict[str, bytes | None] = {}
        for member in self._by_socket.values():  # insertion order: the latest join last
            latest[member.user_id] = member.user_info
        return list(latest.items())

    @property
    def user_count(self) -> int:
        """Distinct users (``user_count`` of the HTTP API)."""
        return len(self._sockets_of)

    @property
    def subscription_count(self) -> int:
        """Subscriptions (``subscription_count``)."""
        return len(self._by_socket)
