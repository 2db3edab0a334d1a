"""The admin's side of the event tap (docs/api.md, "Event tap"; the rules and the
messages are ``pure.tap``, a worker's side ``server.tap``).

``GET /api/tap?channel=NAME`` (or ``prefix=TEXT``, with ``app=ID`` for a Pusher app's
channels) opens a tap for as long as its reader stays: a server-sent event stream, read
by the console's panel (with its cookie) or a tool (with ``X-API-Key``).

* Opening asks every ready worker through the engine (``Engine.ask_workers``: on the
  mesh every worker of every host, so the publications made on other hosts are seen
  there, where they enter) to tap the target with a lease, renewed every ``LEASE / 3``
  seconds while the stream lasts. The stream's end closes it (and if this admin is gone,
  the lease does).
* The workers' events reach this process's inbox (``Backend.on_inbox``) into the tap's
  ring (``RING`` events: a slow reader loses the oldest, counted as dropped), and are
  written to the stream at most every ``FLUSH_INTERVAL`` seconds, many per event.
* Publications that enter through this admin (the HTTP API, the ingress, the Pusher HTTP
  API) are seen here, under the same rate cap. Those entering through another host's
  admin are not: only that host's admin sees them (host-only).
* Connects, subscribes, unsubscribes and disconnects are reported by the worker that
  holds the connection, on every host the tap reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shardws.pure import tap as rules
from shardws.pure.cluster import host_of
from shardws.pure.pusher.channels import app_of, is_internal, pusher_name
from shardws.server.engine import Engine

log = logging.getLogger("shardws.admin")

#: Events a tap keeps for its reader at most; older ones are dropped (and counted).
RING = 2000
#: Events written in one server-sent event at most.
SEND_MAX = 500
#: Seconds between writes to a quiet stream (a comment), to notice a reader gone.
KEEPALIVE = 5.0
#: Seconds the stream waits for the workers' answers when it opens.
OPEN_TIMEOUT = 2.0
#: Seconds a worker's "1 in N" is shown after its last batch.
EVERY_SHOWN = 2.0


@dataclass(eq=False)
class Tap:
    id: int
    target: rules.Target
    ring: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RING))
    every: dict[int, tuple[int, float]] = field(default_factory=dict)  # member -> N, when
    dropped: int = 0
    local: rules.Sampling = field(default_factory=lambda: rules.Sampling(rules.RATE))

    def showing(self, now: float) -> int:
        """N of "showing 1 in N" now: the largest any worker applied lately."""
        local = self.local.every if self.local.dropped or self.local.every > 1 else 1
        recent = [n for n, at in self.every.values() if now - at < EVERY_SHOWN]
        return max([local, *recent])

    def add(self, events: list[dict[str, Any]]) -> int:
        """Put ``events`` in the ring; returns how many older ones it pushed out."""
        lost = max(0, len(self.ring) + len(events) - RING)
        self.ring.extend(events)
        return lost


class TapStreams:
    """The taps of this admin: ``open`` is empty while none is (the publish paths'
    check). ``engine`` asks the workers; ``me`` is this admin's member id."""

    def __init__(self, engine: Engine, me: int, apps: frozenset[str]) -> None:
        self._engine = engine
        self._me = me
        self._apps = apps
        self.open: dict[int, Tap] = {}
        self.events_sent = 0  # events written to the streams
        self.events_dropped = 0  # by the workers' rate caps, this one's, and full rings
        self._ending = False
        self._closing: set[asyncio.Task[Any]] = set()

    # -- events ------------------------------------------------------------------------

    def received(self, origin: int, message: dict[str, Any]) -> None:
        """A ``tap.events`` message from member ``origin``'s worker."""
        tap = self.open.get(message.get("tap"))  # type: ignore[arg-type]
        events, dropped, every = message.get("events"), message.get("dropped"), message.get("every")
        if tap is None or not isinstance(events, list):
            return
        remote = host_of(origin) != host_of(self._me)
        for event in events:
            if isinstance(event, dict):
                event["worker"] = message.get("worker")
                event["member"] = origin
                _named(event)
                if remote:
                    event["host"] = host_of(origin)
                    if event.get("type") == rules.PUBLISH:
                        event["origin"] = "another host"
        lost = tap.add(events)
        if isinstance(dropped, int):
            tap.dropped += dropped + lost
            self.events_dropped += dropped + lost
        if isinstance(every, int):
            tap.every[origin] = (every, time.monotonic())

    def local(self, channel: str, data: bytes, origin: str, name: str = "") -> None:
        """A publication of ``data`` (Pusher: event ``name``) to ``channel`` that entered
        through this admin (``origin``: ``http``, ``ingress``)."""
        now = time.time()
        for tap in self.open.values():
            if not tap.target.matches(channel):
                continue
            if not tap.local.take(now):
                tap.dropped += 1
                self.events_dropped += 1
                continue
            text, size = rules.preview(data)
            event: dict[str, Any] = {
                "type": rules.PUBLISH,
                "origin": origin,
                "event": name or None,
                "client": None,
                "user": None,
                "data": text,
                "size": size,
                "channel": channel,
                "at": round(now, 3),
                "worker": None,
                "member": self._me,
            }
            lost = tap.add([_named(event)])
            tap.dropped += lost
            self.events_dropped += lost

    # -- the stream --------------------------------------------------------------------

    async def stream(
        self, request: web.Request, refusal: Callable[[], str | None]
    ) -> web.StreamResponse:
        """``GET /api/tap``: the stream of a new tap. ``refusal()`` is checked before
        each write: a message (the console's session ended) ends the stream."""
        try:
            target = rules.parse_target(request.query, self._apps)
        except rules.BadTarget as exc:
            return web.json_response({"error": str(exc)}, status=400)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        tap = Tap(secrets.randbits(62), target)
        self.open[tap.id] = tap
        renewing = asyncio.create_task(self._renew(tap))
        try:
            answers, missing = await self._engine.ask_workers(
                rules.OPEN, rules.encode_open(tap.id, target, rules.LEASE, rules.RATE), OPEN_TIMEOUT
            )
            refused = {m: a["error"] for m, a in answers.items() if "error" in a}
            await response.write(
                _event(
                    "opened",
                    {
                        "tap": str(tap.id),
                        "target": target.describe(),
                        "workers": len(answers) - len(refused),
                        "missing": sorted(missing),
                        "refused": refused,
                        "rate": rules.RATE,
                        "lease": rules.LEASE,
                        "ring": RING,
                    },
                )
            )
            await self._write_until_gone(tap, response, refusal)
        except ConnectionResetError:
            pass  # the reader went away
        finally:
            del self.open[tap.id]
            renewing.cancel()
            closing = asyncio.create_task(
                self._engine.ask_workers(rules.CLOSE, {"tap": tap.id}, OPEN_TIMEOUT)
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return response

    async def _write_until_gone(
        self, tap: Tap, response: web.StreamResponse, refusal: Callable[[], str | None]
    ) -> None:
        quiet_since = time.monotonic()
        shown = (1, 0)
        while not self._ending:
            await asyncio.sleep(rules.FLUSH_INTERVAL)
            refused = refusal()
            if refused is not None:
                await response.write(_event("signed-out", {"error": refused}))
                return
            now = time.monotonic()
            every = tap.showing(now)
            if not tap.ring and (every, tap.dropped) == shown:
                if now - quiet_since >= KEEPALIVE:
                    await response.write(b": keepalive\n\n")
                    quiet_since = now
                continue
            while True:
                count = min(len(tap.ring), SEND_MAX)
                events = [tap.ring.popleft() for _ in range(count)]
                await response.write(
                    _event("events", {"events": events, "every": every, "dropped": tap.dropped})
                )
                self.events_sent += count
                if not tap.ring:
                    break
            shown, quiet_since = (every, tap.dropped), now

    async def _renew(self, tap: Tap) -> None:
        """Renew the lease (and open it on workers started since) until cancelled."""
        args = rules.encode_open(tap.id, tap.target, rules.LEASE, rules.RATE)
        while True:
            await asyncio.sleep(rules.LEASE / 3)
            try:
                await self._engine.ask_workers(rules.OPEN, args, OPEN_TIMEOUT)
            except Exception:  # a bug here must not leave the lease to lapse silently
                log.exception("tap: renewing a lease failed")

    async def end_streams(self, _app: web.Application) -> None:
        """The admin stops: end every stream now (aiohttp would wait for them)."""
        self._ending = True

    async def status(self) -> dict[str, Any]:
        """``GET /api/tap/status``: this admin's taps and each worker's (``open``, and
        ``work``: the events its taps looked at since it started)."""
        answers, missing = await self._engine.ask_workers(rules.STATUS, {}, OPEN_TIMEOUT)
        return {
            "taps": [{"tap": str(t.id), **t.target.describe()} for t in self.open.values()],
            "workers": {str(member): answer for member, answer in sorted(answers.items())},
            "missing": sorted(missing),
            "events_sent": self.events_sent,
            "events_dropped": self.events_dropped,
        }


def _named(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with a Pusher channel's internal name shown as its app and name."""
    channel = event.get("channel")
    if isinstance(channel, str) and is_internal(channel):
        event["app"], event["channel"] = app_of(channel), pusher_name(channel)
    return event


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
