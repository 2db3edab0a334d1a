"""Pusher webhooks, the decisions without I/O: what an event looks like, which events an
endpoint wants, how a batch is encoded and signed, which events are too old to send,
and how long to wait before a retry.

Pusher ("Webhooks" in the Channels docs) POSTs ``{"time_ms": t, "events": [...]}`` with
``X-Pusher-Key`` (the app key) and ``X-Pusher-Signature`` (hex HMAC-SHA256 of the body
with the app secret). The server SDKs' validators (pusher-http-python
``validate_webhook``) refuse a body whose ``time_ms`` is more than 300 s from their
clock, so an event is worth sending only within :data:`MAX_AGE` of when it happened.

Guarantees:

* :func:`encode_batch` and :func:`signature` produce what ``validate_webhook`` accepts
  (tested with the SDK), and :func:`signature` is over the exact bytes sent.
* :class:`Outbox` hands out events in the order they were put, at most ``batch_size``
  at a time, never one older than its ``max_age`` (at most :data:`MAX_AGE`; those are
  dropped and counted), and
  holds at most ``capacity`` events (the oldest dropped and counted first): a dead
  endpoint costs bounded memory.
* :func:`retry_delay` grows exponentially from :data:`FIRST_RETRY` to :data:`MAX_RETRY`.
* :func:`decode_message` raises ``ValueError`` (nothing else) for an inbox message that
  is not a webhook event :func:`encode_message` made, so the admin counts and skips it.

The sender (``shardws.server.webhooks``, in the admin process) and the events' sources
(the workers and the channels' owners) are described in docs/pusher.md, "Webhooks".
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardws.config import PUSHER_WEBHOOK_EVENTS, PusherWebhookConfig
from shardws.pure.control import encode_request
from shardws.pure.publication import Kind, Publication
from shardws.pure.pusher.channels import pusher_name

#: Seconds after an event happened during which its webhook may still be sent: the
#: server SDKs' validators refuse a ``time_ms`` more than 300 s away from their clock;
#: 10 s are kept for the request's own flight and the two clocks' difference.
MAX_AGE = 290.0
FIRST_RETRY = 1.0  # seconds before the first retry of a failed delivery
MAX_RETRY = 60.0  # the longest wait between retries

#: The event names Pusher sends.
EVENT_TYPES = frozenset(PUSHER_WEBHOOK_EVENTS)

#: The inbox op that carries one webhook event from its source to the host's admin.
OP = "pusher.webhook"


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One webhook event: ``name`` (one of :data:`EVENT_TYPES`) on ``channel`` (a Pusher
    name); ``user_id`` for member events and a presence channel's client events;
    ``event``, ``data`` (the client's JSON as text) and ``socket_id`` for client events."""

    name: str
    channel: str
    user_id: str | None = None
    event: str | None = None
    data: str | None = None
    socket_id: str | None = None

    def __post_init__(self) -> None:
        if self.name not in EVENT_TYPES:
            raise ValueError(f"webhook event name {self.name!r}: one of {sorted(EVENT_TYPES)}")

    def as_json(self) -> dict[str, Any]:
        """The event as Pusher sends it (absent fields left out)."""
        fields = {
            "name": self.name,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "socket_id": self.socket_id,
            "user_id": self.user_id,
        }
        return {key: value for key, value in fields.items() if value is not None}


def wanted(hook: PusherWebhookConfig, event: WebhookEvent) -> bool:
    """Whether the endpoint ``hook`` gets ``event``: one of its ``event_types``, on a
    channel its ``filter`` lets through."""
    where = hook.filter
    return (
        event.name in hook.event_types
        and event.channel.startswith(where.channel_name_starts_with)
        and event.channel.endswith(where.channel_name_ends_with)
    )


def encode_message(app_id: str, event: WebhookEvent, at_ms: int, sender: int) -> bytes:
    """The inbox payload (a notification: id 0) telling the host's admin that ``event``
    of app ``app_id`` happened at ``at_ms`` (wall clock, milliseconds)."""
    return encode_request(OP, 0, sender, {"app": app_id, "at_ms": at_ms, "event": event.as_json()})


_EVENT_FIELDS = ("event", "data", "socket_id", "user_id")


def decode_message(fields: Mapping[str, Any]) -> tuple[str, int, WebhookEvent]:
    """``(app id, at_ms, event)`` from a decoded ``pusher.webhook`` inbox message;
    ValueError naming the member at fault."""
    app_id, at_ms, body = fields.get("app"), fields.get("at_ms"), fields.get("event")
    if not isinstance(app_id, str) or not app_id:
        raise ValueError("app must be a non-empty string")
    if type(at_ms) is not int or at_ms < 0:
        raise ValueError("at_ms must be an integer >= 0")
    if not isinstance(body, dict):
        raise ValueError("event must be an object")
    name, channel = body.get("name"), body.get("channel")
    if not isinstance(name, str) or not isinstance(channel, str) or not channel:
        raise ValueError("event needs a string name and channel")
    extra = {key: body.get(key) for key in _EVENT_FIELDS}
    if not all(value is None or isinstance(value, str) for value in extra.values()):
        raise ValueError(f"event members {', '.join(_EVENT_FIELDS)} must be strings")
    return app_id, at_ms, WebhookEvent(name, channel, **extra)


def encode_batch(events: list[WebhookEvent], time_ms: int) -> bytes:
    """The body of one webhook request: ``{"time_ms": time_ms, "events": [...]}``."""
    body = {"time_ms": time_ms, "events": [event.as_json() for event in events]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature``: hex HMAC-SHA256 of ``body`` with the app secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first)."""
    if attempt < 1:
        raise ValueError("attempt must be >= 1")
    return min(FIRST_RETRY * 2.0 ** (attempt - 1), MAX_RETRY)


class Outbox:
    """The events waiting for one endpoint, oldest first, each with when it happened
    (wall-clock seconds, as the receiver's validator reckons); see the module doc for
    its bounds. ``max_age`` is at most :data:`MAX_AGE`."""

    __slots__ = ("_events", "batch_size", "capacity", "dropped_full", "dropped_old", "max_age")

    def __init__(self, batch_size: int, capacity: int, max_age: float = MAX_AGE) -> None:
        if batch_size < 1 or capacity < 1:
            raise ValueError("batch_size and capacity must be >= 1")
        if not 0 < max_age <= MAX_AGE:
            raise ValueError(f"max_age must be in (0, {MAX_AGE}]")
        self.batch_size = batch_size
        self.capacity = capacity
        self.max_age = max_age
        self._events: deque[tuple[float, WebhookEvent]] = deque()
        self.dropped_old = 0  # events older than max_age, never sent
        self.dropped_full = 0  # events dropped because the outbox was full

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: WebhookEvent, at: float) -> None:
        """Queue ``event``, which happened at ``at``; a full outbox drops its oldest."""
        if len(self._events) >= self.capacity:
            self._events.popleft()
            self.dropped_full += 1
        self._events.append((at, event))

    def take(self, now: float) -> list[tuple[float, WebhookEvent]]:
        """The next batch (at most ``batch_size`` ``(happened at, event)`` pairs, oldest
        first), removed from the outbox; events older than ``max_age`` at ``now`` are
        dropped first."""
        events = self._events
        while events and now - events[0][0] > self.max_age:
            events.popleft()
            self.dropped_old += 1
        batch: list[tuple[float, WebhookEvent]] = []
        while events and len(batch) < self.batch_size:
            batch.append(events.popleft())
        return batch


def batch_time_ms(batch: list[tuple[float, WebhookEvent]]) -> int:
    """A batch's ``time_ms``: when its oldest event happened. So the receiver's validator
    (300 s) refuses no batch younger than ``max_age``, and a retried batch keeps its
    age instead of looking new."""
    return int(batch[0][0] * 1000)


def member_event(channel: str, announcement: Publication) -> WebhookEvent:
    """The webhook event of a presence announcement on the internal channel ``channel``:
    ``member_added`` for a join, ``member_removed`` for a leave."""
    name = "member_added" if announcement.kind is Kind.JOIN else "member_removed"
    return WebhookEvent(name, pusher_name(channel), announcement.user)
