"""The native client protocol: commands, replies, pushes, error codes and close codes.

No I/O happens here. Every function takes values and returns the exact bytes a client
receives, so the worker only moves bytes and tests need no sockets. The wire format is
documented for users in ``docs/protocol.md``; the two must change together.

Guarantees of the encoders:

* Every encoder returns one complete UTF-8 JSON object, ready to be framed as one
  WebSocket text frame.
* ``encode_pub`` embeds the publisher's ``data`` bytes verbatim: subscribers receive the
  published JSON byte-for-byte (it was validated by ``parse_envelope`` on the way in).
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

PROTOCOL_VERSION = 1

#: Ops a client may send. Anything else gets ``ErrorCode.UNKNOWN_OP``.
OPS = frozenset({"connect", "refresh", "subscribe", "unsubscribe", "publish", "ping"})

# Channel names: printable ASCII without quotes, backslash, spaces or control characters,
# so a name can be embedded in JSON and in a bus topic (which is NUL-terminated) as is.
# ``namespace:rest`` is the namespace separator; ``#`` marks user-only channels.
CHANNEL_MAX_LENGTH = 255
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-.:@#=/+!$~,]{1,255}")


class ErrorCode(enum.IntEnum):
    """Error codes of command replies: ``{"id":N,"error":{"code":C,"message":"..."}}``.

    The connection stays open after any of these.
    """

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    UNKNOWN_OP = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    NOT_SUBSCRIBED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112
    BINARY_NOT_SUPPORTED = 113


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends.

    1000-1011 are RFC 6455 7.4.1 codes. 4000-4499: the client should NOT reconnect
    without changing something (credentials, request). 4500-4999: the client should
    reconnect, with backoff.
    """

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down or draining; reconnect elsewhere
    PROTOCOL_ERROR = 1002  # RFC 6455 7.4.1: bad frame sequence, reserved bit, bad opcode
    INVALID_TEXT = 1007  # RFC 6455 8.1: text frame that is not valid UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # 4000-4499: do not reconnect
    BAD_REQUEST = 4000  # reserved: a request the server cannot serve as sent
    UNAUTHORIZED = 4001  # bad token in the connect message
    FORBIDDEN = 4003
    TOO_MANY_REQUESTS = 4008  # sustained command flood after rate-limit errors
    TOO_MANY_CONNECTIONS = 4029  # per-IP connection limits ([limits])
    # 4500-4999: reconnect
    SERVER_RESTART = 4500
    SLOW_CONSUMER = 4501
    IDLE_TIMEOUT = 4502  # no inbound frame (pong included) within idle_timeout
    TOKEN_EXPIRED = 4503  # the connection's token expired without a refresh
    CONNECT_TIMEOUT = 4504  # no connect message within handshake_timeout


def reconnect_allowed(code: int) -> bool:
    """Whether a client should reconnect after the server closed with ``code``."""
    if 4000 <= code <= 4499:
        return False
    return code not in (CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG, CloseCode.INVALID_TEXT)


def is_valid_channel(name: str) -> bool:
    """True if ``name`` is an acceptable channel name (charset and length)."""
    return _CHANNEL_RE.fullmatch(name) is not None


def namespace_of(channel: str) -> str:
    """The namespace a channel belongs to: ``chat`` for ``chat:room``, ``default`` for a
    name without a colon."""
    return channel.partition(":")[0] if ":" in channel else "default"


def channel_error(name: str | None) -> str | None:
    """Why ``name`` is not a valid channel, or None if it is."""
    if name is None:
        return "channel is required"
    if not name:
        return "channel must not be empty"
    if len(name) > CHANNEL_MAX_LENGTH:
        return f"channel is longer than {CHANNEL_MAX_LENGTH} characters"
    if not is_valid_channel(name):
        return "channel may contain only A-Z a-z 0-9 and _ - . : @ # = / + ! $ ~ ,"
    return None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_ok(command_id: int | None, **extra: Any) -> bytes:
    """Success reply. ``extra`` members are added after ``ok``."""
    reply: dict[str, Any] = {} if command_id is None else {"id": command_id}
    reply["ok"] = True
    reply.update(extra)
    return _dumps(reply)


def encode_error(command_id: int | None, code: ErrorCode, message: str) -> bytes:
    """Error reply; ``id`` is omitted when the command had none (or could not be read)."""
    reply: dict[str, Any] = {} if command_id is None else {"id": command_id}
    reply["error"] = {"code": int(code), "message": message}
    return _dumps(reply)


def encode_connected(client_id: str, worker: int) -> bytes:
    """First push on every connection."""
    return _dumps(
        {"type": "connected", "client": client_id, "worker": worker, "protocol": PROTOCOL_VERSION}
    )


def encode_pub(channel: str, data: bytes) -> bytes:
    """Publication push. ``channel`` must be valid (``is_valid_channel``), so it needs
    no JSON escaping; ``data`` is raw, already-validated JSON."""
    return b'{"type":"pub","channel":"' + channel.encode() + b'","data":' + data + b"}"


def encode_reconnect(delay: float) -> bytes:
    """Drain hint: reconnect after ``delay`` seconds (jittered per client by the server,
    so a drained host's clients do not all come back at once)."""
    return b'{"type":"reconnect","delay":%.3f}' % delay
