"""The admin process (``shardws: admin``): the admin HTTP port.

Serves ``GET /health`` from the scoreboard in shared memory; it never talks to workers
directly, so a stuck worker cannot stall it. Runs aiohttp on its own event loop, on the
listening socket the supervisor created (kept open across restarts of this process).

``/health`` answers 200 with ``"status": "ok"`` when every worker is ready with a fresh
heartbeat, and 503 with ``"status": "degraded"`` otherwise (a load balancer then stops
sending new clients here).
"""

from __future__ import annotations

import asyncio
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

from shardws import protocol
from shardws.auth import constant_time_equal
from shardws.bus import Bus, channel_topic, endpoint
from shardws.config import Config
from shardws.log import setup_logging
from shardws.metrics import Column, ProcessState, Scoreboard, prometheus_text

log = logging.getLogger("shardws.admin")

HEARTBEAT_INTERVAL = 0.5


def health(config: Config, board: Scoreboard) -> tuple[int, dict[str, Any]]:
    """The /health document and its HTTP status, computed from the scoreboard."""
    stale = config.server.heartbeat_timeout
    now_ns = time.monotonic_ns()
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
                "connections": int(row[Column.CONNECTIONS]),
                "restarts": int(row[Column.RESTARTS]),
                "drops": int(row[Column.DROPS]),
                "slow_consumers": int(row[Column.SLOW_CONSUMERS]),
                "bus_lost": int(row[Column.BUS_LOST]),
            }
        )
    alive = sum(1 for w in workers if w["alive"])
    healthy = alive == len(workers)
    body = {
        "status": "ok" if healthy else "degraded",
        "workers_alive": alive,
        "workers": len(workers),
        "connections": sum(w["connections"] for w in workers),
        "per_worker": workers,
    }
    return (200 if healthy else 503), body


class PublishError(ValueError):
    """A bad ``/api/publish`` body; the message says what would be valid."""


def parse_publish(body: bytes, config: Config) -> tuple[list[str], bytes]:
    """``{"channel": C | "channels": [C, ...], "data": <any JSON>}`` -> (channels, data
    encoded once as compact JSON). Channels must be valid names in configured namespaces."""
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise PublishError(f"body is not JSON: {exc}") from None
    if not isinstance(request, dict) or "data" not in request:
        raise PublishError('body must be an object with "data" and "channel" or "channels"')
    channels = request.get("channels", [request["channel"]] if "channel" in request else None)
    if not isinstance(channels, list) or not channels or len(channels) > 1000:
        raise PublishError('"channel" (a string) or "channels" (1..1000 strings) is required')
    for channel in channels:
        problem = protocol.channel_error(channel if isinstance(channel, str) else None)
        if problem is not None:
            raise PublishError(f"{channel!r}: {problem}")
        namespace = protocol.namespace_of(channel)
        if namespace not in config.namespaces:
            raise PublishError(f"{channel!r}: namespace {namespace!r} is not configured")
    data = json.dumps(request["data"], separators=(",", ":"), ensure_ascii=False).encode()
    return channels, data


def make_app(
    config: Config, board: Scoreboard, draining: asyncio.Event, bus: Bus | None = None
) -> web.Application:
    """The admin HTTP application.

    * ``GET /health``: the JSON document above (200 ok / 503 degraded).
    * ``GET /ready``: 200 while every worker is ready and the service is not draining,
      503 from the moment it starts draining, so a load balancer stops sending clients
      before they are closed.
    * ``GET /metrics``: Prometheus text exposition of the scoreboard.
    * ``POST /api/publish`` (``X-API-Key`` header): publish to one or many channels on
      every worker, like a client's publish. 403 when ``[admin] api_key`` is not set,
      401 for a wrong key, 400 for a bad body (the message says why), 200 otherwise.
    """

    async def get_health(_request: web.Request) -> web.Response:
        status, body = health(config, board)
        return web.json_response(body, status=status)

    async def get_ready(_request: web.Request) -> web.Response:
        if draining.is_set():
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        status, body = health(config, board)
        ready = status == 200
        reason = "ok" if ready else f"{body['workers_alive']}/{body['workers']} workers alive"
        return web.json_response({"ready": ready, "reason": reason}, status=status)

    async def get_metrics(_request: web.Request) -> web.Response:
        text = prometheus_text(board, config.server.heartbeat_timeout)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def post_publish(request: web.Request) -> web.Response:
        if not config.admin.api_key:
            return _error(403, "the HTTP API is disabled: set [admin] api_key")
        if not constant_time_equal(request.headers.get("X-API-Key", ""), config.admin.api_key):
            return _error(401, "missing or wrong X-API-Key")
        try:
            channels, data = parse_publish(await request.read(), config)
        except PublishError as exc:
            return _error(400, str(exc))
        assert bus is not None
        for channel in channels:
            bus.publish(channel_topic(channel), protocol.encode_pub(channel, data))
        return web.json_response({"ok": True, "channels": len(channels)})

    app = web.Application(client_max_size=config.server.max_message_size * 16)
    app.router.add_get("/health", get_health)
    app.router.add_post("/api/publish", post_publish)
    app.router.add_get("/ready", get_ready)
    app.router.add_get("/metrics", get_metrics)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _serve(
    config: Config, board: Scoreboard, slot: int, sock: socket.socket, run_dir: str
) -> None:
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
    # The admin is the last member of the host bus: it only publishes (HTTP API), but it
    # answers subscribe barriers like a worker, so "subscribed" holds for its messages.
    stale = config.server.heartbeat_timeout

    def ready_peers() -> set[int]:
        return board.ready_slots(stale) - {slot}

    bus = Bus(slot, lambda m: endpoint(run_dir, m), lambda _t, _p, _s: None, ready_peers)
    bus.start(board.members())
    missing = await bus.wait_for_peers(ready_peers(), 3.0)
    if missing:
        log.warning("workers %s did not attach to the bus in time", sorted(missing))
    runner = web.AppRunner(make_app(config, board, stop, bus), access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    row[Column.STATE] = ProcessState.READY
    log.info("admin ready on http://%s:%d", *sock.getsockname()[:2])
    while not stop.is_set():
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()
        bus.attach(board.members())  # a reload may have added workers
        try:
            await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL)
        except TimeoutError:
            pass
    row[Column.STATE] = ProcessState.DRAINING
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
    bus.close()


def run_admin(
    slot: int, config: Config, board: Scoreboard, sock: socket.socket, run_dir: str
) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    setproctitle("shardws: admin")
    setup_logging(config.log.level, config.log.format, "admin")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    board.disown()
    row = board.row(slot)
    row[Column.PID] = os.getpid()
    row[Column.STATE] = ProcessState.BOOTING
    row[Column.HEARTBEAT_NS] = time.monotonic_ns()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(config, board, slot, sock, run_dir))
    finally:
        loop.close()
    return 0
