"""The cluster view in shared memory, and the member ids one process works with.

The bridge hears every peer's heartbeat and writes the live hosts into a shared-memory
block (:class:`ViewTable`); workers and the admin read it. :class:`Members` combines the
host's scoreboard and that view into the ids every bus header, inbox topic and owner
choice carries (the id scheme itself is ``shardws.pure.cluster``).

Guarantees: a reader never sees a torn view (a sequence lock: the writer makes the
sequence odd while writing; a reader retries until it reads the same even sequence
before and after copying). Only the bridge writes; without a cluster the block stays
empty and :meth:`ViewTable.read` returns None.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING

import numpy as np

from shardws.pure.cluster import Host, View, host_number, host_of, member_id, slot_of
from shardws.shm.segment import SharedArray

if TYPE_CHECKING:
    from shardws.config import Config
    from shardws.shm.scoreboard import Scoreboard

_BLOCK_BYTES = 1 << 20  # the view of ~1000 hosts of 64 workers with their peer stats
_HEADER_BYTES = 16  # u64 sequence, u64 length


def effective_host_id(configured: str) -> str:
    """``[cluster] host_id``, or the system host name when it is empty."""
    return configured or socket.gethostname()


class ViewTable:
    """The shared-memory block holding the current :class:`View` (created by the
    supervisor before fork, written by the bridge, read by everyone)."""

    def __init__(self) -> None:
        self._shared = SharedArray((_BLOCK_BYTES,), np.uint8)
        self._array = self._shared.array
        self._header = self._array[:_HEADER_BYTES].view(np.uint64)
        self._cached: tuple[int, View | None] = (0, None)

    def close(self) -> None:
        del self._header, self._array
        self._shared.close()

    def write(self, view: View) -> None:
        """Publish ``view`` (the bridge only). Raises ValueError if it does not fit."""
        document = json.dumps(
            {
                "number": view.number,
                "hosts": [[h.host_id, h.number, list(h.workers)] for h in view.hosts],
                "peers": view.peers,
            },
            separators=(",", ":"),
        ).encode()
        if len(document) > _BLOCK_BYTES - _HEADER_BYTES:
            raise ValueError(f"membership view of {len(document)} bytes does not fit")
        sequence = int(self._header[0])
        self._header[0] = sequence + 1  # odd: readers retry
        self._array[_HEADER_BYTES : _HEADER_BYTES + len(document)] = np.frombuffer(
            document, np.uint8
        )
        self._header[1] = len(document)
        self._header[0] = sequence + 2

    def read(self) -> View | None:
        """The current view, or None if no bridge wrote one (a single host, or the bridge
        has not started yet). Cheap when nothing changed (cached by sequence)."""
        for _ in range(1000):
            before = int(self._header[0])
            if before == 0:
                return None
            if before == self._cached[0]:
                return self._cached[1]
            if before & 1:
                continue
            length = int(self._header[1])
            raw = self._array[_HEADER_BYTES : _HEADER_BYTES + length].tobytes()
            if int(self._header[0]) != before:
                continue
            data = json.loads(raw)
            view = View(
                data["number"],
                tuple(Host(h[0], h[1], tuple(h[2])) for h in data["hosts"]),
                data["peers"],
            )
            self._cached = (before, view)
            return view
        return self._cached[1]  # a writer kept us out: the previous view is still valid


class Members:
    """The bus member ids one process works with: this host's processes (from the
    scoreboard, always fresh) and, in a cluster, the workers of the other live hosts
    (from the view). Every id a bus header, an inbox topic or an owner choice carries
    comes from here."""

    def __init__(self, board: Scoreboard, view: ViewTable, config: Config, slot: int) -> None:
        cluster = config.cluster
        self.host = host_number(effective_host_id(cluster.host_id)) if cluster.enabled else 0
        self.me = member_id(self.host, slot)
        self._clustered = cluster.enabled
        self._board = board
        self._view = view
        self._stale_after = config.server.heartbeat_timeout

    def id(self, slot: int) -> int:
        """The member id of this host's ``slot``."""
        return member_id(self.host, slot)

    def is_local(self, member: int) -> bool:
        return host_of(member) == self.host

    def local(self) -> list[int]:
        """This host's bus members (workers, admin, bridge) that exist now."""
        return [member_id(self.host, slot) for slot in self._board.members()]

    def relays(self) -> set[int]:
        """Members that must answer this host's bus barriers besides the forwarder: the
        bridge, when this host has one and it is ready (it answers once a subscription
        is live on the peer hosts)."""
        bridge = self._board.bridge_slot
        if self._clustered and self._board.is_ready(bridge, self._stale_after):
            return {member_id(self.host, bridge)}
        return set()

    def inbox_live(self, member: int) -> bool:
        """Whether ``member``'s inbox subscription is live on the bus: a member of this
        host once it is READY (it confirmed its inbox before), a remote one always (the
        bridges forward what its host subscribed)."""
        if host_of(member) != self.host:
            return True
        return self._board.is_ready(slot_of(member), self._stale_after)

    def inbox_answering(self, member: int) -> bool:
        """Like :meth:`inbox_live`, but a local member that is DRAINING counts too: a
        draining worker still answers its owner requests until it saves its rings and
        closes its bus (the admin's stored publications need not wait for its next
        process; a request that arrives too late is asked again)."""
        if host_of(member) != self.host:
            return True
        return self._board.is_ready(slot_of(member), self._stale_after, draining=True)

    def ready_local(self) -> set[int]:
        """This host's members that are READY with a fresh heartbeat, self excluded."""
        ready = self._board.ready_slots(self._stale_after)
        return {member_id(self.host, slot) for slot in ready} - {self.me}

    def view(self) -> View | None:
        """The cluster's view, or None on a single host (or before the bridge wrote)."""
        return self._view.read() if self.host else None

    def owners(self) -> tuple[int, ...]:
        """The workers channels are owned by: this host's configured worker slots and the
        other live hosts' (rendezvous hashing over these gives every host the same owner
        once their views agree)."""
        local = [member_id(self.host, slot) for slot in self._board.workers()]
        view = self.view()
        if view is None:
            return tuple(local)
        return tuple(sorted({*local, *view.remote_workers(self.host)}))

    def ready_workers(self) -> set[int]:
        """Workers to ask for cluster-wide answers (presence, channels): this host's
        ready workers and every worker of the other live hosts, self excluded."""
        board = self._board
        ready = board.ready_slots(self._stale_after) & set(board.workers())
        members = {member_id(self.host, slot) for slot in ready}
        view = self.view()
        if view is not None:
            members |= view.remote_workers(self.host)
        return members - {self.me}
