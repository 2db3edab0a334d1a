"""The scoreboard: per-process liveness and stats in shared memory, written by each
process for itself, read by the supervisor (liveness) and the admin (``/health``,
``/metrics``).

The supervisor creates one block before forking (``Scoreboard.create``); children inherit
the mapping, so nobody opens it by name. Layout: a numpy ``int64`` matrix, one row per
process slot (worker slots ``0..capacity-1``, then the admin, the bridge and the bus
forwarder), one column
per ``Column``. The capacity is ``max(workers, max_workers)`` at start, so a reload can
add workers; the supervisor marks the slots that exist with ``CONFIGURED``, and every
reader (bus membership, /health, /metrics) goes by that mark, not by a count.

Guarantees:

* Each process writes only its own row, but for two columns the supervisor keeps for
  every row (``RESTARTS``, ``RSS_BYTES``). Aligned 64-bit stores are atomic on the
  platforms we run on, so a reader sees every value either old or new, never torn; it
  may see one column updated before another.
* ``heartbeat_ns`` is ``time.monotonic_ns()``; CLOCK_MONOTONIC is system-wide on Linux,
  so the supervisor can compare it with its own clock. ``progress_ns`` is stamped on the
  same clock by a thread of the process while its work counters move
  (``shardws.server.progress``): a process is *alive* while either stamp is fresh, so a
  loop that runs late because it is busy is not taken for a stuck one.
* When a process dies the supervisor calls ``reset_row``, so its counts never leak into
  totals computed from live rows; when a reload retires a slot, ``retire_row``.
"""

from __future__ import annotations

import bisect
import enum
import time
from typing import Any

import numpy as np

from shardws.shm.segment import SharedArray


class Column(enum.IntEnum):
    """Columns of a scoreboard row (all int64)."""

    PID = 0
    STATE = 1  # a ``ProcessState``
    HEARTBEAT_NS = 2  # monotonic_ns of the last event-loop tick
    STARTED_NS = 3  # monotonic_ns when the process was forked
    CONNECTIONS = 4  # open WebSocket connections now
    ACCEPTED = 5  # connections upgraded since start of this process
    CLOSED = 6
    MESSAGES_IN = 7  # client frames received
    MESSAGES_OUT = 8  # frames delivered to clients (one per subscriber)
    BYTES_IN = 9
    BYTES_OUT = 10
    DROPS = 11  # messages skipped for slow consumers
    BUS_LOST = 12  # bus messages detected lost (sequence gaps)
    PROTOCOL_ERRORS = 13  # bad JSON, unknown ops, invalid UTF-8, oversize frames
    PUBLISHES = 14  # publications accepted from clients on this worker
    SYNC_TIMEOUTS = 15  # subscribe barriers that timed out waiting for a peer
    RESTARTS = 16  # times this slot's process was restarted (written by the supervisor)
    SLOW_CONSUMERS = 17  # connections closed with 4501 (slow consumer)
    AUTH_FAILURES = 18  # bad tokens: HTTP 401, close 4001, refused channel tokens
    RATE_LIMITED = 19  # commands refused by the per-connection rate limit
    REFUSED = 20  # connections refused by a limit (origin, full worker, per-IP)
    CONFIGURED = 21  # 1 while the slot exists in the supervisor (kept across restarts)
    HISTORY_REPAIRS = 22  # history gaps (lost bus messages) repaired from the owner
    HISTORY_UNRECOVERABLE = 23  # gaps that could not be repaired (subscribers got 4505)
    LATENCY_SUM_US = 24  # sum of observed delivery latencies, microseconds
    NOT_LIVE = 25  # subscribes refused (error 108), user topics closed (4506): barrier failed
    BUS_READS = 26  # bus messages this process's Python read (any kind)
    PROGRESS_NS = 27  # monotonic_ns when its work counters were last seen moving (liveness)
    LOOP_LAG_US = 28  # how late its event loop's periodic tick ran, microseconds
    OVERLOADED = 29  # 1 while it refuses new connections because its loop runs late
    OVERLOAD_REFUSED = 30  # upgrades refused with 503 for that (also counted in REFUSED)
    LOOK_NS = 31  # monotonic_ns when its progress thread last ran (moved or not)
    RSS_BYTES = 32  # resident memory, from /proc/PID/statm (written by the supervisor, 1/s)
    # The Redis hub's calls of this process (``redisconn.RedisCalls.totals``; 0 on the mesh).
    REDIS_UP = 33  # 1 while its script connection to Redis is up
    REDIS_CALLS = 34  # calls made (scripts and commands)
    REDIS_BATCHES = 35  # writes to Redis (each carries one event-loop iteration's calls)
    REDIS_FAILURES = 36  # calls not answered (Redis down, connection lost, timeout)
    REDIS_RECONNECTS = 37  # connections after the first
    HISTORY_SCRIPTS = 38  # history scripts called (publish, position, page)
    HISTORY_SCRIPT_FAILURES = 39  # ... not answered or refused
    PRESENCE_SCRIPTS = 40  # presence scripts called (writes, reads, counts)
    PRESENCE_SCRIPT_FAILURES = 41
    PUSHER_SCRIPTS = 42  # Pusher scripts called (rosters, occupancy, refreshes, sweeps)
    PUSHER_SCRIPT_FAILURES = 43
    PRESENCE_WRITES = 44  # presence writes and refreshes sent (``RedisPresence.scripts``)
    PRESENCE_WRITES_FAILED = 45  # ... that failed (written again at the next refresh)
    LATENCY_BUCKET_0 = 46  # first of len(LATENCY_BUCKETS) + 1 non-cumulative buckets


#: Seconds between a worker's heartbeat stamps when its loop is on time.
HEARTBEAT_INTERVAL = 0.5

#: Upper bounds (seconds) of the delivery latency histogram; one more bucket is +Inf.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: The Redis hub's counters of a process by their name in ``/health`` (and in
#: ``RedisCalls.totals``): the columns its row keeps them in.
REDIS_COLUMNS = {
    "up": Column.REDIS_UP,
    "calls": Column.REDIS_CALLS,
    "batches": Column.REDIS_BATCHES,
    "failures": Column.REDIS_FAILURES,
    "reconnects": Column.REDIS_RECONNECTS,
    "history_scripts": Column.HISTORY_SCRIPTS,
    "history_failed": Column.HISTORY_SCRIPT_FAILURES,
    "presence_scripts": Column.PRESENCE_SCRIPTS,
    "presence_failed": Column.PRESENCE_SCRIPT_FAILURES,
    "pusher_scripts": Column.PUSHER_SCRIPTS,
    "pusher_failed": Column.PUSHER_SCRIPT_FAILURES,
    "presence_writes": Column.PRESENCE_WRITES,
    "presence_writes_failed": Column.PRESENCE_WRITES_FAILED,
}


def store_redis(row: np.ndarray[Any, np.dtype[np.int64]], counters: dict[str, int]) -> None:
    """Write a process's Redis ``counters`` (by their :data:`REDIS_COLUMNS` name) into
    its own ``row``."""
    for name, value in counters.items():
        row[REDIS_COLUMNS[name]] = value


N_COLUMNS = Column.LATENCY_BUCKET_0 + len(LATENCY_BUCKETS) + 1
LATENCY_COLUMNS = slice(Column.LATENCY_BUCKET_0, N_COLUMNS)


class ProcessState(enum.IntEnum):
    """Lifecycle of a slot, written by its process (and reset by the supervisor)."""

    DEAD = 0
    BOOTING = 1
    READY = 2
    DRAINING = 3


class Scoreboard:
    """A view of the shared stats matrix."""

    def __init__(self, capacity: int) -> None:
        """Create and zero a new block with ``capacity`` worker slots, the admin's, the
        bridge's and the bus forwarder's (supervisor only, before fork)."""
        self._shared = SharedArray((capacity + 3, N_COLUMNS), np.int64)
        self.rows = capacity + 3
        self.admin_slot = capacity
        self.bridge_slot = capacity + 1
        self.forwarder_slot = capacity + 2  # not a bus member: never CONFIGURED
        self.table: np.ndarray[Any, np.dtype[np.int64]] = self._shared.array

    @classmethod
    def create(cls, capacity: int) -> Scoreboard:
        return cls(capacity)

    def row(self, slot: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The writable row of ``slot`` (a view into shared memory)."""
        return self.table[slot]

    def reset_row(self, slot: int) -> None:
        """Zero a dead process's row, keeping its restart count and ``CONFIGURED``."""
        kept = self.table[slot, [Column.RESTARTS, Column.CONFIGURED]].copy()
        self.table[slot] = 0
        self.table[slot, [Column.RESTARTS, Column.CONFIGURED]] = kept

    def retire_row(self, slot: int) -> None:
        """Forget a slot a reload removed (its row reads as never used)."""
        self.table[slot] = 0

    def members(self) -> list[int]:
        """Slots that exist now (``CONFIGURED``): the host's bus members."""
        return [int(i) for i in np.flatnonzero(self.table[:, Column.CONFIGURED])]

    def workers(self) -> list[int]:
        """Worker slots that exist now, in slot order (the admin and bridge excluded)."""
        return [slot for slot in self.members() if slot < self.admin_slot]

    def ready_slots(self, stale_after: float) -> set[int]:
        """Slots that are READY and alive (heartbeat or progress younger than
        ``stale_after``)."""
        table = self.table
        since = time.monotonic_ns() - int(stale_after * 1e9)
        fresh = (table[:, Column.HEARTBEAT_NS] > since) | (table[:, Column.PROGRESS_NS] > since)
        ready = table[:, Column.STATE] == ProcessState.READY
        return {int(i) for i in np.flatnonzero(fresh & ready)}

    def heartbeat_age(self, slot: int, now_ns: int | None = None) -> float:
        """Seconds since ``slot``'s event loop last stamped its heartbeat (inf if never):
        how late its loop runs, busy or stuck."""
        return self._age(int(self.table[slot, Column.HEARTBEAT_NS]), now_ns)

    def progress_age(self, slot: int, now_ns: int | None = None) -> float:
        """Seconds since ``slot``'s work counters were last seen moving (inf if never)."""
        return self._age(int(self.table[slot, Column.PROGRESS_NS]), now_ns)

    def look_age(self, slot: int, now_ns: int | None = None) -> float:
        """Seconds since ``slot``'s progress thread last ran (inf if never, or if the
        process has none)."""
        return self._age(int(self.table[slot, Column.LOOK_NS]), now_ns)

    def liveness_age(self, slot: int, now_ns: int | None = None) -> float:
        """Seconds since ``slot`` last showed it is alive (inf if never): its heartbeat,
        or its work counters moving while its loop runs late. Only a process that is
        stuck (stopped, or in a loop or call that does no work) lets this grow."""
        row = self.table[slot]
        return self._age(max(int(row[Column.HEARTBEAT_NS]), int(row[Column.PROGRESS_NS])), now_ns)

    @staticmethod
    def _age(stamp: int, now_ns: int | None) -> float:
        if stamp == 0:
            return float("inf")
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return (now_ns - stamp) / 1e9

    def is_ready(self, slot: int, stale_after: float, draining: bool = False) -> bool:
        """True if ``slot`` is READY (or, with ``draining``, DRAINING) and alive
        (``liveness_age`` below ``stale_after``)."""
        state = int(self.table[slot, Column.STATE])
        return (
            state == ProcessState.READY or (draining and state == ProcessState.DRAINING)
        ) and self.liveness_age(slot) < stale_after

    def overloaded(self, slot: int, lag_limit: float) -> bool:
        """True while worker ``slot`` refuses new connections because its loop runs more
        than ``lag_limit`` seconds late (``[limits] overload_loop_lag``; 0: never): as
        its last tick said, or as its heartbeat shows while one long iteration of its
        loop keeps any tick from saying it."""
        if lag_limit <= 0:
            return False
        return (
            bool(self.table[slot, Column.OVERLOADED])
            or self.heartbeat_age(slot) > lag_limit + HEARTBEAT_INTERVAL
        )

    def close(self) -> None:
        """Drop this process's mapping."""
        del self.table
        self._shared.close()


class LatencyHistogram:
    """A process-local histogram of delivery latencies over ``LATENCY_BUCKETS``,
    copied into the process's scoreboard row by ``store`` (no shared writes per
    observation)."""

    __slots__ = ("counts", "sum_us")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum_us = 0

    def observe(self, seconds: float, n: int = 1) -> None:
        """Record ``n`` deliveries that each took ``seconds``."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += n
        self.sum_us += int(seconds * 1e6) * n

    def store(self, row: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        row[LATENCY_COLUMNS] = self.counts
        row[Column.LATENCY_SUM_US] = self.sum_us
