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
from collections.abc import Iterable
from typing import Any

from shardws.pure.history import Position
from shardws.pure.publication import Kind, Publication
from shardws.pure.wiredata import json_member

PROTOCOL_VERSION = 1

# Channel names: printable ASCII without quotes, backslash, spaces or control characters,
# so a name can be embedded in JSON and in a bus topic (which is NUL-terminated) as is.
# ``namespace:rest`` is the namespace separator; ``#`` marks user-only channels.
CHANNEL_MAX_LENGTH = 255
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-.:@#=/+!$~,]{1,255}")


class ErrorCode(enum.IntEnum):
    """Error codes of command replies: ``{"id":N,"error":{"code":C,"message":"..."}}``.

    The connection stays open after any of these.
    """

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


#: The message of error 108 for a subscribe whose liveness barrier did not complete (a
#: peer worker starved or stuck): the subscription was undone; the client retries.
NOT_LIVE_MESSAGE = "the subscription could not be confirmed live on every worker; retry"

#: The reason of close 4506: an authenticated connection's user topic (what user-targeted
#: publications and disconnects travel on) could not be confirmed live, so it is closed
#: instead of greeted; the client reconnects with backoff.
NOT_LIVE_REASON = "the connection could not be confirmed live on every worker; reconnect"


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
    DISCONNECTED = 4009  # the backend disconnected the user (POST /api/disconnect)
    TOO_MANY_CONNECTIONS = 4029  # per-IP connection limits ([limits])
    # 4500-4999: reconnect
    SERVER_RESTART = 4500
    SLOW_CONSUMER = 4501
    IDLE_TIMEOUT = 4502  # no inbound frame (pong included) within idle_timeout
    TOKEN_EXPIRED = 4503  # the connection's token expired without a refresh
    CONNECT_TIMEOUT = 4504  # no connect message within handshake_timeout
    INSUFFICIENT_STATE = 4505  # a history gap could not be repaired: reconnect, recover
    NOT_LIVE = 4506  # the user's bus topic could not be confirmed live: reconnect, back off


#: Standard close codes after which reconnecting cannot help: the client itself is broken
#: (protocol error, unsupported or invalid data, policy, too big, missing extension).
FATAL_STANDARD_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


def reconnect_allowed(code: int) -> bool:
    """Whether a client should reconnect after a close with ``code`` (docs/protocol.md,
    close codes): 4000-4499 and the codes of a broken client never, anything else yes
    (1006, no close frame at all, included)."""
    return not (4000 <= code <= 4499 or code in FATAL_STANDARD_CODES)


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
    no JSON escaping; ``data`` is carried data (``pure.wiredata``): a JSON publisher's
    text is embedded verbatim, a MessagePack publisher's converted."""
    return b'{"type":"pub","channel":"' + channel.encode() + b'",' + json_member(data) + b"}"


def encode_pub_at(channel: str, offset: int, epoch: str, data: bytes) -> bytes:
    """Publication push of a channel with history: ``offset`` and ``epoch`` come right
    after the channel, so ``pub_position`` can read them back without a JSON parse."""
    return b'{"type":"pub","channel":"%s","offset":%d,"epoch":"%s",%s}' % (
        channel.encode(),
        offset,
        epoch.encode(),
        json_member(data),
    )


def pub_position(push: bytes, channel: str) -> Position | None:
    """The position of a push made by ``encode_pub_at`` for ``channel``, or None for a
    push without one."""
    start = 36 + len(channel)  # len('{"type":"pub","channel":"' + channel + '","offset":')
    if push[start - 11 : start] != b'","offset":':
        return None
    comma = push.find(b",", start)
    epoch_end = push.find(b'"', comma + 10)  # after ',"epoch":"'
    return Position(push[comma + 10 : epoch_end].decode(), int(push[start:comma]))


def decode_pub_at(push: bytes, channel: str) -> Publication | None:
    """The publication of a push made by ``encode_pub_at`` for ``channel`` (None for any
    other bytes): the inverse of ``encode_publication`` for a positioned publication."""
    position = pub_position(push, channel)
    if position is None or not push.endswith(b"}"):
        return None
    head = encode_pub_at(channel, position.offset, position.epoch, b"")[:-1]
    if not push.startswith(head):
        return None
    return Publication(push[len(head) : -1], position=position)


def encode_history(command_id: int | None, epoch: str, offset: int, pushes: list[bytes]) -> bytes:
    """Reply to ``history``: the channel's position and the stored pushes, embedded as
    they were sent (each a complete ``pub`` push with its offset)."""
    head = b'{"id":%d,' % command_id if command_id is not None else b"{"
    return b'%s"ok":true,"epoch":"%s","offset":%d,"publications":[%s]}' % (
        head,
        epoch.encode(),
        offset,
        b",".join(pushes),
    )


def encode_history_page(
    command_id: int | None, position: Position, channel: str, publications: Iterable[Publication]
) -> bytes:
    """:func:`encode_history` of ``channel``'s ``publications``, each as its push."""
    pushes = [encode_publication(channel, p) for p in publications]
    return encode_history(command_id, position.epoch, position.offset, pushes)


def encode_presence(command_id: int | None, members: list[list[Any]]) -> bytes:
    """Reply to ``presence``: ``members`` is ``[[user, client, info JSON text or None]]``;
    each becomes ``{"user":..,"client":..,"info":..}`` with ``info`` embedded as JSON."""
    head = b'{"id":%d,' % command_id if command_id is not None else b"{"
    entries = [
        b'{"user":%s,"client":%s,"info":%s}'
        % (_dumps(user), _dumps(client), info.encode() if info is not None else b"null")
        for user, client, info in members
    ]
    return b'%s"ok":true,"members":[%s]}' % (head, b",".join(entries))


def encode_presence_event(kind: str, channel: str, user: str, client: str) -> bytes:
    """A ``join`` or ``leave`` push."""
    return _dumps({"type": kind, "channel": channel, "user": user, "client": client})


def encode_publication(channel: str, publication: Publication) -> bytes:
    """The native push of a protocol-neutral ``publication`` on ``channel``: a ``pub``
    (with ``offset`` and ``epoch`` in a history namespace), a ``join`` or a ``leave``. The
    native protocol has no event names and echoes publications to their sender, so
    ``event`` and ``origin`` (but as a join's or leave's ``client``) are not shown."""
    data, kind, _event, origin, user, position = publication
    if kind is Kind.PUB:
        if position is None:
            return encode_pub(channel, data)
        return encode_pub_at(channel, position.offset, position.epoch, data)
    return encode_presence_event("join" if kind is Kind.JOIN else "leave", channel, user, origin)


def encode_user_pub(user: str, data: bytes) -> bytes:
    """User-targeted publication push, delivered to every connection of ``user``:
    ``{"type":"pub","user":"alice","data":...}`` (``user`` instead of ``channel``).
    ``data`` is carried data, as in ``encode_pub``."""
    return b'{"type":"pub","user":' + _dumps(user) + b"," + json_member(data) + b"}"


def encode_reconnect(delay: float) -> bytes:
    """Drain hint: reconnect after ``delay`` seconds (jittered per client by the server,
    so a drained host's clients do not all come back at once)."""
    return b'{"type":"reconnect","delay":%.3f}' % delay


# --------------------------------------------------------------------------- command members

#: Longest ``idem`` key of a publish.
MAX_IDEM_LENGTH = 64
#: Most publications one ``history`` command returns.
MAX_HISTORY_PAGE = 1000


def _member(raw: bytes | None) -> Any:
    """The JSON value of a raw command member (``Envelope.fields``); None if invalid."""
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:
        return None


def parse_recover(raw: bytes | None) -> Position | None:
    """The ``recover`` member of a subscribe: ``{"epoch": E, "offset": N}`` ->
    ``Position(E, N)``; absent -> None; anything else -> ValueError saying what is
    expected."""
    if raw is None:
        return None
    value = _member(raw)
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("epoch"), str)
        or not isinstance(value.get("offset"), int)
        or value["offset"] < 0
    ):
        raise ValueError('recover must be {"epoch": "...", "offset": N} with N >= 0')
    return Position(value["epoch"], value["offset"])


def parse_idem(raw: bytes | None) -> str | None:
    """The ``idem`` member of a publish: a string of 1..64 characters, or absent;
    ValueError otherwise."""
    if raw is None:
        return None
    value = _member(raw)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEM_LENGTH:
        raise ValueError(f"idem must be a string of 1 to {MAX_IDEM_LENGTH} characters")
    return value


def parse_history(fields: dict[str, bytes]) -> dict[str, Any]:
    """``since`` (offset, default 0), ``limit`` (1..1000, default 100) and ``reverse``
    (bool) of a ``history`` command, from its raw members; ValueError when mistyped."""
    args: dict[str, Any] = {"since": 0, "limit": 100, "reverse": False}
    for name, kind in (("since", int), ("limit", int), ("reverse", bool)):
        if name in fields:
            value = _member(fields[name])
            if type(value) is not kind:
                expected = "an integer" if kind is int else "true or false"
                raise ValueError(f"{name} must be {expected}")
            args[name] = value
    if args["since"] < 0 or not 0 < args["limit"] <= MAX_HISTORY_PAGE:
        raise ValueError(f"since must be >= 0 and limit 1..{MAX_HISTORY_PAGE}")
    return args
