"""The admin process (``shardws: admin``): the admin HTTP port and the backend ingress.

Serves ``GET /health``, ``/ready``, ``/metrics`` and ``GET /api/stats`` from the
scoreboard in shared memory, so a stuck worker cannot stall them. The rest of the API
goes through the host bus, of which this process is a member: publications and
disconnects are published on channel and user topics, ``GET /api/channels`` asks every
ready worker through its inbox and waits (bounded) for the answers. Runs aiohttp on its
own event loop, on the listening socket the supervisor created (kept open across
restarts of this process), and the ZeroMQ ingress (``shardws.bus.ingress``) when
``[ingress] bind`` is set.

``/health`` answers 200 with ``"status": "ok"`` when every worker is ready with a fresh
heartbeat, and 503 with ``"status": "degraded"`` otherwise (a load balancer then stops
sending new clients here).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import time
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from setproctitle import setproctitle

from shardws.bus.forwarder import endpoints
from shardws.bus.host import Bus
from shardws.bus.ingress import AckedIngress, Ingress
from shardws.config import Config
from shardws.log import setup_logging
from shardws.pure import control, protocol
from shardws.pure import tap as tap_rules
from shardws.pure.auth import constant_time_equal
from shardws.pure.backend import (
    RETRY_AFTER,
    BadRequest,
    Publication,
    max_request_bytes,
    parse_acked_ingress,
    parse_channel_query,
    parse_channels_query,
    parse_disconnect,
    parse_history_query,
    parse_ingress,
    parse_publish,
    publish_result,
    request_idem,
)
from shardws.pure.cluster import slot_of
from shardws.pure.history import Position
from shardws.pure.pusher import webhooks
from shardws.pure.pusher.httpapi import max_body_bytes
from shardws.server.console import Console
from shardws.server.engine import BackendEngine
from shardws.server.engines import backend_engine
from shardws.server.metrics import prometheus_text, pusher_text, tap_text
from shardws.server.pusherapi import PusherApi
from shardws.server.tapstream import TapStreams
from shardws.server.webhooks import WebhookSender
from shardws.shm.scoreboard import REDIS_COLUMNS, Column, ProcessState, Scoreboard, store_redis
from shardws.shm.tables import SharedTables
from shardws.shm.view import Members, ViewTable

log = logging.getLogger("shardws.admin")

HEARTBEAT_INTERVAL = 0.5
#: The 403 body of every ``/api/`` endpoint while ``[admin] api_key`` is not set.
API_DISABLED = (
    "the HTTP API is disabled: set [admin] api_key (the two lines [admin] and"
    ' api_key = "<a secret of 16 or more characters>" in the config file) and start the'
    " server with shardws serve -c FILE"
)
#: Seconds ``GET /api/channels`` waits for the workers' answers.
CHANNELS_TIMEOUT = 1.0
#: Seconds ``/metrics`` waits for the workers' Pusher counters (apps configured only).
PUSHER_METRICS_TIMEOUT = 0.5


def health(config: Config, tables: SharedTables) -> tuple[int, dict[str, Any]]:
    """The /health document and its HTTP status, computed from the scoreboard."""
    board = tables.board
    stale = config.server.heartbeat_timeout
    now_ns = time.monotonic_ns()
    hub = config.cluster.engine == "redis"
    workers: list[dict[str, Any]] = []
    for slot in board.workers():
        row = board.row(slot)
        workers.append(
            {
                "worker": slot,
                "pid": int(row[Column.PID]),
                "state": ProcessState(int(row[Column.STATE])).name.lower(),
                "alive": board.is_ready(slot, stale),
                "heartbeat_age": round(min(board.heartbeat_age(slot, now_ns), 1e9), 3),
                "loop_lag": round(int(row[Column.LOOP_LAG_US]) / 1e6, 3),
                "overloaded": board.overloaded(slot, config.limits.overload_loop_lag),
                "connections": int(row[Column.CONNECTIONS]),
                "restarts": int(row[Column.RESTARTS]),
                "drops": int(row[Column.DROPS]),
                "slow_consumers": int(row[Column.SLOW_CONSUMERS]),
                "bus_lost": int(row[Column.BUS_LOST]),
            }
        )
        if hub:
            workers[-1]["redis"] = redis_counters(row)
    alive = sum(1 for w in workers if w["alive"])
    overloaded = sum(1 for w in workers if w["alive"] and w["overloaded"])
    forwarder = board.forwarder_slot
    forwarder_alive = board.is_ready(forwarder, stale)
    # Without the bus forwarder no subscribe can be confirmed live (error 108).
    healthy = alive == len(workers) and forwarder_alive
    body = {
        "status": "ok" if healthy else "degraded",
        "workers_alive": alive,
        "workers_overloaded": overloaded,
        "workers": len(workers),
        "connections": sum(w["connections"] for w in workers),
        "per_worker": workers,
        "bus_forwarder": {
            "alive": forwarder_alive,
            "pid": int(board.table[forwarder, Column.PID]),
            "restarts": int(board.table[forwarder, Column.RESTARTS]),
        },
    }
    if hub:  # the admin's own calls (history stores, Pusher rosters and cache)
        admin = board.row(board.admin_slot)
        body["admin"] = {"pid": int(admin[Column.PID]), "redis": redis_counters(admin)}
    if config.cluster.enabled:
        body["cluster"] = cluster_health(board, tables.view, stale)
    return (200 if healthy else 503), body


def redis_counters(row: Any) -> dict[str, Any]:
    """A process's Redis counters from its scoreboard ``row`` (``up`` as a boolean)."""
    counters: dict[str, Any] = {name: int(row[column]) for name, column in REDIS_COLUMNS.items()}
    counters["up"] = bool(counters["up"])
    return counters


def cluster_health(board: Scoreboard, view_table: ViewTable, stale_after: float) -> dict[str, Any]:
    """The ``cluster`` part of /health: the bridge, the membership view and the peers.
    Peers being down does not make the host unhealthy (it still serves its clients)."""
    view = view_table.read()
    body: dict[str, Any] = {
        "bridge_alive": board.is_ready(board.bridge_slot, stale_after),
        "bridge_pid": int(board.table[board.bridge_slot, Column.PID]),
    }
    if view is None:
        body["view"] = None
        return body
    peers = view.peer_stats()
    body.update(
        view=f"{view.number:08x}",
        hosts={host.host_id: list(host.workers) for host in view.hosts},
        peers=peers,
        peers_up=sum(1 for peer in peers.values() if peer.get("up")),
        **view.own_stats(),  # host_id, addresses, messages and bytes sent, failures
    )
    return body


#: Scoreboard columns reported by ``GET /api/stats``, by their name there.
STATS_COLUMNS = {
    "connections": Column.CONNECTIONS,
    "accepted": Column.ACCEPTED,
    "closed": Column.CLOSED,
    "messages_in": Column.MESSAGES_IN,
    "messages_out": Column.MESSAGES_OUT,
    "bytes_in": Column.BYTES_IN,
    "bytes_out": Column.BYTES_OUT,
    "publications": Column.PUBLISHES,
    "drops": Column.DROPS,
    "slow_consumers": Column.SLOW_CONSUMERS,
    "bus_lost": Column.BUS_LOST,
    "rate_limited": Column.RATE_LIMITED,
    "auth_failures": Column.AUTH_FAILURES,
    "refused": Column.REFUSED,
    "protocol_errors": Column.PROTOCOL_ERRORS,
}


def worker_stats(config: Config, board: Scoreboard) -> dict[str, Any]:
    """Per-worker counters from the scoreboard and their totals (``GET /api/stats``).
    Counters count since the worker process started (a restarted worker starts at 0)."""
    per_worker: list[dict[str, Any]] = []
    for slot in board.workers():
        row = board.row(slot)
        entry: dict[str, Any] = {
            "worker": slot,
            "state": ProcessState(int(row[Column.STATE])).name.lower(),
        }
        entry.update((name, int(row[column])) for name, column in STATS_COLUMNS.items())
        per_worker.append(entry)
    total = {name: sum(w[name] for w in per_worker) for name in STATS_COLUMNS}
    return {"total": total, "per_worker": per_worker}


class Backend:
    """What backends can do to this host, shared by the HTTP API and the ingress:
    publish, disconnect a user's connections, ask the workers for their channels.
    Counts what it did. Set ``bus`` before use."""

    def __init__(self, config: Config, tables: SharedTables) -> None:
        board = tables.board
        self.bus: Bus | None = None
        self.ingress: Ingress | None = None
        self.acked_ingress: AckedIngress | None = None
        self.publications = 0  # publish requests accepted (HTTP and ingress)
        self.disconnects = 0
        self._config = config
        self._board = board
        self.members = Members(board, tables.view, config, board.admin_slot)
        # The cluster (docs/architecture.md, "The engine"): publications and the
        # channels' deciders, every worker's answers.
        self.engine: BackendEngine = backend_engine(config, self.members, lambda: self.bus)
        # This host's workers tell their webhook events to this process (docs/pusher.md).
        self.webhooks = WebhookSender(config.pusher)
        # The event tap's streams (``GET /api/tap``).
        apps = frozenset(app.id for app in config.pusher.apps)
        self.taps = TapStreams(self.engine, self.members.me, apps)

    def ready_peers(self) -> set[int]:
        """This host's bus members other than the admin that are READY with a fresh
        heartbeat (the workers, and the bridge in a cluster)."""
        return self.members.ready_local()

    def publish(self, publication: Publication) -> None:
        """Queue ``publication`` on the bus: it leaves at the end of this loop iteration
        and reaches every subscribed worker at most once (bus guarantees). The
        fire-and-forget form (the ingress's PULL): history channels' owners are told
        without waiting for their answer."""
        assert self.bus is not None
        sequenced = [c for c in publication.channels if self._has_history(c)]
        self._send(publication, sequenced, "ingress")
        # Channels with history get their offsets from their decider, which then
        # publishes them (nobody waits for the offset), held while it is being replaced.
        for channel in sequenced:
            self.engine.store_later(channel, publication.data, publication.idem)
        self.publications += 1

    async def publish_stored(
        self, publication: Publication, origin: str = "http"
    ) -> tuple[dict[str, Position], list[str]]:
        """Publish ``publication`` once every history channel among its targets has been
        stored by its owner (``server.stored``). Returns (the positions of the stored
        ones, the history channels not confirmed in time). When a channel is not
        confirmed, nothing is published on the plain channels and the user topic, so a
        retry with the same ``idem`` publishes everything exactly once in the history
        channels and once elsewhere."""
        assert self.bus is not None
        sequenced = [c for c in publication.channels if self._has_history(c)]
        positions: dict[str, Position] = {}
        if sequenced:
            idem = request_idem(publication.idem)
            positions, missing = await self.engine.store(sequenced, publication.data, idem)
            if missing:
                return positions, missing
        self._send(publication, sequenced, origin)
        self.publications += 1
        return positions, []

    def _send(self, publication: Publication, sequenced: list[str], origin: str) -> None:
        """Send ``publication`` to its user, or to its channels but ``sequenced`` (one
        record for all of them); the taps see it entering through ``origin``."""
        if self.taps.open and publication.user is None:
            for channel in publication.channels:
                self.taps.local(channel, publication.data, origin)
        if publication.user is not None:
            self.engine.send_to_user(publication.user, publication.user_message())
            return
        record = publication.record()
        for channel in publication.channels:
            if channel not in sequenced:
                self.engine.publish(channel, record)

    async def answer_frames(self, frames: list[bytes]) -> dict[str, Any]:
        """The acknowledged ingress's handler: one request (``backend.parse_acked_ingress``)
        published like ``POST /api/publish``, and its answer: the HTTP API's body with
        its ``status`` (200, 400, or 503 with ``retry_after``)."""
        try:
            publication = parse_acked_ingress(frames, self._config)
        except BadRequest as exc:
            return {"status": 400, "error": str(exc)}
        stored = await self.publish_stored(publication, "ingress")
        status, body = publish_result(publication, *stored)
        if status == 503:
            body["retry_after"] = RETRY_AFTER
        return {"status": status, **body}

    def _has_history(self, channel: str) -> bool:
        options = self._config.namespaces.get(protocol.namespace_of(channel))
        return options is not None and options.history_size > 0

    def publish_frames(self, frames: list[bytes]) -> None:
        """The ingress's handler: one message (see ``backend.parse_ingress``)."""
        self.publish(parse_ingress(frames, self._config))

    def disconnect(self, user: str, how: control.Disconnect) -> None:
        """Close every connection of ``user`` on every worker with ``how``."""
        self.engine.send_to_user(user, control.encode_disconnect(how.code, how.reason))
        self.disconnects += 1

    def on_inbox(self, origin: int, payloads: list[bytes]) -> None:
        """Bus callback: the workers' replies to our requests, and their webhook events."""
        for message in control.inbox_messages(origin, payloads):
            if "reply" in message:
                self.engine.on_reply(origin, message)
            elif message["op"] == webhooks.OP:
                self.webhooks.put(message)
            elif message["op"] == tap_rules.EVENTS:
                self.taps.received(origin, message)

    async def channels(self, prefix: str, limit: int) -> dict[str, Any]:
        """The ``GET /api/channels`` document: subscriber counts summed over the ready
        workers that answered within ``CHANNELS_TIMEOUT``; ``complete`` is false (and
        ``missing`` lists them) when some did not."""
        answers, missing = await self.engine.ask_workers(
            "channels", {"prefix": prefix, "limit": limit}, CHANNELS_TIMEOUT
        )
        good = {member: a for member, a in answers.items() if "error" not in a}
        for member, answer in answers.items():
            if "error" in answer:
                log.error("worker %d refused the channels request: %s", member, answer["error"])
        missing |= answers.keys() - good.keys()
        counts, truncated = control.merge_channels(good.values(), limit)
        body: dict[str, Any] = {
            "channels": counts,
            "workers": len(good),
            "complete": not missing,
            "truncated": truncated,
        }
        if missing:
            body["missing"] = sorted(missing)
        return body

    async def presence(self, channel: str) -> dict[str, Any] | None:
        """The ``GET /api/presence`` document: every subscriber of ``channel``, from the
        ready workers that answered within ``CHANNELS_TIMEOUT`` (``complete`` false and
        ``missing`` when some did not; a dead worker's subscribers are never listed) on
        the mesh, from Redis on the hub (every host's; None when Redis did not answer)."""
        answer = await self.engine.presence_members(channel, CHANNELS_TIMEOUT)
        if answer is None:
            return None
        found, missing = answer
        members = [
            {"user": user, "client": client, "info": None if info is None else json.loads(info)}
            for user, client, info in found
        ]
        body: dict[str, Any] = {
            "channel": channel,
            "members": members,
            "clients": len(members),
            "users": len({m["user"] for m in members if m["user"]}),
            "complete": not missing,
        }
        if missing:
            body["missing"] = sorted(missing)
        return body

    async def history(self, channel: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The ``GET /api/history`` document from the channel's owner, or None if the
        owner did not answer within ``CHANNELS_TIMEOUT``."""
        request = control.HistoryPageRequest(channel, args["since"], args["limit"], args["reverse"])
        answer = await self.engine.ask(channel, request, CHANNELS_TIMEOUT)
        if answer is None:
            return None
        return {
            "channel": channel,
            "epoch": answer.position.epoch,
            "offset": answer.position.offset,
            "publications": [
                json.loads(protocol.encode_publication(channel, p)) for p in answer.publications
            ],
        }

    async def pusher_metrics(self, apps: list[str], api: PusherApi) -> bytes:
        """The Pusher series per app: this host's ready workers' counters (asked over
        the bus, waiting at most ``PUSHER_METRICS_TIMEOUT``; ``complete`` 0 when one
        did not answer) and the HTTP API's events."""
        slots = set(self._board.workers())  # not the bridge, which has no connections
        workers = {m for m in self.members.ready_local() if slot_of(m) in slots}
        answers, missing = await self.engine.ask_members(
            workers, "pusher_stats", {}, PUSHER_METRICS_TIMEOUT
        )
        per_worker = {
            slot_of(member): answer["apps"]
            for member, answer in answers.items()
            if isinstance(answer.get("apps"), dict)
        }
        complete = not missing and len(per_worker) == len(answers)
        return pusher_text(per_worker, api.events, self.webhooks.counters(), apps, complete)

    async def pusher_users(self, channel: str) -> control.PusherUsersReply | None:
        """The users of the Pusher presence channel ``channel`` (an internal name) from
        its owner, or None if the owner did not answer within ``CHANNELS_TIMEOUT``."""
        return await self.engine.ask(channel, control.PusherUsersRequest(channel), CHANNELS_TIMEOUT)

    def stats(self) -> dict[str, Any]:
        """The admin's own counters (``"admin"`` in ``GET /api/stats``)."""
        ingress, acked = self.ingress, self.acked_ingress
        stored = self.engine.store_counts()
        return {
            "publications": self.publications,
            "disconnects": self.disconnects,
            "ingress": None
            if ingress is None
            else {"received": ingress.received, "rejected": ingress.rejected},
            "acked_ingress": None
            if acked is None
            else {
                "received": acked.received,
                "rejected": acked.rejected,
                "answered": acked.answered,
            },
            "stored": {"confirmed": stored.confirmed, "unconfirmed": stored.unconfirmed},
            "held_for_owner": stored.held,
        }

    def ingress_counts(self) -> tuple[int, int]:
        """Messages read and refused by both ingress sockets."""
        sockets = [s for s in (self.ingress, self.acked_ingress) if s is not None]
        return sum(s.received for s in sockets), sum(s.rejected for s in sockets)


def make_app(
    config: Config,
    tables: SharedTables,
    draining: asyncio.Event,
    backend: Backend | None = None,
) -> web.Application:
    """The admin HTTP application.

    * ``GET /health``: the JSON document above (200 ok / 503 degraded).
    * ``GET /ready``: 200 while every worker is ready and the service is not draining,
      503 from the moment it starts draining, so a load balancer stops sending clients
      before they are closed, and 503 while every worker refuses new connections because
      its loop runs late (``[limits] overload_loop_lag``).
    * ``GET /metrics``: Prometheus text exposition of the scoreboard.

    The API under ``/api/`` needs the ``X-API-Key`` header: 403 when ``[admin] api_key``
    is not set, 401 for a missing or wrong key, 400 for a bad request (the message says
    why); errors are ``{"error": "..."}``. See docs/api.md.

    * ``POST /api/publish``: publish to one or many channels, or to a user's
      connections, on every worker, like a client's publish.
    * ``POST /api/disconnect``: close every connection of a user on every worker.
    * ``GET /api/channels``: active channels and subscriber counts over the workers.
    * ``GET /api/stats``: counters per worker and in total, from the scoreboard.
    * ``GET /api/tap``: a stream of a channel's events, as long as it is read, and
      ``GET /api/tap/status`` (``server.tapstream``).

    With ``[admin] console``, the console's page and endpoints (``server.console``);
    ``/api/`` then also takes the console's session cookie instead of the key header.
    """

    @web.middleware
    async def require_api_key(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            if not config.admin.api_key:
                return _error(403, API_DISABLED)
            key = request.headers.get("X-API-Key")
            if key is None and console is not None:  # the console's page: its cookie
                refused = console.refusal(request)
                if refused is not None:
                    return refused
            elif not constant_time_equal(key or "", config.admin.api_key):
                return _error(401, "missing or wrong X-API-Key")
        response: web.StreamResponse = await handler(request)
        return response

    async def get_health(_request: web.Request) -> web.Response:
        status, body = health(config, tables)
        return web.json_response(body, status=status)

    async def get_ready(_request: web.Request) -> web.Response:
        if draining.is_set():
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        status, body = health(config, tables)
        if status != 200:
            reason = f"{body['workers_alive']}/{body['workers']} workers alive"
        elif body["workers_overloaded"] == body["workers"]:
            # Healthy, but every worker refuses new connections (503) to keep serving
            # those it holds: a load balancer should send new clients elsewhere.
            status = 503
            reason = f"overloaded: {body['workers']} worker(s) refusing new connections"
        else:
            reason = "ok"
        return web.json_response({"ready": status == 200, "reason": reason}, status=status)

    async def get_metrics(_request: web.Request) -> web.Response:
        text = prometheus_text(
            tables.board,
            config.server.heartbeat_timeout,
            tables.view,
            redis=config.cluster.engine == "redis",
        )
        if pusher is not None and backend is not None and config.pusher.apps:
            text += await backend.pusher_metrics([app.id for app in config.pusher.apps], pusher)
        if backend is not None:
            taps = backend.taps
            text += tap_text(len(taps.open), taps.events_sent, taps.events_dropped)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def post_publish(request: web.Request) -> web.Response:
        assert backend is not None
        try:
            publication = parse_publish(await request.read(), config)
        except BadRequest as exc:
            return _error(400, str(exc))
        # Never a 200 for what may not be stored: a 503, and the backend retries with its
        # idem.
        status, body = publish_result(publication, *await backend.publish_stored(publication))
        headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
        return web.json_response(body, status=status, headers=headers)

    async def post_disconnect(request: web.Request) -> web.Response:
        assert backend is not None
        try:
            user, how = parse_disconnect(await request.read())
        except BadRequest as exc:
            return _error(400, str(exc))
        backend.disconnect(user, how)
        return web.json_response({"ok": True})

    async def get_channels(request: web.Request) -> web.Response:
        assert backend is not None
        try:
            prefix, limit = parse_channels_query(request.query)
        except BadRequest as exc:
            return _error(400, str(exc))
        return web.json_response(await backend.channels(prefix, limit))

    async def get_presence(request: web.Request) -> web.Response:
        assert backend is not None
        try:
            channel = parse_channel_query(request.query, config, "presence")
        except BadRequest as exc:
            return _error(400, str(exc))
        body = await backend.presence(channel)
        if body is None:
            return _error(503, "presence is kept in Redis, which did not answer; retry")
        return web.json_response(body)

    async def get_history(request: web.Request) -> web.Response:
        assert backend is not None
        try:
            channel = parse_channel_query(request.query, config, "history_size")
            args = parse_history_query(request.query)
        except BadRequest as exc:
            return _error(400, str(exc))
        body = await backend.history(channel, args)
        if body is None:
            return _error(503, "the channel's owner worker did not answer; retry")
        return web.json_response(body)

    async def get_tap(request: web.Request) -> web.StreamResponse:
        assert backend is not None
        # A tool with the key never expires; the console's stream ends with its session.
        cookie = console is not None and "X-API-Key" not in request.headers

        def refusal() -> str | None:
            refused = console.refusal(request) if cookie and console is not None else None
            return None if refused is None else json.loads(refused.body)["error"]  # type: ignore[arg-type]

        return await backend.taps.stream(request, refusal)

    async def get_tap_status(_request: web.Request) -> web.Response:
        assert backend is not None
        return web.json_response(await backend.taps.status())

    async def get_stats(_request: web.Request) -> web.Response:
        assert backend is not None
        return web.json_response({**worker_stats(config, tables.board), "admin": backend.stats()})

    async def pusher_api(request: web.Request) -> web.Response:
        # The Pusher HTTP API (docs/pusher.md): signed per app, not with X-API-Key.
        assert pusher is not None
        status, body = await pusher.answer(
            request.method, request.raw_path, await request.read(), time.time()
        )
        return web.Response(status=status, body=body, content_type="application/json")

    pusher = PusherApi(backend, config.pusher) if backend is not None else None
    console = None
    if config.admin.console:
        cluster = functools.partial(
            cluster_health, tables.board, tables.view, config.server.heartbeat_timeout
        )
        console = Console(config, tables, cluster if config.cluster.enabled else lambda: None)
    max_body = max(
        [max_request_bytes(config), *(max_body_bytes(app) for app in config.pusher.apps)]
    )
    app = web.Application(client_max_size=max_body, middlewares=[require_api_key])
    app.router.add_get("/health", get_health)
    app.router.add_get("/ready", get_ready)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/api/publish", post_publish)
    app.router.add_post("/api/disconnect", post_disconnect)
    app.router.add_get("/api/channels", get_channels)
    app.router.add_get("/api/stats", get_stats)
    app.router.add_get("/api/presence", get_presence)
    app.router.add_get("/api/history", get_history)
    if backend is not None:
        app.router.add_get("/api/tap", get_tap)
        app.router.add_get("/api/tap/status", get_tap_status)
        app.on_shutdown.append(backend.taps.end_streams)
    if console is not None:
        console.mount(app)
    if config.pusher.apps:
        app.router.add_route("*", "/apps/{tail:.*}", pusher_api)
        # The SDKs' terminate_user_connections: no /apps/{id} prefix (httpapi.decide).
        app.router.add_route("*", "/users/{tail:.*}", pusher_api)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _serve(
    config: Config, tables: SharedTables, slot: int, sock: socket.socket, run_dir: str
) -> None:
    board = tables.board
    row = board.row(slot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handover = asyncio.Event()  # SIGUSR2: replaced by a reload, not a shutdown
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def hand_over() -> None:
        handover.set()
        stop.set()

    loop.add_signal_handler(signal.SIGUSR2, hand_over)
    # The admin is a member of the host bus: it publishes (API, ingress) and asks the
    # workers through their inboxes. Its publications go through the forwarder like a
    # worker's, so "subscribed" holds for them too once its own barrier passed.
    backend = Backend(config, tables)
    bus = backend.bus = Bus(
        backend.members.me,
        endpoints(run_dir),
        lambda _topic, _payloads, _stamp: None,
        backend.members.relays,
        on_inbox=backend.on_inbox,
        # A draining owner still answers until it closes its bus (``server.stored``).
        inbox_live=backend.members.inbox_answering,
        hwm=config.server.bus_hwm,
    )
    bus.start()
    backend.webhooks.start()
    deadline = loop.time() + 3.0
    while not await bus.sync() and loop.time() < deadline:
        pass
    if config.ingress.bind:
        backend.ingress = Ingress(config.ingress, backend.publish_frames, max_request_bytes(config))
        backend.ingress.start()
    if config.ingress.acked_bind:
        backend.acked_ingress = AckedIngress(
            config.ingress, backend.answer_frames, max_request_bytes(config)
        )
        backend.acked_ingress.start()
    runner = web.AppRunner(make_app(config, tables, stop, backend), access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    row[Column.STATE] = ProcessState.READY
    log.info("admin ready on http://%s:%d", *sock.getsockname()[:2])
    while not stop.is_set():
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()
        # The admin's own row: what backends did (exported by /metrics).
        row[Column.PUBLISHES] = backend.publications
        row[Column.MESSAGES_IN], row[Column.PROTOCOL_ERRORS] = backend.ingress_counts()
        store_redis(row, backend.engine.redis_counters())
        try:
            await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL)
        except TimeoutError:
            pass
    row[Column.STATE] = ProcessState.DRAINING
    for ingress in (backend.ingress, backend.acked_ingress):
        if ingress is not None:  # a reload's new admin binds the same endpoint
            ingress.close()
    # Keep answering (/ready: 503) while the workers drain, so load balancers see the
    # drain; the supervisor zeroes each worker's row when it has exited.
    deadline = time.monotonic() + max(config.server.drain_timeout - 0.5, 0.1)
    while (
        not handover.is_set()
        and time.monotonic() < deadline
        and any(int(board.table[w, Column.STATE]) != ProcessState.DEAD for w in board.workers())
    ):
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()
        await asyncio.sleep(0.05)
    await runner.cleanup()
    await backend.webhooks.close()
    backend.engine.close()
    bus.close()


def run_admin(
    slot: int, config: Config, tables: SharedTables, sock: socket.socket, run_dir: str
) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    setproctitle("shardws: admin")
    setup_logging(config.log.level, config.log.format, "admin")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    row = tables.board.row(slot)
    row[Column.PID] = os.getpid()
    row[Column.STATE] = ProcessState.BOOTING
    row[Column.HEARTBEAT_NS] = time.monotonic_ns()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(config, tables, slot, sock, run_dir))
    finally:
        loop.close()
    return 0
