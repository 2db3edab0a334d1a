"""The operator console on the admin port (``[admin] console = true``): a page with live
graphs of this host's workers, the cluster as the mesh sees it, channels, a publish form
and a disconnect action (docs/api.md, "Console"; docs/operations.md, "The console").

What it adds to the admin (``server.admin`` routes to it):

* ``GET /console`` and its files (``static/console/``: the page, its script and style,
  uPlot with its licence), no secret in any of them.
* ``POST /console/login`` (the API key, once, in the body) -> a session cookie and a CSRF
  token; ``GET /console/session`` (the token again, for a reloaded page);
  ``POST /console/logout``. The rules are in ``pure.console``.
* ``GET /api/console/live`` (server-sent events: the last minutes of samples, then one a
  second) and ``GET /api/console/samples`` (the same as one JSON document). Like every
  ``/api/`` endpoint they take the ``X-API-Key`` header, or the console's cookie.

A later panel (the event tap) adds a ``<section class="panel" data-tab="...">`` to the
page (the tabs are built from those sections), its routes here, and its own stream or
event name; the sign-in and the ``/api/`` rules above apply to it unchanged.

The samples are read from the scoreboard in shared memory by one task of the admin, once
a second, whether or not anyone looks, and encoded once for every viewer: an open
console asks nothing of the workers. Only the page's channel list, presence and history
(the existing ``/api/`` endpoints, on demand) reach them, through their inboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import web

from shardws.config import Config
from shardws.pure.auth import constant_time_equal
from shardws.pure.console import Refused, Sessions, per_second, quantile
from shardws.shm.scoreboard import LATENCY_BUCKETS, LATENCY_COLUMNS, Column, ProcessState
from shardws.shm.tables import SharedTables

log = logging.getLogger("shardws.admin")

#: The session cookie's name.
COOKIE = "shardws_console"
#: The header an action made with the cookie carries its CSRF token in.
CSRF_HEADER = "X-CSRF-Token"
#: Seconds between samples.
SAMPLE_INTERVAL = 1.0
#: Samples kept and sent to a page when it opens (five minutes).
KEEP_SAMPLES = 300
#: Samples a slow viewer may be behind before it misses some.
VIEWER_BACKLOG = 5
#: Put in a viewer's queue to end its stream.
END = b""

_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Path under /console -> (file in static/console, content type).
_FILES = {
    "": ("console.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
    "/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
    "/uPlot.LICENSE": ("uPlot.LICENSE", "text/plain; charset=utf-8"),
}
_NO_STORE = {"Cache-Control": "no-store"}


@functools.cache
def _file(name: str) -> bytes:
    return resources.files("shardws").joinpath("static", "console", name).read_bytes()


class Sampler:
    """Reads this host's scoreboard once a second into a ring of samples (JSON-ready
    dicts) and hands each, encoded once, to every live viewer's queue."""

    def __init__(
        self, config: Config, tables: SharedTables, cluster: Callable[[], dict[str, Any] | None]
    ) -> None:
        self._config = config
        self._board = tables.board
        self._cluster = cluster
        self.samples: deque[dict[str, Any]] = deque(maxlen=KEEP_SAMPLES)
        self.viewers: set[asyncio.Queue[bytes]] = set()
        self._previous: tuple[float, np.ndarray[Any, np.dtype[np.int64]]] | None = None

    def sample(self) -> dict[str, Any]:
        """One sample: per worker, what its counters did since the last sample."""
        board = self._board
        now = time.monotonic()
        table = board.table.copy()  # one consistent-enough read of every row
        if self._previous is None:
            seconds, before = 0.0, table
        else:
            seconds, before = now - self._previous[0], self._previous[1]
        self._previous = (now, table)
        stale = self._config.server.heartbeat_timeout
        ready = board.ready_slots(stale)
        workers = []
        total_buckets = np.zeros(LATENCY_COLUMNS.stop - LATENCY_COLUMNS.start, dtype=np.int64)
        for slot in board.workers():
            row, old = table[slot], before[slot]
            if int(row[Column.STARTED_NS]) != int(old[Column.STARTED_NS]):
                old = np.zeros_like(row)  # restarted since: its counters began at 0
            buckets = np.maximum(row[LATENCY_COLUMNS] - old[LATENCY_COLUMNS], 0)
            total_buckets += buckets
            workers.append(
                {
                    "worker": slot,
                    "pid": int(row[Column.PID]),
                    "state": ProcessState(int(row[Column.STATE])).name.lower(),
                    "alive": slot in ready,
                    "connections": int(row[Column.CONNECTIONS]),
                    **_rates(row, old, seconds),
                    "drops": int(row[Column.DROPS]),
                    "slow_consumers": int(row[Column.SLOW_CONSUMERS]),
                    "not_live": int(row[Column.NOT_LIVE]),
                    "bus_lost": int(row[Column.BUS_LOST]),
                    **_latency(buckets),
                    "restarts": int(row[Column.RESTARTS]),
                    "rss": int(row[Column.RSS_BYTES]),
                    "loop_lag": int(row[Column.LOOP_LAG_US]) / 1e6,
                }
            )
        total: dict[str, Any] = {
            name: sum(w[name] for w in workers)
            for name in (
                "connections", "deliveries", "messages_in", "publications", "drops",
                "slow_consumers", "not_live", "bus_lost", "restarts", "rss",
            )
        }  # fmt: skip
        total.update(_latency(total_buckets))
        return {
            "time": round(time.time(), 3),
            "workers": workers,
            "total": total,
            "processes": {
                name: {"alive": slot in ready, "rss": int(table[slot, Column.RSS_BYTES])}
                for name, slot in (("admin", board.admin_slot), ("bridge", board.bridge_slot))
                if int(table[slot, Column.CONFIGURED])
            },
            "cluster": self._cluster_view(),
        }

    def _cluster_view(self) -> dict[str, Any] | None:
        view = self._cluster()
        return None if view is None else {"engine": self._config.cluster.engine, **view}

    async def run(self) -> None:
        """Sample every ``SAMPLE_INTERVAL`` until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                sample = self.sample()
            except Exception:  # a bug here must not end the samples for good
                log.exception("console: sampling the scoreboard failed")
            else:
                self.samples.append(sample)
                message = _event("sample", sample)
                for queue in self.viewers:
                    with contextlib.suppress(asyncio.QueueFull):  # a slow viewer misses one
                        queue.put_nowait(message)
            due = max(due + SAMPLE_INTERVAL, loop.time())
            await asyncio.sleep(due - loop.time())


def _rates(
    row: np.ndarray[Any, Any], old: np.ndarray[Any, Any], seconds: float
) -> dict[str, float]:
    return {
        name: round(per_second(int(row[column]), int(old[column]), seconds), 1)
        for name, column in (
            ("deliveries", Column.MESSAGES_OUT),
            ("messages_in", Column.MESSAGES_IN),
            ("publications", Column.PUBLISHES),
        )
    }


def _latency(buckets: np.ndarray[Any, Any]) -> dict[str, float | None]:
    """Delivery latency p50 and p99 in milliseconds over one sample's observations."""
    counts = [int(c) for c in buckets]
    result: dict[str, float | None] = {}
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        value = quantile(counts, LATENCY_BUCKETS, q)
        result[name] = None if value is None else round(value * 1e3, 3)
    return result


def _event(name: str, data: Any) -> bytes:
    """One server-sent event (its data is one line of JSON)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Console:
    """The console's routes and its sign-in, added to the admin's application by
    :meth:`mount`; :meth:`refusal` is the admin's check of ``/api/`` requests made
    without the API key header."""

    def __init__(
        self, config: Config, tables: SharedTables, cluster: Callable[[], dict[str, Any] | None]
    ) -> None:
        self._config = config
        self.sessions = Sessions(
            config.admin.console_session_ttl, lambda: secrets.token_urlsafe(32)
        )
        self.sampler = Sampler(config, tables, cluster)

    def mount(self, app: web.Application) -> None:
        router = app.router
        for path in _FILES:
            router.add_get(f"/console{path}", self._static)
        router.add_post("/console/login", self._login)
        router.add_post("/console/logout", self._logout)
        router.add_get("/console/session", self._session)
        router.add_get("/api/console/live", self._live)
        router.add_get("/api/console/samples", self._samples)
        app.cleanup_ctx.append(self._sampling)
        app.on_shutdown.append(self._end_streams)

    async def _sampling(self, _app: web.Application) -> Any:
        task = asyncio.create_task(self.sampler.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _end_streams(self, _app: web.Application) -> None:
        """The admin stops: end every live stream now (aiohttp would wait for them)."""
        for queue in self.sampler.viewers:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(END)

    def refusal(self, request: web.Request) -> web.Response | None:
        """None when ``request`` (to ``/api/``, without ``X-API-Key``) carries a live
        session's cookie and, for an action, its CSRF token; else the error response."""
        try:
            self._check(request)
        except Refused as refused:
            return _error(refused.status, refused.message)
        return None

    def _check(self, request: web.Request) -> None:
        self.sessions.check(
            request.cookies.get(COOKIE, ""),
            request.method,
            request.headers.get(CSRF_HEADER, ""),
            time.monotonic(),
        )

    async def _static(self, request: web.Request) -> web.Response:
        name, content_type = _FILES[request.path.removeprefix("/console")]
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "console.html":
            headers["Content-Security-Policy"] = _PAGE_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        headers["Content-Type"] = content_type
        return web.Response(body=_file(name), headers=headers)

    async def _login(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'body must be JSON: {"key": "<the [admin] api_key>"}')
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            return _error(400, 'body must be JSON: {"key": "<the [admin] api_key>"}')
        if not constant_time_equal(key, self._config.admin.api_key):
            log.warning("console: a sign-in with a wrong key from %s", request.remote)
            return _error(401, "wrong API key")
        now = time.monotonic()
        session = self.sessions.sign_in(now)
        response = web.json_response(_session_body(session.csrf, session.expires - now))
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self._config.admin.console_session_ttl),
            path="/",
            httponly=True,
            samesite="Strict",
        )
        response.headers.update(_NO_STORE)
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)  # a forged logout is refused like any action
        if refused is not None:
            return refused
        self.sessions.sign_out(request.cookies.get(COOKIE, ""))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _session(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        try:
            session = self.sessions.check(request.cookies.get(COOKIE, ""), "GET", "", now)
        except Refused as refused:
            return _error(refused.status, refused.message)
        return web.json_response(
            _session_body(session.csrf, session.expires - now), headers=_NO_STORE
        )

    async def _samples(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"interval": SAMPLE_INTERVAL, "samples": list(self.sampler.samples)}
        )

    async def _live(self, request: web.Request) -> web.StreamResponse:
        signed_in = "X-API-Key" not in request.headers  # a tool with the key never expires
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue(VIEWER_BACKLOG)
        self.sampler.viewers.add(queue)
        try:
            await response.write(
                _event(
                    "backlog", {"interval": SAMPLE_INTERVAL, "samples": list(self.sampler.samples)}
                )
            )
            while True:
                message = await queue.get()
                if message == END:
                    break
                if signed_in:
                    try:
                        self._check(request)
                    except Refused as refused:
                        await response.write(_event("signed-out", {"error": refused.message}))
                        break
                await response.write(message)
        except ConnectionResetError:
            pass  # the viewer went away
        finally:
            self.sampler.viewers.discard(queue)
        return response


def _session_body(csrf: str, seconds_left: float) -> dict[str, Any]:
    return {"csrf": csrf, "csrf_header": CSRF_HEADER, "expires_in": round(seconds_left)}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
