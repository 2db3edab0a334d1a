"""Pusher sessions: a connection's complete message in, one outcome out (no I/O).

The same contract as the native :mod:`shardws.pure.session`: the worker hands every
complete message of a Pusher connection, with the connection's :class:`PusherState`, to
:meth:`PusherSessions.command` and carries out the one outcome it returns; the session
never touches a socket, the hub, the bus or a clock it was not handed. It reuses the
native outcomes where they fit and adds the ones Pusher needs:

* :class:`~shardws.pure.session.Reply` -- send this text (``pusher:pong``,
  ``pusher:error``, ``pusher:subscription_error``).
* :class:`~shardws.pure.session.Close` -- close with this *native* code. A Pusher
  connection closes every time through :func:`.closecodes.for_native` (``pusher:error``,
  then the close frame with the Pusher code), whoever decided the close: one table.
* :class:`PusherSubscribe` -- join the channel (already recorded in the state) and
  answer ``subscription_succeeded`` once the subscription is live everywhere; a presence
  channel's owner decides the member limit and the once-per-user ``member_added``; a
  cache channel replays its last event or sends ``pusher:cache_miss``.
* :class:`PusherUnsubscribe` -- leave the channel (already removed from the state); no
  reply (Pusher sends none); for presence, the owner decides ``member_removed``.
* :class:`ClientEvent` -- publish a client event to the channel's other subscribers,
  never back to the sending connection.
* :class:`PusherSignin` -- the connection signed in (``pusher:signin``, its signature
  checked): register it as the user's, answer ``pusher:signin_success``.
* :class:`Nothing` -- nothing to do (``pusher:pong``; events not served).

Everything a message is checked against lives here: the message rate ([limits]), the
shape (:mod:`.wire`), channel names and kinds (:mod:`.channels`), channel auth
(:mod:`.signatures`), the app's switches and limits (``[[pusher.apps]]``), the
connection's subscriptions ([limits] subscriptions_per_connection).

Codes of replies where Pusher documents none follow Soketi (Laravel Reverb where Soketi
has no case); docs/pusher.md lists each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from shardws.config import LimitsConfig, PusherAppConfig
from shardws.core import TokenBucket
from shardws.pure.auth import user_id_error
from shardws.pure.protocol import CloseCode
from shardws.pure.pusher import wire
from shardws.pure.pusher.channels import (
    ChannelKind,
    ChannelType,
    channel_error,
    kind_of,
    user_channel,
)
from shardws.pure.pusher.closecodes import PusherCode
from shardws.pure.pusher.signatures import channel_auth_valid, user_auth_valid
from shardws.pure.session import Close, Count, Reply

#: Longest presence ``user_id`` (Pusher: "maximum 128 characters for user id").
MAX_USER_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """A presence subscription's member: ``user_info`` is compact raw JSON, or None."""

    user_id: str
    user_info: bytes | None


@dataclass(frozen=True, slots=True)
class PusherSubscribe:
    """Join ``channel`` of the connection's app; reply ``subscription_succeeded`` once
    live on every worker and host (for presence, with the members the owner returns;
    the owner refuses a user past ``max_presence_members``); then, for a cache channel,
    replay its last event or send ``pusher:cache_miss``."""

    channel: str
    type: ChannelType
    member: PresenceMember | None


@dataclass(frozen=True, slots=True)
class PusherUnsubscribe:
    """Leave ``channel``; for presence, tell the owner ``member`` left."""

    channel: str
    member: PresenceMember | None


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """Publish ``event`` with raw JSON ``data`` to ``channel``'s subscribers except the
    connection ``origin`` (its socket id); ``user_id`` is the sender's on a presence
    channel (Pusher adds it to the event), None elsewhere."""

    channel: str
    event: str
    data: bytes
    user_id: str | None
    origin: str


@dataclass(frozen=True, slots=True)
class Nothing:
    """Nothing to send or do; log ``log`` if given."""

    log: str | None = None


@dataclass(frozen=True, slots=True)
class PusherSignin:
    """The connection signed in as ``user_id`` (recorded in the state): register it for
    the user's ``terminate_connections``, then answer ``pusher:signin_success`` with
    ``user_data`` (the signed string) once that registration is live cluster-wide."""

    user_id: str
    user_data: str


PusherOutcome = (
    Reply | Close | PusherSubscribe | PusherUnsubscribe | ClientEvent | PusherSignin | Nothing
)


class PusherState(Protocol):
    """One Pusher connection's state (kept on the connection; only the session changes
    it): its app, its socket id, the user it signed in as (``""`` until
    ``pusher:signin``), its channels (with the presence member where it has one), its
    message bucket and strikes ([limits]) and its client-event bucket."""

    app: PusherAppConfig
    socket_id: str
    user_id: str
    channels: dict[str, PresenceMember | None]
    bucket: TokenBucket
    strikes: int
    client_event_bucket: TokenBucket


def _bad_input(reason: str) -> Reply:
    # Pusher gives no code for malformed input (Soketi ignores it): the reason, no code.
    return Reply(wire.encode_error(None, reason), Count.PROTOCOL_ERRORS, reason)


def _client_event_error(code: PusherCode, message: str) -> Reply:
    return Reply(wire.encode_error(int(code), message), Count.PROTOCOL_ERRORS)


class PusherSessions:
    """The Pusher protocol's rules for the sessions of one worker (see the module doc)."""

    __slots__ = ("_limits",)

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = limits

    def new_bucket(self, now: float) -> TokenBucket:
        """A new connection's message bucket ([limits] commands_per_second and
        command_burst, as for native connections), full at ``now``."""
        return TokenBucket(self._limits.commands_per_second, self._limits.command_burst, now)

    @staticmethod
    def new_client_event_bucket(app: PusherAppConfig, now: float) -> TokenBucket:
        """A new connection's client-event bucket: ``max_client_events_per_second`` per
        second, with that burst, full at ``now``."""
        rate = app.max_client_events_per_second
        return TokenBucket(rate, rate, now)

    def command(
        self, state: PusherState, payload: bytes, binary: bool, now: float
    ) -> PusherOutcome:
        """What to do with one complete message of the connection whose state is
        ``state``, received at ``now`` (monotonic)."""
        if not state.bucket.take(now):
            return self._flooding(state)
        state.strikes = 0
        if binary:
            return _bad_input("Binary frames are not supported")
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            return Close(
                CloseCode.INVALID_TEXT, "invalid UTF-8", Count.PROTOCOL_ERRORS, "invalid UTF-8"
            )
        message = wire.decode(text)
        if isinstance(message, wire.BadMessage):
            return _bad_input(message.reason)
        if isinstance(message, wire.Ping):
            return Reply(wire.encode_pong())
        if isinstance(message, wire.Pong):
            return Nothing()
        if isinstance(message, wire.SubscribeRequest):
            return self._subscribe(state, message)
        if isinstance(message, wire.UnsubscribeRequest):
            return self._unsubscribe(state, message)
        if isinstance(message, wire.ClientEventRequest):
            return self._client_event(state, message, now)
        if isinstance(message, wire.SigninRequest):
            return self._signin(state, message)
        # Soketi ignores events it does not serve; so does this session, with a log line.
        return Nothing(f"event not served: {message.event[:64]!r}")

    def _flooding(self, state: PusherState) -> Reply | Close:
        state.strikes += 1
        if state.strikes >= self._limits.abuse_close_after:
            return Close(
                CloseCode.TOO_MANY_REQUESTS,
                "too many messages",
                Count.RATE_LIMITED,
                "message flood, closing",
                stop_reading=True,
            )
        return Reply(wire.encode_error(None, "Too many messages"), Count.RATE_LIMITED)

    # -- subscriptions -----------------------------------------------------------------

    def _subscribe(self, state: PusherState, request: wire.SubscribeRequest) -> PusherOutcome:
        app, channel = state.app, request.channel
        problem = channel_error(channel, app.max_channel_name_length)
        if problem is not None:
            # Soketi: a subscription_error on the channel, type LimitReached, status 4009.
            kind = "LimitReached" if len(channel) > app.max_channel_name_length else "BadName"
            return Reply(
                wire.encode_subscription_error(channel[:256], kind, problem, 4009),
                Count.PROTOCOL_ERRORS,
            )
        if channel in state.channels:
            return Nothing(f"already subscribed to {channel}")
        if len(state.channels) >= self._limits.subscriptions_per_connection:
            limit = self._limits.subscriptions_per_connection
            return Reply(
                wire.encode_subscription_error(
                    channel, "LimitReached", f"At most {limit} subscriptions per connection", 4100
                )
            )
        channel_type = kind_of(channel)
        member: PresenceMember | None = None
        if channel_type.kind is ChannelKind.USER and channel != user_channel(state.user_id):
            return Reply(
                wire.encode_subscription_error(
                    channel, "AuthError", "The connection is not signed in as this user", 401
                ),
                Count.AUTH_FAILURES,
            )
        if channel_type.needs_auth:
            presence = channel_type.kind is ChannelKind.PRESENCE
            if presence and request.channel_data is None:
                return _bad_input("Invalid message format: a presence channel needs channel_data")
            data = request.channel_data if presence else None
            if request.auth is None or not channel_auth_valid(
                request.auth, app.key, app.signing_secret(), state.socket_id, channel, data
            ):
                return Reply(
                    wire.encode_subscription_error(
                        channel,
                        "AuthError",
                        "Invalid signature: the connection is unauthorized",
                        401,
                    ),
                    Count.AUTH_FAILURES,
                )
            if presence:
                assert data is not None
                parsed = _presence_member(channel, data, app.max_presence_info_bytes)
                if isinstance(parsed, Reply):
                    return parsed
                member = parsed
        state.channels[channel] = member
        return PusherSubscribe(channel, channel_type, member)

    def _unsubscribe(self, state: PusherState, request: wire.UnsubscribeRequest) -> PusherOutcome:
        channel = request.channel
        if channel not in state.channels:
            return Nothing()
        return PusherUnsubscribe(channel, state.channels.pop(channel))

    # -- user authentication ------------------------------------------------------------

    def _signin(self, state: PusherState, request: wire.SigninRequest) -> PusherOutcome:
        """``pusher:signin``: Pusher closes a connection whose signin fails with 4009
        (the native 4001 maps to it); a connection signs in once."""
        if state.user_id:
            return _bad_input("The connection is signed in already")
        app = state.app
        if not user_auth_valid(
            request.auth, app.key, app.signing_secret(), state.socket_id, request.user_data
        ):
            return Close(
                CloseCode.UNAUTHORIZED,
                "Invalid signature",
                Count.AUTH_FAILURES,
                "pusher:signin with a bad signature",
            )
        user_id = _signed_in_user(request.user_data)
        if user_id is None:
            return Close(
                CloseCode.UNAUTHORIZED,
                "user_data must be a JSON object with an id string",
                Count.AUTH_FAILURES,
                "pusher:signin without a user id",
            )
        state.user_id = user_id
        return PusherSignin(user_id, request.user_data)

    # -- client events -----------------------------------------------------------------

    def _client_event(
        self, state: PusherState, request: wire.ClientEventRequest, now: float
    ) -> PusherOutcome:
        app, channel = state.app, request.channel
        if not app.client_events:
            return _client_event_error(
                PusherCode.CLIENT_EVENT_REJECTED, "The app does not have client messaging enabled."
            )
        if channel_error(channel, app.max_channel_name_length) is not None or not (
            kind_of(channel).allows_client_events
        ):
            return _client_event_error(
                PusherCode.UNAUTHORIZED,
                "Client events are only allowed on private and presence channels.",
            )
        if channel not in state.channels:
            return _client_event_error(
                PusherCode.UNAUTHORIZED, "The client is not a member of the specified channel."
            )
        if len(request.event) > app.max_event_name_length:
            return _client_event_error(
                PusherCode.CLIENT_EVENT_REJECTED,
                f"Event name is too long. Maximum allowed size is {app.max_event_name_length}.",
            )
        if len(request.data) > app.max_event_data_bytes:
            return _client_event_error(
                PusherCode.CLIENT_EVENT_REJECTED,
                f"The event data should be at most {app.max_event_data_bytes} bytes.",
            )
        if not state.client_event_bucket.take(now):
            return Reply(
                wire.encode_error(
                    int(PusherCode.CLIENT_EVENT_REJECTED),
                    "The rate limit for sending client events exceeded the quota.",
                ),
                Count.RATE_LIMITED,
            )
        member = state.channels[channel]
        user_id = member.user_id if member is not None else None
        return ClientEvent(channel, request.event, request.data, user_id, state.socket_id)


def _signed_in_user(user_data: str) -> str | None:
    """The ``id`` of a signed ``user_data``: a JSON object whose ``id`` is a string of
    1-128 characters without control characters (Pusher: "id: required, string"); None
    when it has none."""
    try:
        data = json.loads(user_data)
    except (ValueError, RecursionError):
        return None
    user_id = data.get("id") if isinstance(data, dict) else None
    if user_id_error(user_id) is not None:
        return None
    assert isinstance(user_id, str)
    return user_id if len(user_id) <= MAX_USER_ID_LENGTH else None


def _presence_member(
    channel: str, channel_data: str, max_info_bytes: int
) -> PresenceMember | Reply:
    """The member a (signed) ``channel_data`` names: ``{"user_id": ..., "user_info": ...}``
    with a string (or integer, as some SDKs send) user id of 1-128 characters and
    ``user_info`` of at most ``max_info_bytes`` bytes of JSON; else the error reply."""
    try:
        data = json.loads(channel_data)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return _bad_input("Invalid message format: channel_data must be a JSON object")
    user_id = data.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        return _bad_input(
            f"Invalid message format: channel_data.user_id must be a string of 1-"
            f"{MAX_USER_ID_LENGTH} characters"
        )
    info = data.get("user_info")
    if info is None:
        return PresenceMember(user_id, None)
    try:
        encoded = json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = encoded.encode("utf-8", "surrogatepass")
    except ValueError:
        return _bad_input("Invalid message format: channel_data.user_info is not valid JSON")
    if len(raw) > max_info_bytes:
        # Soketi: a subscription_error on the channel, LimitReached, status 4301.
        return Reply(
            wire.encode_subscription_error(
                channel,
                "LimitReached",
                f"The maximum size for a channel member is {max_info_bytes} bytes.",
                int(PusherCode.CLIENT_EVENT_REJECTED),
            ),
            Count.PROTOCOL_ERRORS,
        )
    return PresenceMember(user_id, raw)
