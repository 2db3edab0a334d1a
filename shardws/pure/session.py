"""Native-protocol sessions: a connection's complete message in, one outcome out (no I/O).

The worker hands every complete message of a native connection, with that connection's
session state (:class:`SessionState`), to :meth:`Sessions.command` and carries out the
one outcome it returns; the session never touches a socket, the hub, the bus or a clock
it was not handed. Everything a command
is checked against lives here: the rate limit, the command's shape, the connection's
identity, the channel's name and namespace, permissions and tokens, per-connection and
per-channel limits. The worker does what only it can: join the hub, publish on the bus,
ask a channel's owner, write to the socket.

Outcomes (each a small frozen value):

* :class:`Reply` — send this text message; ``count``/``log`` name a counter and a line.
* :class:`Close` — close the connection with this code.
* :class:`Connected` — a ``connect`` succeeded: start serving the identity.
* :class:`Subscribe`, :class:`Unsubscribe`, :class:`Publish`, :class:`Read` — the
  checked request; the worker carries it out and sends the reply (``Subscribe`` only
  once the subscription is live on every worker and host).

A connection's session state is kept on the connection itself (no object more per
connection): its identity (None until a ``connect``), its subscribed channels, its
command token bucket and its count of consecutive rate-limited commands. Only
:meth:`Sessions.command` changes them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shardws.config import Config, NamespaceConfig
from shardws.core import BadEnvelope, Envelope, InvalidUTF8, TokenBucket, parse_envelope
from shardws.pure import msgpackwire, protocol
from shardws.pure.auth import (
    Authenticator,
    AuthFailure,
    Identity,
    TokenExpired,
    may_subscribe,
    user_only_members,
)
from shardws.pure.delta import parse_delta
from shardws.pure.history import Position
from shardws.pure.protocol import CloseCode, ErrorCode


class Count(enum.Enum):
    """A counter an outcome adds one to (the worker maps it to its scoreboard column)."""

    PROTOCOL_ERRORS = "protocol_errors"
    AUTH_FAILURES = "auth_failures"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``payload`` to the client; count ``count`` and log ``log`` if given."""

    payload: bytes
    count: Count | None = None
    log: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code`` and ``reason`` (``stop_reading``: nothing more
    is read from it); count ``count`` and log ``log`` if given."""

    code: int
    reason: str
    count: Count | None = None
    log: str | None = None
    stop_reading: bool = False


@dataclass(frozen=True, slots=True)
class Connected:
    """A ``connect`` authenticated the connection as ``identity``: stop its connect
    timer, register it for its user's messages and send ``reply`` once that is live."""

    reply: bytes
    identity: Identity


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``channel`` (already counted in the session's channels); recover
    from ``since`` in a history namespace. Reply once live."""

    command_id: int | None
    channel: str
    options: NamespaceConfig
    since: Position | None
    delta: str | None = None  # "fossil": publications as deltas (``pure.delta``)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Leave ``channel`` (already removed from the session's channels); the reply is
    ``reply``."""

    channel: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``data`` (carried data, ``pure.wiredata``: JSON text or tagged
    MessagePack) to ``channel``; in a history namespace through the channel's owner with
    the idempotency key ``idem``. The worker replies."""

    command_id: int | None
    channel: str
    data: bytes
    options: NamespaceConfig
    idem: str | None


@dataclass(frozen=True, slots=True)
class Read:
    """``history`` (``args``), ``presence`` or ``presence_stats`` of ``channel``, to be
    answered by the worker (from the channel's owner or every worker)."""

    command_id: int | None
    op: str
    channel: str
    args: dict[str, Any]


Outcome = Reply | Close | Connected | Subscribe | Unsubscribe | Publish | Read


def _error(command_id: int | None, code: ErrorCode, message: str) -> Reply:
    return Reply(protocol.encode_error(command_id, code, message))


def _token_of(raw: bytes | None) -> str | None:
    if raw is None or not raw.startswith(b'"'):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def identity_reply(command_id: int | None, identity: Identity) -> bytes:
    """The ``connect``/``refresh`` reply: ``expires`` is integer unix seconds, as
    docs/protocol.md promises (a fractional JWT ``exp`` is rounded down, so a client
    refreshing by it is never late); null for an anonymous connection."""
    expires = identity.expires_at
    return protocol.encode_ok(
        command_id, user=identity.user, expires=None if expires is None else int(expires)
    )


class SessionState(Protocol):
    """One connection's native-protocol state (the worker's connections have it)."""

    identity: Identity | None
    channels: set[str]
    bucket: TokenBucket
    strikes: int
    #: The connection chose MessagePack (``pure.msgpackwire``): binary frames only.
    msgpack: bool


class Sessions:
    """The native protocol's rules for the sessions of one worker (see the module doc).

    ``subscribers(channel)`` must return the channel's local subscriber count (for
    ``max_subscribers``)."""

    __slots__ = ("_auth", "_config", "_subscribers")

    def __init__(
        self, config: Config, auth: Authenticator, subscribers: Callable[[str], int]
    ) -> None:
        self._config = config
        self._auth = auth
        self._subscribers = subscribers

    def new_bucket(self, now: float) -> TokenBucket:
        """A new connection's command bucket (``[limits] commands_per_second`` and
        ``command_burst``), full at ``now``."""
        limits = self._config.limits
        return TokenBucket(limits.commands_per_second, limits.command_burst, now)

    def command(self, state: SessionState, payload: bytes, binary: bool, now: float) -> Outcome:
        """What to do with one complete message of the connection whose state is
        ``state``, received at ``now`` (monotonic)."""
        if not state.bucket.take(now):
            return self._rate_limited(state)
        state.strikes = 0
        if binary != state.msgpack:
            kind = "binary" if binary else "text"
            what = "MessagePack" if state.msgpack else "JSON"
            return Reply(
                protocol.encode_error(
                    None,
                    ErrorCode.BINARY_NOT_SUPPORTED,
                    f"{kind} frames are not supported: this connection speaks {what}",
                ),
                Count.PROTOCOL_ERRORS,
                f"{kind} frame",
            )
        try:
            env = msgpackwire.parse_command(payload) if binary else parse_envelope(payload)
        except InvalidUTF8:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection with
            # 1007. Reading goes on until the client's Close (the closing handshake).
            return Close(
                CloseCode.INVALID_TEXT, "invalid UTF-8", Count.PROTOCOL_ERRORS, "invalid UTF-8"
            )
        except BadEnvelope as exc:
            return Reply(
                protocol.encode_error(exc.id, ErrorCode.BAD_REQUEST, str(exc)),
                Count.PROTOCOL_ERRORS,
                f"bad command: {exc}",
            )
        op = env.op
        if state.identity is None and op != "connect":
            return _error(env.id, ErrorCode.UNAUTHORIZED, "connect first")
        handler = _OPS.get(op)
        if handler is None:
            return Reply(
                protocol.encode_error(env.id, ErrorCode.UNKNOWN_OP, f"unknown op {op!r}"),
                Count.PROTOCOL_ERRORS,
                f"unknown op {op!r}",
            )
        return handler(self, state, env)

    def _rate_limited(self, state: SessionState) -> Reply | Close:
        state.strikes += 1
        if state.strikes >= self._config.limits.abuse_close_after:
            return Close(
                CloseCode.TOO_MANY_REQUESTS,
                "too many requests",
                Count.RATE_LIMITED,
                "command flood, closing",
                stop_reading=True,
            )
        return Reply(
            protocol.encode_error(None, ErrorCode.TOO_MANY_REQUESTS, "too many requests"),
            Count.RATE_LIMITED,
        )

    # -- ops (one method each, in the _OPS table below) -----------------------------------

    def _ping(self, state: SessionState, env: Envelope) -> Outcome:
        return Reply(protocol.encode_ok(env.id))

    def _connect(self, state: SessionState, env: Envelope) -> Outcome:
        """Way 2 (browsers): the first message carries the token; a bad one closes the
        connection with 4001 and no reply, so the client does not retry blindly."""
        if state.identity is not None:
            return _error(env.id, ErrorCode.BAD_REQUEST, "already connected")
        try:
            state.identity = self._auth.connection(_token_of(env.fields.get("token")))
        except AuthFailure as exc:
            return Close(
                CloseCode.UNAUTHORIZED,
                exc.reason,
                Count.AUTH_FAILURES,
                f"connect refused: {exc.reason}",
            )
        return Connected(identity_reply(env.id, state.identity), state.identity)

    def _refresh(self, state: SessionState, env: Envelope) -> Outcome:
        assert state.identity is not None
        try:
            token = _token_of(env.fields.get("token")) or ""
            state.identity = self._auth.refresh(state.identity, token)
        except AuthFailure as exc:
            code = (
                ErrorCode.TOKEN_EXPIRED if isinstance(exc, TokenExpired) else ErrorCode.UNAUTHORIZED
            )
            return Reply(protocol.encode_error(env.id, code, exc.reason), Count.AUTH_FAILURES)
        return Reply(identity_reply(env.id, state.identity))

    def _subscribe(self, state: SessionState, env: Envelope) -> Outcome:
        command_id, channel = env.id, env.channel
        options = self._namespace(command_id, channel)
        if isinstance(options, Reply):
            return options
        assert channel is not None
        try:
            since = protocol.parse_recover(env.fields.get("recover"))
        except ValueError as exc:
            return _error(command_id, ErrorCode.BAD_REQUEST, str(exc))
        if since is not None and not options.history_size:
            return _error(
                command_id, ErrorCode.BAD_REQUEST, "recover: this channel keeps no history"
            )
        try:
            delta = parse_delta(env.fields.get("delta"))
        except ValueError as exc:
            return _error(command_id, ErrorCode.BAD_REQUEST, str(exc))
        if delta is not None and delta not in options.allowed_delta_types:
            return _error(
                command_id,
                ErrorCode.BAD_REQUEST,
                f"delta: {delta!r} deltas are not allowed in this channel's namespace"
                f" (allowed_delta_types = {list(options.allowed_delta_types)})",
            )
        if channel in state.channels:
            return _error(command_id, ErrorCode.ALREADY_SUBSCRIBED, "already subscribed")
        if len(state.channels) >= self._config.limits.subscriptions_per_connection:
            return _error(command_id, ErrorCode.LIMIT_EXCEEDED, "too many subscriptions")
        refused = self._may_read(state, command_id, channel, options, env.fields.get("token"))
        if refused is not None:
            return refused
        if 0 < options.max_subscribers <= self._subscribers(channel):
            return _error(command_id, ErrorCode.LIMIT_EXCEEDED, "channel has too many subscribers")
        state.channels.add(channel)
        return Subscribe(command_id, channel, options, since, delta)

    def _unsubscribe(self, state: SessionState, env: Envelope) -> Outcome:
        channel = env.channel
        problem = protocol.channel_error(channel)
        if problem is not None:
            return _error(env.id, ErrorCode.BAD_REQUEST, problem)
        assert channel is not None
        reply = protocol.encode_ok(env.id)
        if channel not in state.channels:
            return Reply(reply)
        state.channels.discard(channel)
        return Unsubscribe(channel, reply)

    def _publish(self, state: SessionState, env: Envelope) -> Outcome:
        command_id, channel = env.id, env.channel
        options = self._namespace(command_id, channel)
        if isinstance(options, Reply):
            return options
        assert channel is not None and state.identity is not None
        members = user_only_members(channel)
        if not options.publish or (members is not None and state.identity.user not in members):
            return _error(command_id, ErrorCode.PERMISSION_DENIED, "publishing here is not allowed")
        if env.data is None:
            return _error(command_id, ErrorCode.BAD_REQUEST, "data is required")
        idem = None
        if options.history_size:
            try:
                idem = protocol.parse_idem(env.fields.get("idem"))
            except ValueError as exc:
                return _error(command_id, ErrorCode.BAD_REQUEST, str(exc))
        return Publish(command_id, channel, env.data, options, idem)

    def _read(self, state: SessionState, env: Envelope) -> Outcome:
        """``history``, ``presence`` and ``presence_stats``: checked like a subscribe."""
        command_id, channel, op = env.id, env.channel, env.op
        options = self._namespace(command_id, channel)
        if isinstance(options, Reply):
            return options
        assert channel is not None
        refused = self._may_read(state, command_id, channel, options, env.fields.get("token"))
        if refused is not None:
            return refused
        if op == "history":
            if not options.history_size:
                return _error(command_id, ErrorCode.NOT_AVAILABLE, "this channel keeps no history")
            try:
                args = protocol.parse_history(env.fields)
            except ValueError as exc:
                return _error(command_id, ErrorCode.BAD_REQUEST, str(exc))
            return Read(command_id, op, channel, args)
        if not options.presence:
            return _error(command_id, ErrorCode.NOT_AVAILABLE, "presence is off for this namespace")
        return Read(command_id, op, channel, {})

    # -- checks -------------------------------------------------------------------------

    def _namespace(self, command_id: int | None, channel: str | None) -> NamespaceConfig | Reply:
        """The channel's namespace options, or the error reply for a bad name or an
        unconfigured namespace."""
        problem = protocol.channel_error(channel)
        if problem is not None:
            return _error(command_id, ErrorCode.BAD_REQUEST, problem)
        assert channel is not None
        options = self._config.namespaces.get(protocol.namespace_of(channel))
        if options is None:
            return _error(command_id, ErrorCode.UNKNOWN_CHANNEL, "namespace is not configured")
        return options

    def _may_read(
        self,
        state: SessionState,
        command_id: int | None,
        channel: str,
        options: NamespaceConfig,
        raw_token: bytes | None,
    ) -> Reply | None:
        """None if the connection may subscribe to (and read the history and presence
        of) ``channel``, else the error reply."""
        assert state.identity is not None
        if options.subscribe_token:
            try:
                self._auth.channel_token(_token_of(raw_token) or "", state.identity, channel)
            except AuthFailure as exc:
                return Reply(
                    protocol.encode_error(command_id, ErrorCode.PERMISSION_DENIED, exc.reason),
                    Count.AUTH_FAILURES,
                )
        denied = may_subscribe(state.identity, channel, token_checked=options.subscribe_token)
        if denied is not None:
            return _error(command_id, ErrorCode.PERMISSION_DENIED, denied)
        return None


#: The native protocol's ops, each with its handler. Anything else: error 105.
_OPS: dict[str, Callable[[Sessions, SessionState, Envelope], Outcome]] = {
    "connect": Sessions._connect,
    "refresh": Sessions._refresh,
    "subscribe": Sessions._subscribe,
    "unsubscribe": Sessions._unsubscribe,
    "publish": Sessions._publish,
    "ping": Sessions._ping,
    "history": Sessions._read,
    "presence": Sessions._read,
    "presence_stats": Sessions._read,
}
