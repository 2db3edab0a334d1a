"""A worker's side of the event tap (``pure.tap`` has the rules; docs/api.md, "Event
tap"): the taps the admins opened here, what they see, and its sending.

The fronts call one method per event, each behind ``if taps.open:`` (an empty dict while
no tap is open: the whole cost then). A watched event the rate cap takes becomes a small
dict in its tap's batch; the batches leave ``FLUSH_INTERVAL`` after the first event, one
inbox message per tap, to the admin that opened it (``tap.events``). Each tap has a
timer for its lease: not renewed in time, it is forgotten, and with the last one the
hooks see an empty dict again.

``work`` counts the events the taps looked at (one per hook call): a closed tap must
leave it still (``tests/test_tap.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shardws.pure import tap as rules
from shardws.pure.publication import Publication
from shardws.pure.pusher.channels import internal_name
from shardws.server.connection import Connection


@dataclass(eq=False)
class _Tap:
    request: rules.OpenRequest
    sampling: rules.Sampling
    expires: float
    timer: asyncio.TimerHandle | None = None
    batch: list[dict[str, Any]] = field(default_factory=list)


class WorkerTaps:
    """The taps open in one worker. ``send(member, payload)`` queues a payload for a
    member's inbox (the bus); ``member`` and ``slot`` name this worker in events."""

    def __init__(self, member: int, slot: int, send: Callable[[int, bytes], None]) -> None:
        self.open: dict[int, _Tap] = {}
        self.work = 0
        self._member = member
        self._slot = slot
        self._send = send
        self._flush_due = False

    # -- the admin's requests (answered by the worker's ``_answer_local``) -----------------

    def answer(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        if op == rules.OPEN:
            try:
                opened = rules.decode_open(request)
            except ValueError as exc:
                return {"error": str(exc)}
            if not self._open(opened):
                return {"error": f"this worker holds {rules.MAX_TAPS} taps already"}
        elif op == rules.CLOSE:
            tap = self.open.get(request.get("tap"))  # type: ignore[arg-type]
            if tap is not None:
                self._close(tap)
        return {"open": len(self.open), "work": self.work}

    def _open(self, request: rules.OpenRequest) -> bool:
        expires = time.monotonic() + request.lease
        tap = self.open.get(request.tap)
        if tap is not None:  # a renewal
            tap.expires = expires
            return True
        if len(self.open) >= rules.MAX_TAPS:
            return False
        tap = self.open[request.tap] = _Tap(request, rules.Sampling(request.rate), expires)
        tap.timer = asyncio.get_running_loop().call_later(request.lease, self._expire, tap)
        return True

    def _expire(self, tap: _Tap) -> None:
        left = tap.expires - time.monotonic()
        if left > 0:
            tap.timer = asyncio.get_running_loop().call_later(left, self._expire, tap)
        else:
            self._close(tap)

    def _close(self, tap: _Tap) -> None:
        if tap.timer is not None:
            tap.timer.cancel()
        if self.open.get(tap.request.tap) is tap:
            del self.open[tap.request.tap]
        self._send_batch(tap)  # what it saw before it closed

    # -- what the fronts see (each called only while ``open`` is not empty) ----------------

    def published(self, channel: str, publication: Publication, origin: str = "client") -> None:
        """A publication entered the server here (``origin``: ``client``, or ``owner``
        for what a channel's owner publishes)."""
        self.work += 1

        def event() -> dict[str, Any]:  # made only for a tap that reports it
            text, size = rules.preview(publication.data)
            return {
                "type": rules.PUBLISH,
                "origin": origin,
                "event": publication.event or None,
                "client": publication.origin or None,
                "user": publication.user or None,
                "data": text,
                "size": size,
            }

        self._event(channel, "", event)

    def subscribed(self, channel: str, conn: Connection, subscribed: bool = True) -> None:
        self.work += 1
        kind = rules.SUBSCRIBE if subscribed else rules.UNSUBSCRIBE
        self._event(channel, "", lambda: {"type": kind, **_who(conn)})

    def connected(self, conn: Connection) -> None:
        self.work += 1
        if conn.closing:  # refused as it opened (per-IP limits, a refused Pusher app)
            return
        app = _app_of(conn)
        self._event("", app, lambda: {"type": rules.CONNECT, "app": app or None, **_who(conn)})

    def disconnected(self, conn: Connection) -> None:
        """``conn`` closed (before it leaves its channels): shown to the taps of one of
        its channels, or of every channel."""
        self.work += 1
        app = _app_of(conn)
        event = {"type": rules.DISCONNECT, "app": app or None, **_who(conn)}
        self._event(_channels_of(conn), app, lambda: event)

    def _event(
        self,
        channel: str | list[str],
        app: str | None,
        event: Callable[[], dict[str, Any]],
    ) -> None:
        """Add ``event()`` to the batch of each tap that watches ``channel`` (a list:
        any of them; "": a connection of ``app``) and whose rate cap takes it."""
        now = time.time()
        for tap in self.open.values():
            target = tap.request.target
            if isinstance(channel, str):
                if channel:
                    shown: str | None = channel if target.matches(channel) else None
                else:
                    shown = "" if app is not None and target.sees_connections(app) else None
            else:
                shown = next((c for c in channel if target.matches(c)), None)
                if shown is None and app is not None and target.sees_connections(app):
                    shown = ""
            if shown is None or len(tap.batch) >= rules.BATCH or not tap.sampling.take(now):
                continue
            tap.batch.append({**event(), "channel": shown or None, "at": round(now, 3)})
            if not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_later(rules.FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        for tap in self.open.values():
            self._send_batch(tap)

    def _send_batch(self, tap: _Tap) -> None:
        sampling = tap.sampling
        if not tap.batch and not sampling.dropped:
            return
        message = {
            "op": rules.EVENTS,
            "id": 0,
            "reply_to": self._member,
            "tap": tap.request.tap,
            "worker": self._slot,
            "every": sampling.every,
            "dropped": sampling.dropped,
            "events": tap.batch,
        }
        tap.batch = []
        sampling.dropped = 0
        self._send(tap.request.admin, json.dumps(message, separators=(",", ":")).encode())


def _who(conn: Connection) -> dict[str, Any]:
    identity = conn.identity
    user = getattr(conn, "user_id", None) or (identity.user if identity is not None else "")
    return {"client": conn.client_id or None, "user": user or None}


def _app_of(conn: Connection) -> str | None:
    """The Pusher app of ``conn``, "" for a native one, None for the echo's."""
    app = getattr(conn, "app", None)
    if app is not None:
        return str(app.id)
    return None if getattr(conn, "echo", False) else ""


def _channels_of(conn: Connection) -> list[str]:
    """``conn``'s hub names (a Pusher connection holds its Pusher names)."""
    app = getattr(conn, "app", None)
    names: Iterable[str] = conn.channels
    if app is not None:
        return [internal_name(app.id, name) for name in names]
    return list(names)
