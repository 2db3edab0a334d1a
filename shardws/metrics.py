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
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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


class _ScoreboardCollector:
    """Turns the scoreboard into Prometheus metric families at scrape time."""

    def __init__(self, board: Scoreboard, workers: int, stale_after: float) -> None:
        self._board = board
        self._workers = workers
        self._stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        table = self._board.table
        workers = [str(slot) for slot in range(self._workers)]

        def per_worker(family: GaugeMetricFamily | CounterMetricFamily, column: Column) -> Metric:
            for slot, label in enumerate(workers):
                family.add_metric([label], float(table[slot, column]))
            return family

        up = GaugeMetricFamily(
            "shardws_worker_up",
            "1 if the worker is ready and its heartbeat is fresh",
            labels=["worker"],
        )
        for slot, label in enumerate(workers):
            up.add_metric([label], 1.0 if self._board.is_ready(slot, self._stale_after) else 0.0)
        yield up
        yield per_worker(
            GaugeMetricFamily(
                "websocket_active_connections", "Open WebSocket connections", labels=["worker"]
            ),
            Column.CONNECTIONS,
        )
        yield per_worker(
            CounterMetricFamily(
                "websocket_connections_accepted", "Connections upgraded", labels=["worker"]
            ),
            Column.ACCEPTED,
        )
        messages = CounterMetricFamily(
            "websocket_messages",
            "WebSocket messages: in = client frames received, out = "
            "frames delivered (one per subscriber)",
            labels=["worker", "direction"],
        )
        data = CounterMetricFamily(
            "websocket_bytes", "WebSocket payload bytes", labels=["worker", "direction"]
        )
        for slot, label in enumerate(workers):
            messages.add_metric([label, "in"], float(table[slot, Column.MESSAGES_IN]))
            messages.add_metric([label, "out"], float(table[slot, Column.MESSAGES_OUT]))
            data.add_metric([label, "in"], float(table[slot, Column.BYTES_IN]))
            data.add_metric([label, "out"], float(table[slot, Column.BYTES_OUT]))
        yield messages
        yield data
        drops = CounterMetricFamily(
            "websocket_dropped_messages",
            "Messages not delivered, by reason",
            labels=["worker", "reason"],
        )
        for slot, label in enumerate(workers):
            drops.add_metric([label, "slow_consumer"], float(table[slot, Column.DROPS]))
            drops.add_metric([label, "bus_lost"], float(table[slot, Column.BUS_LOST]))
        yield drops
        for name, doc, column in (
            ("shardws_publications", "Publications accepted from clients", Column.PUBLISHES),
            (
                "shardws_slow_consumer_disconnects",
                "Connections closed with 4501",
                Column.SLOW_CONSUMERS,
            ),
            (
                "shardws_rate_limited_commands",
                "Commands refused by the rate limit",
                Column.RATE_LIMITED,
            ),
            (
                "shardws_auth_failures",
                "Bad tokens (401, 4001, channel tokens)",
                Column.AUTH_FAILURES,
            ),
            ("shardws_refused_connections", "Connections refused by a limit", Column.REFUSED),
            (
                "shardws_protocol_errors",
                "Bad JSON, unknown ops, invalid UTF-8, oversize",
                Column.PROTOCOL_ERRORS,
            ),
            (
                "shardws_bus_sync_timeouts",
                "Subscribe barriers that timed out",
                Column.SYNC_TIMEOUTS,
            ),
            ("shardws_worker_restarts", "Times the worker was restarted", Column.RESTARTS),
        ):
            yield per_worker(CounterMetricFamily(name, doc, labels=["worker"]), column)
        fds = GaugeMetricFamily(
            "process_open_fds_by_worker", "Open file descriptors", labels=["worker"]
        )
        for slot, label in enumerate(workers):
            fds.add_metric([label], float(_open_fds(int(table[slot, Column.PID]))))
        yield fds


def _open_fds(pid: int) -> int:
    if pid <= 0:
        return 0
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def prometheus_text(board: Scoreboard, workers: int, stale_after: float) -> bytes:
    """The scoreboard in the Prometheus text exposition format (counters get their
    ``_total`` suffix from prometheus-client)."""
    registry = CollectorRegistry()
    registry.register(_ScoreboardCollector(board, workers, stale_after))
    return generate_latest(registry)
