"""The Prometheus exposition of a host: the scoreboard and the cluster view, read at
scrape time (``/metrics`` on the admin port). It only reads the shared tables; it never
creates or writes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shardws.shm.scoreboard import LATENCY_BUCKETS, LATENCY_COLUMNS, Column, Scoreboard
from shardws.shm.view import ViewTable


class _ScoreboardCollector:
    """Turns the scoreboard into Prometheus metric families at scrape time."""

    def __init__(
        self, board: Scoreboard, view: ViewTable | None, stale_after: float, redis: bool
    ) -> None:
        self._board = board
        self._view = view
        self._stale_after = stale_after
        self._redis = redis

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
            (
                "shardws_bus_reads",
                "Bus messages this worker's Python read (publications, requests, barrier echoes)",
                Column.BUS_READS,
            ),
            (
                "shardws_subscribe_not_live",
                "Subscribes answered error 108, and user connections closed with 4506, because"
                " their barrier did not complete",
                Column.NOT_LIVE,
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
            (
                "shardws_overload_refused_connections",
                "Upgrades refused with 503 because the worker's event loop ran late"
                " (also in shardws_refused_connections)",
                Column.OVERLOAD_REFUSED,
            ),
        ):
            yield per_worker(CounterMetricFamily(name, doc, labels=["worker"]), column)
        yield per_worker(
            GaugeMetricFamily(
                "shardws_overloaded",
                "1 while the worker refuses new connections because its event loop runs late",
                labels=["worker"],
            ),
            Column.OVERLOADED,
        )
        lag = GaugeMetricFamily(
            "shardws_event_loop_lag_seconds",
            "How late the worker's periodic tick last ran (its event loop's lag)",
            labels=["worker"],
        )
        for slot, label in workers:
            lag.add_metric([label], float(table[slot, Column.LOOP_LAG_US]) / 1e6)
        yield lag
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
        yield from self._forwarder()
        yield from self._cluster()
        if self._redis:
            yield from self._redis_calls(workers)

    def _forwarder(self) -> Iterator[Metric]:
        """The host bus forwarder: up, and restarts (a restart loses what was inside)."""
        slot = self._board.forwarder_slot
        up = GaugeMetricFamily(
            "shardws_bus_forwarder_up", "1 while the host bus forwarder runs (heartbeat fresh)"
        )
        up.add_metric([], 1.0 if self._board.is_ready(slot, self._stale_after) else 0.0)
        restarts = CounterMetricFamily(
            "shardws_bus_forwarder_restarts", "Times the host bus forwarder was restarted"
        )
        restarts.add_metric([], float(self._board.table[slot, Column.RESTARTS]))
        yield from (up, restarts)

    def _cluster(self) -> Iterator[Metric]:
        """Peers up/down and traffic per peer, from the bridge's view (cluster only)."""
        view = None if self._view is None else self._view.read()
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
                "Subscribe barriers answered without every peer (a peer going down), or not"
                " answered (the Redis hub: Redis unreachable)",
                "barrier_timeouts",
            ),
            (
                "shardws_cluster_messages_lost",
                "Publications that could not be sent to the other hosts (the Redis hub: Redis"
                " unreachable, or [cluster] hwm frames waiting); 0 on the mesh",
                "messages_lost",
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(own.get(key, 0)))
            yield family

    def _redis_calls(self, workers: list[tuple[int, str]]) -> Iterator[Metric]:
        """The Redis hub's calls of each worker and of the admin (``worker="admin"``),
        from their rows (``redisconn.RedisCalls.totals``)."""
        table = self._board.table
        processes = [*workers, (self._board.admin_slot, "admin")]
        up = GaugeMetricFamily(
            "shardws_redis_up",
            "1 while the process's script connection to Redis is up",
            labels=["worker"],
        )
        for slot, label in processes:
            up.add_metric([label], float(table[slot, Column.REDIS_UP]))
        yield up
        for name, doc, column in _REDIS_SERIES:
            family = CounterMetricFamily(name, doc, labels=["worker"])
            for slot, label in processes:
                family.add_metric([label], float(table[slot, column]))
            yield family
        for name, doc, columns in _REDIS_PART_SERIES:
            family = CounterMetricFamily(name, doc, labels=["worker", "part"])
            for slot, label in processes:
                for part, column in columns.items():
                    family.add_metric([label, part], float(table[slot, column]))
            yield family
        for name, doc, column in _PRESENCE_WRITE_SERIES:  # workers hold presence
            family = CounterMetricFamily(name, doc, labels=["worker"])
            for slot, label in workers:
                family.add_metric([label], float(table[slot, column]))
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
            cumulative = np.cumsum(self._board.table[slot, LATENCY_COLUMNS])
            family.add_metric(
                [label],
                list(zip(bounds, (float(c) for c in cumulative), strict=True)),
                float(self._board.table[slot, Column.LATENCY_SUM_US]) / 1e6,
            )
        return family


#: The Redis hub's per-process counters (``worker`` label: a slot, or ``admin``).
_REDIS_SERIES = (
    (
        "shardws_redis_calls",
        "Calls to Redis (scripts and commands) made by the process",
        Column.REDIS_CALLS,
    ),
    (
        "shardws_redis_batches",
        "Writes to Redis, each carrying one event-loop iteration's calls",
        Column.REDIS_BATCHES,
    ),
    (
        "shardws_redis_failures",
        "Calls Redis did not answer (down, connection lost, timeout)",
        Column.REDIS_FAILURES,
    ),
    (
        "shardws_redis_reconnects",
        "Connections to Redis after the process's first",
        Column.REDIS_RECONNECTS,
    ),
)
_REDIS_PART_SERIES = (
    (
        "shardws_redis_scripts",
        "Scripts called, by part (history, presence, pusher)",
        {
            "history": Column.HISTORY_SCRIPTS,
            "presence": Column.PRESENCE_SCRIPTS,
            "pusher": Column.PUSHER_SCRIPTS,
        },
    ),
    (
        "shardws_redis_script_failures",
        "Scripts not answered or refused, by part (history, presence, pusher)",
        {
            "history": Column.HISTORY_SCRIPT_FAILURES,
            "presence": Column.PRESENCE_SCRIPT_FAILURES,
            "pusher": Column.PUSHER_SCRIPT_FAILURES,
        },
    ),
)
_PRESENCE_WRITE_SERIES = (
    (
        "shardws_presence_writes",
        "Presence writes and refreshes sent to Redis by the worker",
        Column.PRESENCE_WRITES,
    ),
    (
        "shardws_presence_writes_failed",
        "Presence writes that failed (written again at the next refresh)",
        Column.PRESENCE_WRITES_FAILED,
    ),
)


def _open_fds(pid: int) -> int:
    if pid <= 0:
        return 0
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def prometheus_text(
    board: Scoreboard, stale_after: float, view: ViewTable | None = None, redis: bool = False
) -> bytes:
    """The scoreboard in the Prometheus text exposition format: the per-worker series
    with one ``worker`` label per configured worker slot, the admin's (backend, ingress)
    and the cluster's (from ``view``) host-wide, ``peer`` on the per-peer ones; with
    ``redis`` (the Redis hub) each process's Redis calls (``worker`` a slot or
    ``admin``, ``part`` on the scripts' series);
    docs/operations.md lists every series with its labels, checked by a test (counters
    get their ``_total`` suffix from prometheus-client)."""
    registry = CollectorRegistry()
    registry.register(_ScoreboardCollector(board, view, stale_after, redis))
    return generate_latest(registry)


#: The Pusher series (docs/pusher.md, "Metrics"), each with its help text; the per-worker
#: ones name a worker's ``pusher_stats`` counter.
_PUSHER_WORKER_SERIES = (
    ("shardws_pusher_connections", "connections", "open Pusher connections of the app"),
    ("shardws_pusher_connections_accepted", "accepted", "Pusher connections accepted"),
    ("shardws_pusher_messages", "messages_in", "messages received from Pusher clients"),
    ("shardws_pusher_client_events", "client_events", "client events relayed"),
)


#: The webhook series (``server.webhooks.WebhookSender.counters``), host-wide per app:
#: (name, counter, help text); the drops are one series with a ``reason`` label.
_WEBHOOK_SERIES = (
    ("shardws_pusher_webhook_events_sent", "sent", "webhook events the receiver took (2xx)"),
    ("shardws_pusher_webhook_failed_requests", "failed_requests", "webhook requests that failed"),
)
_WEBHOOK_DROPS = ("expired", "queue_full")


class _PusherCollector:
    def __init__(
        self,
        per_worker: dict[int, dict[str, dict[str, int]]],
        api_events: dict[str, int],
        webhooks: dict[str, dict[str, int]],
        apps: list[str],
        complete: bool,
    ) -> None:
        self._per_worker = per_worker
        self._api_events = api_events
        self._webhooks = webhooks
        self._apps = apps
        self._complete = complete

    def collect(self) -> Iterator[Metric]:
        for name, counter, text in _PUSHER_WORKER_SERIES:
            family: GaugeMetricFamily | CounterMetricFamily
            if counter == "connections":
                family = GaugeMetricFamily(name, text, labels=["worker", "app"])
            else:
                family = CounterMetricFamily(name, text, labels=["worker", "app"])
            for slot, apps in sorted(self._per_worker.items()):
                for app in self._apps:
                    value = apps.get(app, {}).get(counter, 0)
                    family.add_metric([str(slot), app], float(value))
            yield family
        events = CounterMetricFamily(
            "shardws_pusher_api_events", "events published by the HTTP API", labels=["app"]
        )
        for app in self._apps:
            events.add_metric([app], float(self._api_events.get(app, 0)))
        yield events
        yield from self._webhook_families()
        yield GaugeMetricFamily(
            "shardws_pusher_metrics_complete",
            "1 if every ready worker gave its Pusher counters to this scrape",
            value=1.0 if self._complete else 0.0,
        )

    def _webhook_families(self) -> Iterator[Metric]:
        counts = self._webhooks
        for name, counter, text in _WEBHOOK_SERIES:
            family = CounterMetricFamily(name, text, labels=["app"])
            for app in self._apps:
                family.add_metric([app], float(counts.get(app, {}).get(counter, 0)))
            yield family
        dropped = CounterMetricFamily(
            "shardws_pusher_webhook_events_dropped",
            "webhook events dropped unsent: expired (older than webhook_max_age), queue_full",
            labels=["app", "reason"],
        )
        queued = GaugeMetricFamily(
            "shardws_pusher_webhook_events_queued", "webhook events waiting", labels=["app"]
        )
        for app in self._apps:
            for reason in _WEBHOOK_DROPS:
                dropped.add_metric([app, reason], float(counts.get(app, {}).get(reason, 0)))
            queued.add_metric([app], float(counts.get(app, {}).get("queued", 0)))
        yield dropped
        yield queued


def pusher_text(
    per_worker: dict[int, dict[str, dict[str, int]]],
    api_events: dict[str, int],
    webhooks: dict[str, dict[str, int]],
    apps: list[str],
    complete: bool,
) -> bytes:
    """The Pusher series per app (``app`` label, every configured app) in the text
    exposition format: each worker's ``pusher_stats`` answer (``per_worker``: slot ->
    {app id: {counter: n}}), the admin's HTTP API events per app, its webhook counters
    per app, and whether every ready worker answered."""
    registry = CollectorRegistry()
    registry.register(_PusherCollector(per_worker, api_events, webhooks, apps, complete))
    return generate_latest(registry)


class _TapCollector:
    def __init__(self, open_taps: int, sent: int, dropped: int) -> None:
        self._counts = (open_taps, sent, dropped)

    def collect(self) -> Iterator[Metric]:
        open_taps, sent, dropped = self._counts
        yield GaugeMetricFamily(
            "shardws_tap_open", "event taps open on this host's admin", value=open_taps
        )
        yield CounterMetricFamily(
            "shardws_tap_events_sent", "tap events written to the taps' streams", value=sent
        )
        yield CounterMetricFamily(
            "shardws_tap_events_dropped",
            "tap events dropped by the rate cap (sampling) or a full ring",
            value=dropped,
        )


def tap_text(open_taps: int, sent: int, dropped: int) -> bytes:
    """The event tap's series (``server.tapstream``), host-wide: taps open, events sent
    to their streams and dropped by their caps."""
    registry = CollectorRegistry()
    registry.register(_TapCollector(open_taps, sent, dropped))
    return generate_latest(registry)
