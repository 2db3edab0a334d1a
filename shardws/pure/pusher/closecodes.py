"""Pusher error and close codes, and the Pusher code of every native close reason.

pusher-js acts on the close code's range (``getCloseAction`` in pusher-js
``src/core/connection/protocol/protocol.ts``): 4000 -> reconnect with TLS; 4001-4099 ->
never reconnect; 4100-4199 -> reconnect after backing off; 4200-4299 -> reconnect now;
>= 4300 -> never reconnect. Codes and texts are Pusher's ("Pusher Channels Protocol",
pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol) except the
two shardws adds in the never-reconnect range, where Pusher defines none (docs/pusher.md
lists them all).

A Pusher connection closes the way Pusher does: a ``pusher:error`` with the code and
message, then a close frame with the same code. Every close reason of the server (the
native :class:`~shardws.pure.protocol.CloseCode`, whoever decided it: the frames layer,
the session, the worker on drain or slow consumer) goes through :func:`for_native`, so
one table says what a pusher-js client does after each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shardws.pure.protocol import CloseCode


class PusherCode(enum.IntEnum):
    """Codes of ``pusher:error`` and of close frames to Pusher clients."""

    TLS_ONLY = 4000  # never sent by shardws: pusher-js would switch to wss:// and retry
    APP_NOT_FOUND = 4001
    APP_DISABLED = 4003
    OVER_CONNECTION_QUOTA = 4004
    PATH_NOT_FOUND = 4005
    INVALID_VERSION = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    # shardws's own, in Pusher's never-reconnect range (Pusher assigns 4000-4009 only):
    PROTOCOL_VIOLATION = 4020  # bad frames, invalid UTF-8, a command flood, policy
    MESSAGE_TOO_BIG = 4021  # a message over [server] max_message_size
    OVER_CAPACITY = 4100
    RECONNECT = 4200
    PONG_NOT_RECEIVED = 4201
    INACTIVE = 4202
    CLIENT_EVENT_REJECTED = 4301  # rate limit, and client events refused (Soketi's use)


#: Pusher's wording for its codes (and shardws's for its own two).
MESSAGES: dict[PusherCode, str] = {
    PusherCode.TLS_ONLY: "Application only accepts SSL connections, reconnect using wss://",
    PusherCode.APP_NOT_FOUND: "Application does not exist",
    PusherCode.APP_DISABLED: "Application disabled",
    PusherCode.OVER_CONNECTION_QUOTA: "Application is over connection quota",
    PusherCode.PATH_NOT_FOUND: "Path not found",
    PusherCode.INVALID_VERSION: "Invalid version string format",
    PusherCode.UNSUPPORTED_PROTOCOL: "Unsupported protocol version",
    PusherCode.NO_PROTOCOL: "No protocol version supplied",
    PusherCode.UNAUTHORIZED: "Connection is unauthorized",
    PusherCode.PROTOCOL_VIOLATION: "Protocol violation",
    PusherCode.MESSAGE_TOO_BIG: "Message too big",
    PusherCode.OVER_CAPACITY: "Over capacity",
    PusherCode.RECONNECT: "Generic reconnect immediately",
    PusherCode.PONG_NOT_RECEIVED: "Pong reply not received",
    PusherCode.INACTIVE: "Closed after inactivity",
    PusherCode.CLIENT_EVENT_REJECTED: "Client event rejected due to rate limit",
}


class Action(enum.Enum):
    """What pusher-js does after a close with a code (its ``getCloseAction``)."""

    TLS_ONLY = "tls_only"
    REFUSED = "refused"  # never reconnects
    BACKOFF = "backoff"  # reconnects after a delay
    RETRY = "retry"  # reconnects at once
    NONE = "none"  # below 4000 and not 1002-1004: pusher-js's own reconnection logic


def action_of(code: int) -> Action:
    """pusher-js's action for a close with ``code``, as its ``getCloseAction`` decides."""
    if code < 4000:
        return Action.BACKOFF if 1002 <= code <= 1004 else Action.NONE
    if code == 4000:
        return Action.TLS_ONLY
    if code < 4100:
        return Action.REFUSED
    if code < 4200:
        return Action.BACKOFF
    if code < 4300:
        return Action.RETRY
    return Action.REFUSED


@dataclass(frozen=True, slots=True)
class PusherClose:
    """How a Pusher connection is closed: ``pusher:error`` with ``code`` and ``message``
    (unless ``code`` is below 4000: then no error is sent), then a close frame with
    ``code``."""

    code: int
    message: str

    @property
    def sends_error(self) -> bool:
        """Whether a ``pusher:error`` precedes the close frame."""
        return self.code >= 4000


def _close(code: PusherCode, detail: str) -> PusherClose:
    return PusherClose(int(code), f"{MESSAGES[code]}: {detail}")


#: The Pusher close of every native close reason (docs/pusher.md, "Close codes").
NATIVE: dict[CloseCode, PusherClose] = {
    # The closing handshake the client started: no error, the code it sent back.
    CloseCode.NORMAL: PusherClose(1000, ""),
    # Drain and shutdown: reconnect at once (to another worker or host).
    CloseCode.GOING_AWAY: _close(PusherCode.RECONNECT, "server shutting down or draining"),
    CloseCode.SERVER_RESTART: _close(PusherCode.RECONNECT, "server restarting"),
    CloseCode.TOKEN_EXPIRED: _close(PusherCode.RECONNECT, "credentials expired"),
    CloseCode.CONNECT_TIMEOUT: _close(PusherCode.RECONNECT, "handshake timed out"),
    CloseCode.INSUFFICIENT_STATE: _close(PusherCode.RECONNECT, "channel state lost"),
    CloseCode.IDLE_TIMEOUT: _close(PusherCode.PONG_NOT_RECEIVED, "no activity"),
    # Overload, slow consumers, a bus that cannot confirm: reconnect after backing off.
    CloseCode.SLOW_CONSUMER: _close(PusherCode.OVER_CAPACITY, "slow consumer"),
    CloseCode.TOO_MANY_CONNECTIONS: _close(PusherCode.OVER_CAPACITY, "too many connections"),
    CloseCode.INTERNAL_ERROR: _close(PusherCode.OVER_CAPACITY, "internal error"),
    CloseCode.NOT_LIVE: _close(PusherCode.OVER_CAPACITY, "not confirmed live on every worker"),
    # Protocol abuse and refusals: never reconnect with the same parameters.
    CloseCode.PROTOCOL_ERROR: _close(PusherCode.PROTOCOL_VIOLATION, "invalid WebSocket frames"),
    CloseCode.INVALID_TEXT: _close(PusherCode.PROTOCOL_VIOLATION, "invalid UTF-8"),
    CloseCode.POLICY_VIOLATION: _close(PusherCode.PROTOCOL_VIOLATION, "policy violation"),
    CloseCode.BAD_REQUEST: _close(PusherCode.PROTOCOL_VIOLATION, "bad request"),
    CloseCode.MESSAGE_TOO_BIG: _close(PusherCode.MESSAGE_TOO_BIG, "message too big"),
    CloseCode.TOO_MANY_REQUESTS: _close(PusherCode.CLIENT_EVENT_REJECTED, "message flood"),
    CloseCode.UNAUTHORIZED: _close(PusherCode.UNAUTHORIZED, "unauthorized"),
    CloseCode.FORBIDDEN: _close(PusherCode.UNAUTHORIZED, "forbidden"),
    CloseCode.DISCONNECTED: _close(PusherCode.UNAUTHORIZED, "disconnected by the server"),
}


def for_native(code: int) -> PusherClose:
    """The Pusher close for a close the server decided with native ``code``. A code
    outside :class:`CloseCode` (none is sent today) reconnects at once, the safe side."""
    try:
        return NATIVE[CloseCode(code)]
    except ValueError:
        return _close(PusherCode.RECONNECT, f"closed ({code})")
