"""The scoreboard: per-process stats in shared memory, read by the supervisor and admin.

The supervisor creates one block before forking (``Scoreboard.create``); children inherit
the mapping, so nobody opens it by name. Layout: a numpy ``int64`` matrix, one row per
process slot (workers ``0..N-1``, then the admin), one column per ``Column``.

Guarantees:

* Each process writes only its own row. Aligned 64-bit stores are atomic on the
  platforms we run on, so a reader sees every value either old or new, never torn; it
  may see one column updated before another.
* ``heartbeat_ns`` is ``time.monotonic_ns()``; CLOCK_MONOTONIC is system-wide on Linux,
  so the supervisor can compare it with its own clock.
* When a process dies the supervisor calls ``reset_row``, so its counts never leak into
  totals computed from live rows.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import numpy as np

from shardws.shm import SharedArray


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


N_COLUMNS = len(Column)


class ProcessState(enum.IntEnum):
    """Lifecycle of a slot, written by its process (and reset by the supervisor)."""

    DEAD = 0
    BOOTING = 1
    READY = 2
    DRAINING = 3


class Scoreboard:
    """A view of the shared stats matrix."""

    def __init__(self, rows: int) -> None:
        """Create and zero a new block (supervisor only, before fork)."""
        self._shared = SharedArray((rows, N_COLUMNS), np.int64)
        self.rows = rows
        self.table: np.ndarray[Any, np.dtype[np.int64]] = self._shared.array

    @classmethod
    def create(cls, rows: int) -> Scoreboard:
        return cls(rows)

    def disown(self) -> None:
        """Called in a forked child: its ``close`` must not remove the block's name."""
        self._shared.disown()

    def row(self, slot: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The writable row of ``slot`` (a view into shared memory)."""
        return self.table[slot]

    def reset_row(self, slot: int) -> None:
        """Zero a dead process's row, keeping its restart count."""
        restarts = int(self.table[slot, Column.RESTARTS])
        self.table[slot] = 0
        self.table[slot, Column.RESTARTS] = restarts

    def heartbeat_age(self, slot: int, now_ns: int | None = None) -> float:
        """Seconds since ``slot`` last stamped its heartbeat (inf if never)."""
        stamp = int(self.table[slot, Column.HEARTBEAT_NS])
        if stamp == 0:
            return float("inf")
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return (now_ns - stamp) / 1e9

    def is_ready(self, slot: int, stale_after: float) -> bool:
        """True if ``slot`` is READY and its heartbeat is younger than ``stale_after``."""
        return (
            int(self.table[slot, Column.STATE]) == ProcessState.READY
            and self.heartbeat_age(slot) < stale_after
        )

    def close(self) -> None:
        """Drop this process's mapping; the creator also removes the block's name."""
        del self.table
        self._shared.close()
