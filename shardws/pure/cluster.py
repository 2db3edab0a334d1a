"""Cluster member ids and views, as values (no I/O).

**Member ids.** Every bus member of the cluster has one 32-bit id, ``host_number << 16 |
slot``: ``slot`` is the process's row on its host's scoreboard (workers, then the admin,
then the bridge) and ``host_number`` is derived from ``[cluster] host_id``
(:func:`host_number`). A single host (no cluster) has host number 0, so its member ids
are its slots. Bus headers carry these ids, so sequence checks, inbox topics and
request/reply work unchanged across hosts.

**The view.** The live hosts and their configured workers, as the bridge sees them
(:class:`View`). The view number is a digest of the live hosts and their workers: two
hosts that see the same members have the same view number, so convergence after a
partition is visible by comparing numbers. ``shardws.shm.view`` holds it in shared memory.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SLOT_BITS = 16
SLOT_MASK = (1 << SLOT_BITS) - 1

#: The host number no host has (:func:`host_number` never gives it): the origin of what
#: Redis itself publishes on the hub (a history channel's publications, numbered by
#: Redis: ``server.redishistory``), so that no host takes it for its own or a peer's.
DECIDER_HOST = 0xFFFF
#: The member id of Redis as a publisher (``member_id(DECIDER_HOST, 0)``).
DECIDER_MEMBER = DECIDER_HOST << SLOT_BITS


def host_number(host_id: str) -> int:
    """The 16-bit number of ``host_id`` used in member ids (1..65534; 0 is a single
    host, 65535 is :data:`DECIDER_HOST`: an id whose digest gives it gets 65534). Two
    host ids with the same number cannot join one cluster: the bridge refuses the second
    one and logs both names."""
    return min(zlib.crc32(host_id.encode()) % 0xFFFF + 1, DECIDER_HOST - 1)


def member_id(host: int, slot: int) -> int:
    """The cluster-wide member id of ``slot`` on host number ``host``."""
    return host << SLOT_BITS | slot


def slot_of(member: int) -> int:
    """The scoreboard slot of ``member`` on its own host."""
    return member & SLOT_MASK


def host_of(member: int) -> int:
    """The host number of ``member``."""
    return member >> SLOT_BITS


@dataclass(frozen=True)
class Host:
    """One live host of the view."""

    host_id: str
    number: int
    workers: tuple[int, ...]  # configured worker slots


@dataclass(frozen=True)
class View:
    """The live hosts (this one included) as the bridge sees them, and peer statistics
    for ``/health`` and ``/metrics``."""

    number: int
    hosts: tuple[Host, ...]
    peers: Mapping[str, Mapping[str, Any]]  # host id -> up, address, counters

    def own_stats(self) -> Mapping[str, Any]:
        """The writing bridge's own counters (stored under the key ``""``, which no host
        id can be)."""
        return self.peers.get("", {})

    def crossing(self) -> bool:
        """Whether the writing process can carry this host's bus to the other hosts now:
        the Redis hub says no while Redis is unreachable (its ``crossing``); the mesh's
        bridge never says no (a peer down is a smaller view, not a stopped host)."""
        return bool(self.own_stats().get("crossing", True))

    def peer_stats(self) -> dict[str, Mapping[str, Any]]:
        """Each known peer's state and counters, by host id."""
        return {host_id: stats for host_id, stats in self.peers.items() if host_id}

    def workers(self) -> tuple[int, ...]:
        """Member ids of every worker of every live host, sorted."""
        return tuple(
            sorted(member_id(host.number, slot) for host in self.hosts for slot in host.workers)
        )

    def remote_workers(self, own_host: int) -> set[int]:
        """Member ids of the live workers on other hosts."""
        return {
            member_id(host.number, slot)
            for host in self.hosts
            if host.number != own_host
            for slot in host.workers
        }


def view_number(hosts: Iterable[Host]) -> int:
    """The digest of a membership: equal on every host that sees the same members."""
    canonical = sorted((host.host_id, host.number, list(host.workers)) for host in hosts)
    return zlib.crc32(json.dumps(canonical).encode())
