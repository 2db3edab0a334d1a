"""The Pusher HTTP API: a request in, a typed request or an error out (no I/O).

The official server SDKs call (Pusher "HTTP API reference"):

* ``POST /apps/{id}/events`` -- one event to 1..``max_channels_per_trigger`` channels,
  optionally not to ``socket_id``, optionally answering ``info`` per channel;
* ``POST /apps/{id}/batch_events`` -- 1..``max_events_per_batch`` events;
* ``GET /apps/{id}/channels`` -- occupied channels, ``filter_by_prefix``, ``info``;
* ``GET /apps/{id}/channels/{name}`` -- one channel, ``info``;
* ``GET /apps/{id}/channels/{name}/users`` -- a presence channel's users;
* ``POST /users/{user}/terminate_connections`` (what the SDKs send: no app id, the signed
  ``auth_key`` names the app) or ``/apps/{id}/users/{user}/terminate_connections`` --
  close every connection signed in as the app's ``user``, cluster-wide.

:func:`decide` checks, in this order: the route (404), the app (404, or 403 when
disabled), the body size (413), the signature (401, :mod:`.signatures`), then the body
and parameters (400, and 413 for event data over ``max_event_data_bytes``). A refusal is
an :class:`ApiError`: the status and the JSON body ``{"error": ..., "code": status}``
Soketi answers with (Soketi ``src/http-handler.ts``). Nothing is published unless the
answer is a :class:`Trigger` or :class:`TriggerBatch`: every event of a batch is checked
before any is published.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from shardws.config import PusherAppConfig, PusherConfig
from shardws.pure.auth import user_id_error
from shardws.pure.pusher.channels import ChannelKind, channel_error, is_socket_id, kind_of
from shardws.pure.pusher.session import MAX_USER_ID_LENGTH
from shardws.pure.pusher.signatures import check_request

#: ``info`` attributes of ``GET /channels`` and ``GET /channels/{name}``, and of events.
INFO_ATTRIBUTES = frozenset({"user_count", "subscription_count"})

#: Room for the JSON around event data in a request body (names, channels, ``info``).
_BODY_OVERHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class ApiError:
    """Answer ``status`` with :attr:`body`; nothing was done."""

    status: int
    message: str

    @property
    def body(self) -> bytes:
        """The JSON error body: ``{"error": message, "code": status}``."""
        return json.dumps({"error": self.message, "code": self.status}).encode()


@dataclass(frozen=True, slots=True)
class Event:
    """One event to publish: ``data`` is the exact string the SDK sent (subscribers get
    it as is: ``wire.data_of_string``); not to the connection ``exclude`` (a socket id)
    if given; ``info`` the attributes to answer per channel."""

    name: str
    channels: tuple[str, ...]
    data: str
    exclude: str | None
    info: frozenset[str]


@dataclass(frozen=True, slots=True)
class Trigger:
    """``POST /apps/{id}/events``: publish ``event`` in ``app``'s channel space; answer
    ``{}``, or ``{"channels": {name: {attribute: n}}}`` when ``event.info`` is set."""

    app: PusherAppConfig
    event: Event


@dataclass(frozen=True, slots=True)
class TriggerBatch:
    """``POST /apps/{id}/batch_events``: publish ``events`` (in order); answer ``{}``, or
    ``{"batch": [{attribute: n}, ...]}`` (one entry per event) when any asks ``info``."""

    app: PusherAppConfig
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class ListChannels:
    """``GET /apps/{id}/channels``: the occupied channels whose names start with
    ``prefix``, with ``info`` attributes (cluster-wide counts)."""

    app: PusherAppConfig
    prefix: str
    info: frozenset[str]


@dataclass(frozen=True, slots=True)
class GetChannel:
    """``GET /apps/{id}/channels/{name}``: ``occupied`` and the ``info`` attributes."""

    app: PusherAppConfig
    channel: str
    info: frozenset[str]


@dataclass(frozen=True, slots=True)
class GetUsers:
    """``GET /apps/{id}/channels/{name}/users`` of a presence channel."""

    app: PusherAppConfig
    channel: str


@dataclass(frozen=True, slots=True)
class TerminateUser:
    """``POST [/apps/{id}]/users/{user}/terminate_connections``: close every connection
    signed in as ``app``'s ``user_id``; answer ``{}``."""

    app: PusherAppConfig
    user_id: str


ApiRequest = Trigger | TriggerBatch | ListChannels | GetChannel | GetUsers | TerminateUser


def max_body_bytes(app: PusherAppConfig) -> int:
    """The largest request body worth reading for ``app``: a full batch of events at the
    data limit, plus room for the JSON around them. A longer body is answered 413
    before it is read to the end."""
    return app.max_events_per_batch * app.max_event_data_bytes + _BODY_OVERHEAD


def decide(
    method: str, target: str, body: bytes, pusher: PusherConfig, now: float
) -> ApiRequest | ApiError:
    """What an HTTP API request asks, or why it is refused.

    ``target`` is the request target as received (path and query, not decoded: the SDKs
    sign the path they send), ``body`` the whole body, ``now`` unix seconds.
    """
    path, _, query = target.partition("?")
    parts = path.split("/")
    if len(parts) == 4 and not parts[0] and parts[1] == "users":
        # The SDKs' terminate_user_connections sends no app id: the signed auth_key
        # names the app (a wrong one fails the signature check below).
        route = _route(method, parts[1:])
        if isinstance(route, ApiError):
            return route
        key = next((v for k, v in parse_qsl(query) if k == "auth_key"), "")
        app = pusher.app_by_key(key)
        if app is None:
            return ApiError(404, f"No app has the key {key[:64]!r}.")
    else:
        # ["", "apps", id, resource, ...]
        if len(parts) < 4 or parts[0] or parts[1] != "apps":
            return ApiError(404, "Not found")
        route = _route(method, parts[3:])
        if isinstance(route, ApiError):
            return route
        app = pusher.app_by_id(unquote(parts[2]))
        if app is None:
            return ApiError(404, f"The app {unquote(parts[2])[:64]!r} could not be found.")
    if not app.enabled:
        return ApiError(403, "The app is disabled.")
    if len(body) > max_body_bytes(app):
        return ApiError(413, "The payload size is too big.")
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return ApiError(400, "Malformed query string")
    refused = check_request(
        method, path, params, body, app.key, app.signing_secret(), now, app.auth_timestamp_window
    )
    if refused is not None:
        return ApiError(401, refused.reason)
    args = dict(params)
    kind, channel = route
    if kind == "terminate":
        if user_id_error(channel) is not None or len(channel) > MAX_USER_ID_LENGTH:
            return ApiError(400, "The user id must be 1-128 characters, none a control one.")
        return TerminateUser(app, channel)
    if kind == "events":
        return _trigger(app, body)
    if kind == "batch_events":
        return _batch(app, body)
    info = _info(args.get("info", ""))
    if isinstance(info, ApiError):
        return info
    if kind == "channels":
        prefix = args.get("filter_by_prefix", "")
        # Pusher: user_count only when the listing is restricted to presence channels.
        if "user_count" in info and not prefix.startswith("presence-"):
            return ApiError(400, "user_count requires filter_by_prefix=presence-")
        return ListChannels(app, prefix, info)
    problem = channel_error(channel, app.max_channel_name_length)
    if problem is not None:
        return ApiError(400, problem)
    presence = kind_of(channel).kind is ChannelKind.PRESENCE
    if kind == "users":
        if not presence:
            return ApiError(400, "The channel must be a presence channel.")
        return GetUsers(app, channel)
    if "user_count" in info and not presence:
        return ApiError(400, "user_count is available for presence channels only")
    return GetChannel(app, channel, info)


def _route(method: str, rest: list[str]) -> tuple[str, str] | ApiError:
    """``(resource, channel)`` of the path after ``/apps/{id}/``."""
    routes = {
        ("POST", 1, "events"): "events",
        ("POST", 1, "batch_events"): "batch_events",
        ("GET", 1, "channels"): "channels",
        ("GET", 2, "channels"): "channel",
    }
    resource = routes.get((method.upper(), len(rest), rest[0]))
    if resource is not None:
        return resource, unquote(rest[1]) if len(rest) > 1 else ""
    if method.upper() == "GET" and len(rest) == 3 and rest[0] == "channels" and rest[2] == "users":
        return "users", unquote(rest[1])
    if len(rest) == 3 and rest[0] == "users" and rest[2] == "terminate_connections":
        if method.upper() != "POST":
            return ApiError(405, f"Method {method.upper()[:16]} not allowed here")
        return "terminate", unquote(rest[1])
    if any(key[1:] == (len(rest), rest[0]) for key in routes):
        return ApiError(405, f"Method {method.upper()[:16]} not allowed here")
    return ApiError(404, "Not found")


def _info(raw: str) -> frozenset[str] | ApiError:
    attributes = frozenset(a for a in raw.split(",") if a)
    unknown = attributes - INFO_ATTRIBUTES
    if unknown:
        return ApiError(400, f"info: unknown attribute {sorted(unknown)[0][:32]!r}")
    return attributes


def _json_body(body: bytes) -> dict[str, Any] | ApiError:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return ApiError(400, "The received data is incorrect: not JSON")
    if not isinstance(value, dict):
        return ApiError(400, "The received data is incorrect: not a JSON object")
    return value


def _trigger(app: PusherAppConfig, body: bytes) -> Trigger | ApiError:
    value = _json_body(body)
    if isinstance(value, ApiError):
        return value
    event = _event(app, value, batch=False)
    return event if isinstance(event, ApiError) else Trigger(app, event)


def _batch(app: PusherAppConfig, body: bytes) -> TriggerBatch | ApiError:
    value = _json_body(body)
    if isinstance(value, ApiError):
        return value
    batch = value.get("batch")
    if not isinstance(batch, list) or not batch:
        return ApiError(400, "The received data is incorrect: batch must be a non-empty list")
    if len(batch) > app.max_events_per_batch:
        return ApiError(
            400, f"Cannot batch-send more than {app.max_events_per_batch} messages at once"
        )
    events = []
    for item in batch:
        if not isinstance(item, dict):
            return ApiError(400, "The received data is incorrect: a batch entry is not an object")
        event = _event(app, item, batch=True)
        if isinstance(event, ApiError):
            return event
        events.append(event)
    return TriggerBatch(app, tuple(events))


def _event(app: PusherAppConfig, value: Mapping[str, Any], batch: bool) -> Event | ApiError:
    """One event of a trigger (``channels`` or ``channel``) or of a batch (``channel``)."""
    name, data = value.get("name"), value.get("data")
    if not isinstance(name, str) or not name:
        return ApiError(400, "The received data is incorrect: name must be a non-empty string")
    if len(name) > app.max_event_name_length:
        return ApiError(
            400, f"Event name is too long. Maximum allowed size is {app.max_event_name_length}."
        )
    if not isinstance(data, str):
        return ApiError(400, "The received data is incorrect: data must be a string")
    if "channels" in value and not batch:
        channels = value["channels"]
        if not isinstance(channels, list) or not channels:
            return ApiError(400, "The received data is incorrect: channels must be a list")
    elif "channel" in value:
        channels = [value["channel"]]
    else:
        return ApiError(400, "The received data is incorrect: channel or channels required")
    if len(channels) > app.max_channels_per_trigger:
        return ApiError(
            400, f"Cannot broadcast to more than {app.max_channels_per_trigger} channels at once"
        )
    for channel in channels:
        problem = channel_error(channel, app.max_channel_name_length)
        if problem is not None:
            return ApiError(400, problem)
    if len(channels) > 1 and any(kind_of(c).kind is ChannelKind.ENCRYPTED for c in channels):
        # Each encrypted channel has its own key: one ciphertext cannot serve two.
        return ApiError(400, "Cannot trigger to multiple channels when one is encrypted")
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > app.max_event_data_bytes:
        return ApiError(413, f"The event data should be at most {app.max_event_data_bytes} bytes.")
    exclude = value.get("socket_id")
    if exclude is not None and not is_socket_id(exclude):
        return ApiError(400, "The received data is incorrect: socket_id must look like 123.456")
    raw_info = value.get("info", "")
    if not isinstance(raw_info, str):
        return ApiError(400, "The received data is incorrect: info must be a string")
    info = _info(raw_info)
    if isinstance(info, ApiError):
        return info
    return Event(name, tuple(channels), data, exclude, info)


# ------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class ChannelCounts:
    """A channel's cluster-wide counts: subscriptions, and distinct users for presence."""

    subscription_count: int
    user_count: int | None = None

    def attributes(self, info: frozenset[str]) -> dict[str, int]:
        """The ``info`` attributes asked for that this channel has."""
        values = {"subscription_count": self.subscription_count, "user_count": self.user_count}
        return {name: n for name, n in values.items() if name in info and n is not None}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_trigger(event: Event, counts: Mapping[str, ChannelCounts]) -> bytes:
    """The answer to a :class:`Trigger`: ``{}`` without ``info``, else each channel's
    asked attributes (``counts`` by channel)."""
    if not event.info:
        return b"{}"
    return _dumps(
        {"channels": {c: counts[c].attributes(event.info) for c in event.channels if c in counts}}
    )


def encode_batch(events: tuple[Event, ...], counts: Mapping[str, ChannelCounts]) -> bytes:
    """The answer to a :class:`TriggerBatch`: ``{}`` when no event asks ``info``, else
    one entry per event, in order."""
    if not any(event.info for event in events):
        return b"{}"
    answers = []
    for event in events:
        channel_counts = counts.get(event.channels[0]) if event.info else None
        answers.append({} if channel_counts is None else channel_counts.attributes(event.info))
    return _dumps({"batch": answers})


def encode_channels(request: ListChannels, counts: Mapping[str, ChannelCounts]) -> bytes:
    """The answer to :class:`ListChannels`: the occupied channels of ``counts`` under the
    prefix, each with the asked attributes."""
    return _dumps(
        {
            "channels": {
                name: c.attributes(request.info)
                for name, c in sorted(counts.items())
                if name.startswith(request.prefix) and c.subscription_count > 0
            }
        }
    )


def encode_channel(request: GetChannel, counts: ChannelCounts) -> bytes:
    """The answer to :class:`GetChannel`."""
    return _dumps({"occupied": counts.subscription_count > 0, **counts.attributes(request.info)})


def encode_users(user_ids: list[str]) -> bytes:
    """The answer to :class:`GetUsers`: ``{"users": [{"id": ...}, ...]}``."""
    return _dumps({"users": [{"id": user_id} for user_id in user_ids]})
