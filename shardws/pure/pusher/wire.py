"""The Pusher wire format: client messages decoded, server messages encoded (no I/O).

Every message is one JSON object ``{"event": ..., "channel": ..., "data": ...}`` in one
WebSocket text frame ("Pusher Channels Protocol", versions 4 to 7: the messages are the
same, what differs is ``versions``'s).

Guarantees of :func:`decode`: for any text it returns one :class:`ClientMessage` or a
:class:`BadMessage` whose reason is safe to send back -- it never raises. It checks the
message's shape only; names, limits and permissions are the session's.

Guarantees of the encoders: each returns one complete UTF-8 JSON object. Where Pusher
sends ``data`` as a JSON-encoded string (``connection_established``,
``subscription_succeeded``, ``member_added``/``removed``) it is one; an event's data is
embedded verbatim (:func:`encode_event`), so subscribers get the publisher's data
byte for byte: the exact string a server SDK gave, or a client event's JSON value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Ping:
    """``pusher:ping``: answer ``pusher:pong``."""


@dataclass(frozen=True, slots=True)
class Pong:
    """``pusher:pong``: the answer to a server ``pusher:ping``."""


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """``pusher:subscribe``: ``auth`` and ``channel_data`` exactly as sent (the signature
    covers the channel_data string byte for byte), None when absent."""

    channel: str
    auth: str | None
    channel_data: str | None


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """``pusher:unsubscribe``."""

    channel: str


@dataclass(frozen=True, slots=True)
class ClientEventRequest:
    """A ``client-*`` event: ``data`` is its JSON value re-encoded compactly (raw JSON)."""

    event: str
    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class SigninRequest:
    """``pusher:signin``: ``user_data`` exactly as sent (the signature covers it byte for
    byte) and its ``auth``."""

    auth: str
    user_data: str


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other event: not served."""

    event: str


@dataclass(frozen=True, slots=True)
class BadMessage:
    """Not a Pusher message, or a malformed one; ``reason`` is safe to send back."""

    reason: str


ClientMessage = (
    Ping
    | Pong
    | SubscribeRequest
    | UnsubscribeRequest
    | ClientEventRequest
    | SigninRequest
    | OtherEvent
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _data_object(message: dict[str, Any]) -> dict[str, Any] | None:
    """The ``data`` member as an object; protocol 7 sends one, and a JSON string holding
    one (what some older clients send) is accepted too."""
    data = message.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):  # deep nesting: as the outer message's
            return None
    return data if isinstance(data, dict) else None


def decode(text: str) -> ClientMessage | BadMessage:
    """The client message ``text`` holds, or why it is not one."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return BadMessage("Invalid message format: not JSON")
    if not isinstance(message, dict):
        return BadMessage("Invalid message format: not a JSON object")
    event = message.get("event")
    if not isinstance(event, str):
        return BadMessage("Invalid message format: event must be a string")
    if event == "pusher:ping":
        return Ping()
    if event == "pusher:pong":
        return Pong()
    if event in ("pusher:subscribe", "pusher:unsubscribe"):
        data = _data_object(message)
        if data is None or not isinstance(data.get("channel"), str):
            return BadMessage(f"Invalid message format: {event} needs data.channel")
        if event == "pusher:unsubscribe":
            return UnsubscribeRequest(data["channel"])
        auth, channel_data = data.get("auth"), data.get("channel_data")
        if auth is not None and not isinstance(auth, str):
            return BadMessage("Invalid message format: auth must be a string")
        if channel_data is not None and not isinstance(channel_data, str):
            return BadMessage("Invalid message format: channel_data must be a string")
        return SubscribeRequest(data["channel"], auth, channel_data)
    if event == "pusher:signin":
        data = _data_object(message)
        if (
            data is None
            or not isinstance(data.get("auth"), str)
            or not isinstance(data.get("user_data"), str)
        ):
            return BadMessage("Invalid message format: pusher:signin needs auth and user_data")
        return SigninRequest(data["auth"], data["user_data"])
    if event.startswith("client-"):
        channel = message.get("channel")
        if not isinstance(channel, str):
            return BadMessage("Invalid message format: a client event needs a channel")
        if "data" not in message:
            return BadMessage("Invalid message format: a client event needs data")
        try:
            data_json = _dumps(message["data"]).encode()
        except ValueError:  # NaN or Infinity: not JSON any client can read
            return BadMessage("Invalid message format: data is not valid JSON")
        return ClientEventRequest(event, channel, data_json)
    return OtherEvent(event)


# ------------------------------------------------------------------------- encoders


def encode_connection_established(socket_id: str, activity_timeout: int | None) -> bytes:
    """The first message on a connection; pusher-js refuses a handshake without
    ``activity_timeout`` (seconds), which protocols below 7 do not have (None: left out,
    ``versions.handshake_has_activity_timeout``)."""
    fields: dict[str, Any] = {"socket_id": socket_id}
    if activity_timeout is not None:
        fields["activity_timeout"] = activity_timeout
    data = _dumps(fields)
    return _dumps({"event": "pusher:connection_established", "data": data}).encode()


def encode_error(code: int | None, message: str) -> bytes:
    """``pusher:error``; ``code`` None for bad input Pusher gives no code for."""
    return _dumps({"event": "pusher:error", "data": {"code": code, "message": message}}).encode()


def encode_signin_success(user_data: str) -> bytes:
    """``pusher:signin_success``: its data string holds ``{"user_data": ...}``, the
    signed-in ``user_data`` string as the client sent it (pusher-js parses it)."""
    data = _dumps({"user_data": user_data})
    return _dumps({"event": "pusher:signin_success", "data": data}).encode()


def encode_ping() -> bytes:
    """``pusher:ping`` from the server (pusher-js answers ``pusher:pong``)."""
    return b'{"event":"pusher:ping","data":{}}'


def encode_pong() -> bytes:
    """``pusher:pong``, the answer to a client's ``pusher:ping``."""
    return b'{"event":"pusher:pong","data":{}}'


def encode_subscription_succeeded(channel: str) -> bytes:
    """``pusher_internal:subscription_succeeded`` of a public, private or encrypted
    channel (``channel`` valid, so it needs no escaping)."""
    return _dumps(
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}
    ).encode()


def encode_presence_succeeded(channel: str, members: Iterable[tuple[str, bytes | None]]) -> bytes:
    """``pusher_internal:subscription_succeeded`` of a presence channel: ``members`` are
    ``(user_id, user_info raw JSON or None)``, one per user; the data string holds
    ``{"presence": {"ids": [...], "hash": {id: info}, "count": n}}``."""
    ids: list[str] = []
    hash_: dict[str, Any] = {}
    for user_id, info in members:
        if user_id not in hash_:
            ids.append(user_id)
        hash_[user_id] = None if info is None else json.loads(info)
    data = _dumps({"presence": {"ids": ids, "hash": hash_, "count": len(ids)}})
    return _dumps(
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data}
    ).encode()


def encode_subscription_error(channel: str, error_type: str, error: str, status: int) -> bytes:
    """``pusher:subscription_error`` (pusher-js emits it on the channel)."""
    data = {"type": error_type, "error": error, "status": status}
    return _dumps({"event": "pusher:subscription_error", "channel": channel, "data": data}).encode()


def encode_member_added(channel: str, user_id: str, user_info: bytes | None) -> bytes:
    """``pusher_internal:member_added``: once per user (its first connection)."""
    info = None if user_info is None else json.loads(user_info)
    data = _dumps({"user_id": user_id, "user_info": info})
    return _dumps(
        {"event": "pusher_internal:member_added", "channel": channel, "data": data}
    ).encode()


def encode_member_removed(channel: str, user_id: str) -> bytes:
    """``pusher_internal:member_removed``: once per user (its last connection gone)."""
    data = _dumps({"user_id": user_id})
    return _dumps(
        {"event": "pusher_internal:member_removed", "channel": channel, "data": data}
    ).encode()


def encode_cache_miss(channel: str) -> bytes:
    """``pusher:cache_miss``: a cache channel had no event to replay on subscribe."""
    return _dumps({"event": "pusher:cache_miss", "channel": channel}).encode()


def encode_event(event: str, channel: str, data: bytes, user_id: str | None = None) -> bytes:
    """An event for subscribers: ``data`` is raw JSON embedded verbatim (a JSON string for
    HTTP API events: :func:`data_of_string`); ``user_id`` is the sender's on a presence
    channel's client event (Pusher adds it there)."""
    head = _dumps({"event": event, "channel": channel}).encode()[:-1]
    tail = b"}" if user_id is None else b',"user_id":' + _dumps(user_id).encode() + b"}"
    return head + b',"data":' + data + tail


def data_of_string(data: str) -> bytes:
    """The raw JSON of an HTTP API event's ``data`` string (it stays a string: Pusher
    hands subscribers the exact string the server SDK sent)."""
    return _dumps(data).encode()
