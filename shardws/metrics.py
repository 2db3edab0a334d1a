"""The scoreboard: per-process stats in shared memory, read by the supervisor and admin.

The supervisor creates one block before forking (``Scoreboard.create``); children inherit
the mapping, so nobody opens it by name. Layout: a numpy ``int64`` matrix, one row per
process slot (worker slots ``0..capacity-1``, then the admin in the last row), one column
per ``Column``. The capacity is ``max(workers, max_workers)`` at start, so a reload can
add workers; the supervisor marks the slots that exist with ``CONFIGURED``, and every
reader (bus membership, /health, /metrics) goes by that mark, not by a count.

Guarantees:

* Each process writes only its own row. Aligned 64-bit stores are atomic on the
  platforms we run on, so a reader sees every value either old or new, never torn; it
  may see one column updated before another.
* ``heartbeat_ns`` is ``time.monotonic_ns()``; CLOCK_MONOTONIC is system-wide on Linux,
  so the supervisor can compare it with its own clock.
* When a process dies the supervisor calls ``reset_row``, so its counts never leak into
  totals computed from live rows; when a reload retires a slot, ``retire_row``.
"""

from __future__ import annotations

import bisect
import enum
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shardws.membership import ViewTable
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
    CONFIGURED = 21  # 1 while the slot exists in the supervisor (kept across restarts)
    HISTORY_REPAIRS = 22  # history gaps (lost bus messages) repaired from the owner
    HISTORY_UNRECOVERABLE = 23  # gaps that could not be repaired (subscribers got 4505)
    LATENCY_SUM_US = 24  # sum of observed delivery latencies, microseconds
    LATENCY_BUCKET_0 = 25  # first of len(LATENCY_BUCKETS) + 1 non-cumulative buckets


#: Upper bounds (seconds) of the delivery latency histogram; one more bucket is +Inf.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
N_COLUMNS = Column.LATENCY_BUCKET_0 + len(LATENCY_BUCKETS) + 1
_LATENCY_COLUMNS = slice(Column.LATENCY_BUCKET_0, N_COLUMNS)


class ProcessState(enum.IntEnum):
    """Lifecycle of a slot, written by its process (and reset by the supervisor)."""

    DEAD = 0
    BOOTING = 1
    READY = 2
    DRAINING = 3


class Scoreboard:
    """A view of the shared stats matrix."""

    def __init__(self, capacity: int) -> None:
        """Create and zero a new block with ``capacity`` worker slots, the admin's and the
        bridge's (supervisor only, before fork), and the cluster's membership view."""
        self._shared = SharedArray((capacity + 2, N_COLUMNS), np.int64)
        self.rows = capacity + 2
        self.admin_slot = capacity
        self.bridge_slot = capacity + 1
        self.table: np.ndarray[Any, np.dtype[np.int64]] = self._shared.array
        self.cluster = ViewTable()

    @classmethod
    def create(cls, capacity: int) -> Scoreboard:
        return cls(capacity)

    def disown(self) -> None:
        """Called in a forked child: its ``close`` must not remove the block's name."""
        self._shared.disown()
        self.cluster.disown()

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
        """Slots that are READY with a heartbeat younger than ``stale_after``."""
        table = self.table
        fresh = table[:, Column.HEARTBEAT_NS] > time.monotonic_ns() - int(stale_after * 1e9)
        ready = table[:, Column.STATE] == ProcessState.READY
        return {int(i) for i in np.flatnonzero(fresh & ready)}

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
        self.cluster.close()


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
        row[_LATENCY_COLUMNS] = self.counts
        row[Column.LATENCY_SUM_US] = self.sum_us


class _ScoreboardCollector:
    """Turns the scoreboard into Prometheus metric families at scrape time."""

    def __init__(self, board: Scoreboard, stale_after: float) -> None:
        self._board = board
        self._stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        table = self._board.table
        slots = self._board.workers()
        workers = [(slot, str(slot)) for slot in slots]

        def per_worker(family: GaugeMetricFamily | CounterMetricFamily, column: Column) -> Metric:
            for slot, label in workers:
                family.add_metric([label], float(table[slot, column]))
            return family

        up = GaugeMetricFamily(
            "shardws_worker_up",
            "1 if the worker is ready and its heartbeat is fresh",
            labels=["worker"],
        )
        for slot, label in workers:
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
        for slot, label in workers:
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
        for slot, label in workers:
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
            (
                "shardws_history_repairs",
                "History gaps (lost bus messages) repaired from the channel owner",
                Column.HISTORY_REPAIRS,
            ),
            (
                "shardws_history_unrecoverable",
                "History gaps that could not be repaired (subscribers closed with 4505)",
                Column.HISTORY_UNRECOVERABLE,
            ),
        ):
            yield per_worker(CounterMetricFamily(name, doc, labels=["worker"]), column)
        fds = GaugeMetricFamily(
            "process_open_fds_by_worker", "Open file descriptors", labels=["worker"]
        )
        for slot, label in workers:
            fds.add_metric([label], float(_open_fds(int(table[slot, Column.PID]))))
        yield fds
        yield self._latency(workers)
        admin = table[self._board.admin_slot]
        for name, doc, column in (
            (
                "shardws_backend_publications",
                "Publish requests accepted from backends (HTTP API and ingress)",
                Column.PUBLISHES,
            ),
            (
                "shardws_ingress_messages",
                "Messages read from the ZeroMQ ingress",
                Column.MESSAGES_IN,
            ),
            (
                "shardws_ingress_rejected",
                "Ingress messages refused (malformed, unknown namespace)",
                Column.PROTOCOL_ERRORS,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(admin[column]))
            yield family
        yield from self._cluster()

    def _cluster(self) -> Iterator[Metric]:
        """Peers up/down and traffic per peer, from the bridge's view (cluster only)."""
        view = self._board.cluster.read()
        if view is None:
            return
        peers, own = view.peer_stats(), view.own_stats()
        hosts = GaugeMetricFamily("shardws_cluster_hosts", "Live hosts in the membership view")
        hosts.add_metric([], float(len(view.hosts)))
        yield hosts
        number = GaugeMetricFamily(
            "shardws_cluster_view", "Membership view number (equal on hosts that agree)"
        )
        number.add_metric([], float(view.number))
        yield number
        up = GaugeMetricFamily(
            "shardws_cluster_peer_up", "1 if the peer's heartbeats arrive", labels=["peer"]
        )
        received = CounterMetricFamily(
            "shardws_cluster_peer_messages_received",
            "Bus frames received from the peer's members",
            labels=["peer"],
        )
        received_bytes = CounterMetricFamily(
            "shardws_cluster_peer_bytes_received",
            "Bus bytes received from the peer",
            labels=["peer"],
        )
        for name, peer in sorted(peers.items()):
            up.add_metric([name], 1.0 if peer.get("up") else 0.0)
            received.add_metric([name], float(peer.get("messages_received", 0)))
            received_bytes.add_metric([name], float(peer.get("bytes_received", 0)))
        yield from (up, received, received_bytes)
        for name, doc, key in (
            ("shardws_cluster_messages_sent", "Bus frames sent to the peers", "messages_sent"),
            ("shardws_cluster_bytes_sent", "Bus bytes sent to the peers", "bytes_sent"),
            (
                "shardws_cluster_handshake_failures",
                "Failed bridge handshakes (a peer without the cluster key, or not a bridge)",
                "handshake_failures",
            ),
            (
                "shardws_cluster_barrier_timeouts",
                "Subscribe barriers answered without every peer (a peer going down)",
                "barrier_timeouts",
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(own.get(key, 0)))
            yield family

    def _latency(self, workers: list[tuple[int, str]]) -> Metric:
        family = HistogramMetricFamily(
            "websocket_message_latency_seconds",
            "Seconds from a publication entering the server (a client's publish, the HTTP "
            "API or the ingress) to this worker handing it to its local subscribers' "
            "sockets; one observation per publication per delivering worker (wall clock: "
            "from another host of a cluster it includes the hosts' clock offset)",
            labels=["worker"],
        )
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for slot, label in workers:
            cumulative = np.cumsum(self._board.table[slot, _LATENCY_COLUMNS])
            family.add_metric(
                [label],
                list(zip(bounds, (float(c) for c in cumulative), strict=True)),
                float(self._board.table[slot, Column.LATENCY_SUM_US]) / 1e6,
            )
        return family


def _open_fds(pid: int) -> int:
    if pid <= 0:
        return 0
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def prometheus_text(board: Scoreboard, stale_after: float) -> bytes:
    """The scoreboard in the Prometheus text exposition format: the per-worker series
    with one ``worker`` label per configured worker slot, the admin's (backend, ingress)
    and the cluster's host-wide, ``peer`` on the per-peer ones; docs/operations.md lists
    every series with its labels, checked by a test (counters get their ``_total``
    suffix from prometheus-client)."""
    registry = CollectorRegistry()
    registry.register(_ScoreboardCollector(board, stale_after))
    return generate_latest(registry)
