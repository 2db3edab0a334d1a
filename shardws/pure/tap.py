"""The event tap's decisions, with no I/O: what a tap watches, how a worker keeps it
bounded, and the messages between the admin and the workers (docs/api.md, "Event tap").

A tap watches one channel or a prefix of channel names, native or one Pusher app's
(internal names ``|app|channel``, ``pure.pusher.channels``). The admin opens it on every
ready worker with a **lease** and renews it every ``LEASE / 3`` seconds while a viewer
reads its stream; a worker that is not renewed within ``LEASE`` forgets the tap by
itself, so a tap whose viewer or admin is gone leaves nothing behind.

A worker sends what a tap sees to the admin's inbox in batches, one message per tap at
most every ``FLUSH_INTERVAL`` seconds, under a **rate cap** (``Sampling``): at most
``rate`` events a second per tap per worker; past it, events are sampled "1 in N" (N
from the last second's count) and the rest dropped and counted. Delivery never waits for
a tap: an event is a dict appended to a list, and what is sent is sent on a timer. (A
message per loop iteration cost a hot channel's server 18% of its deliveries per CPU
second: docs/benchmarks.md.)

Messages (inbox requests, ``pure.control``'s envelope):

==============  =====================================  ==========================================
op              request members                        reply members
==============  =====================================  ==========================================
``tap.open``    ``tap`` (id), ``target`` (name),       ``open`` (taps open in the worker),
                ``prefix`` (bool), ``lease`` (s),      ``work`` (events it looked at, ever)
                ``rate`` (events/s)
``tap.close``   ``tap``                                as ``tap.open``
``tap.status``  —                                      as ``tap.open``
``tap.events``  (a notification to the admin, id 0):   —
                ``tap``, ``every`` (N of "1 in N"),
                ``dropped`` (since the last message),
                ``events`` (list of event objects)
==============  =====================================  ==========================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardws.pure import wiredata
from shardws.pure.pusher.channels import app_of, app_prefix, internal_name, is_internal, pusher_name

OPEN = "tap.open"
CLOSE = "tap.close"
STATUS = "tap.status"
EVENTS = "tap.events"
OPS = frozenset({OPEN, CLOSE, STATUS})

#: Seconds a worker keeps a tap that was not renewed.
LEASE = 10.0
#: Events a second a tap reports per worker before it samples.
RATE = 200
#: Taps a worker holds at once; an open past it is refused.
MAX_TAPS = 32
#: Bytes of a payload shown in an event (the rest is cut, its size given).
PREVIEW_BYTES = 200
#: Seconds a worker's batch waits for more events before it is sent; the admin writes a
#: tap's stream at most this often too.
FLUSH_INTERVAL = 0.25
#: Events in one batch at most (a full batch takes no more until it is sent).
BATCH = 500

#: The kinds of event a tap reports.
PUBLISH = "publish"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
CONNECT = "connect"
DISCONNECT = "disconnect"


class BadTarget(ValueError):
    """A tap request naming no valid target; the message says what is valid."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a tap watches: the hub name ``name`` (a native channel or a Pusher internal
    name), or every channel whose hub name starts with it when ``prefix``."""

    name: str
    prefix: bool

    def matches(self, channel: str) -> bool:
        if self.prefix:
            return channel.startswith(self.name)
        return channel == self.name

    def sees_connections(self, app: str) -> bool:
        """Whether connects (and disconnects of connections on no watched channel) are
        shown: a tap of every native channel (prefix "", ``app`` "") or of every channel
        of Pusher app ``app``."""
        if not self.prefix:
            return False
        return self.name == (app_prefix(app) if app else "")

    def describe(self) -> dict[str, Any]:
        """The target as the stream shows it: ``{"app", "channel" | "prefix"}``."""
        app = app_of(self.name) if is_internal(self.name) else None
        name = pusher_name(self.name) if app is not None else self.name
        return {"app": app, ("prefix" if self.prefix else "channel"): name}


def parse_target(query: Mapping[str, str], apps: frozenset[str]) -> Target:
    """The target of ``GET /api/tap``'s query: ``channel=NAME`` or ``prefix=TEXT``
    (``prefix=`` empty: every channel), with ``app=ID`` for a Pusher app's channels
    (``apps``: the configured app ids). Raises :class:`BadTarget`."""
    channel, prefix, app = query.get("channel"), query.get("prefix"), query.get("app")
    if (channel is None) == (prefix is None):
        raise BadTarget("give one of channel=NAME or prefix=TEXT (prefix= alone: every channel)")
    name = channel if channel is not None else prefix
    assert name is not None
    if channel is not None and not channel:
        raise BadTarget("channel= is empty: give a channel name, or use prefix=")
    if len(name) > 255:
        raise BadTarget(f"a channel name or prefix has at most 255 characters, not {len(name)}")
    if app is not None:
        if app not in apps:
            raise BadTarget(f"app={app!r} is not a configured [pusher] app: {sorted(apps)}")
        return Target(internal_name(app, name), prefix is not None)
    if is_internal(name):
        raise BadTarget(f"{name!r} starts with '|': name a Pusher app's channel with app=ID")
    return Target(name, prefix is not None)


def encode_open(tap: int, target: Target, lease: float, rate: int) -> dict[str, Any]:
    """The members of a ``tap.open`` request."""
    return {
        "tap": tap,
        "target": target.name,
        "prefix": target.prefix,
        "lease": lease,
        "rate": rate,
    }


@dataclass(frozen=True, slots=True)
class OpenRequest:
    tap: int
    target: Target
    lease: float
    rate: int
    admin: int  # the member whose inbox gets the events (the request's reply_to)


def decode_open(request: Mapping[str, Any]) -> OpenRequest:
    """A ``tap.open`` request's members; ValueError names the one at fault."""
    tap, target, prefix = request.get("tap"), request.get("target"), request.get("prefix")
    lease, rate, admin = request.get("lease"), request.get("rate"), request.get("reply_to")
    if not isinstance(tap, int) or isinstance(tap, bool):
        raise ValueError(f"tap must be an integer id, not {tap!r}")
    if not isinstance(target, str) or not isinstance(prefix, bool):
        raise ValueError("target must be a string and prefix a boolean")
    if not isinstance(lease, int | float) or not 0 < lease <= 300:
        raise ValueError(f"lease must be seconds in (0, 300], not {lease!r}")
    if not isinstance(rate, int) or not 1 <= rate <= 100_000:
        raise ValueError(f"rate must be an integer in [1, 100000], not {rate!r}")
    if not isinstance(admin, int):
        raise ValueError(f"reply_to must be a member id, not {admin!r}")
    return OpenRequest(tap, Target(target, prefix), float(lease), rate, admin)


class Sampling:
    """A tap's rate cap in one worker: :meth:`take` says whether an event seen at
    ``now`` is reported. Within a second at most ``rate`` are; while the previous second
    saw more than ``rate``, one in ``every`` (its count over ``rate``, rounded up) is,
    spread over the second instead of the first ``rate`` only. ``dropped`` counts the
    others until the caller reads and resets it."""

    __slots__ = ("_rate", "_second", "_seen", "_sent", "dropped", "every")

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._second = -1
        self._seen = 0
        self._sent = 0
        self.every = 1
        self.dropped = 0

    def take(self, now: float) -> bool:
        second = int(now)
        if second != self._second:
            previous = self._seen if second == self._second + 1 else 0
            self.every = max(1, math.ceil(previous / self._rate))
            self._second, self._seen, self._sent = second, 0, 0
        self._seen += 1
        if self._sent < self._rate and (self._seen - 1) % self.every == 0:
            self._sent += 1
            return True
        self.dropped += 1
        return False


def preview(data: bytes) -> tuple[str, int]:
    """The first ``PREVIEW_BYTES`` of carried publication ``data`` (``pure.wiredata``) as
    JSON text (cut on a character, an ellipsis when cut) and its size in bytes (a
    MessagePack publisher's bytes are shown as the JSON its JSON subscribers get)."""
    if wiredata.is_msgpack(data):
        size = len(data) - 1
        try:
            member = wiredata.json_member(data)
        except ValueError:
            return "(MessagePack data)", size
        data = member.partition(b":")[2]
    else:
        size = len(data)
    if len(data) <= PREVIEW_BYTES:
        return data.decode("utf-8", "replace"), size
    return data[:PREVIEW_BYTES].decode("utf-8", "ignore") + "…", size
