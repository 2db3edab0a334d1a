"""Pusher channel names and kinds, and socket ids (no I/O).

Guarantees:

* :func:`channel_error` accepts exactly Pusher's channel names: 1 to ``max_length``
  characters of ``A-Z a-z 0-9 _ - = @ , . ;`` (the official server SDKs' set, e.g.
  pusher-http-python ``util.channel_name_re``; Pusher's "channel naming conventions").
  Such a name needs no escaping in JSON, a URL path or a NUL-terminated bus topic.
* :func:`kind_of` gives every valid name exactly one :class:`ChannelKind`, by prefix, the
  longest prefix first (``private-encrypted-`` before ``private-``), and says whether it
  is a cache channel.
* A user channel, ``#server-to-user-{user id}`` (the official SDKs' ``send_to_user``), is
  valid too, of kind :attr:`ChannelKind.USER`: only a connection signed in as that user
  may subscribe to it (``pusher:signin``).
* :func:`socket_id` is ``\\d+\\.\\d+`` (what pusher-js and the server SDKs accept) and
  unique cluster-wide for distinct (member, incarnation, counter) triples.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

#: Pusher's channel name limit in the official server SDKs (pusher-http-python
#: ``validate_channel``); ``[[pusher.apps]] max_channel_name_length`` may lower it.
MAX_CHANNEL_NAME_LENGTH = 200

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
#: The prefix of the channel the server SDKs' ``send_to_user`` triggers on, and pusher-js
#: subscribes to after ``pusher:signin_success`` (pusher-js ``src/core/user.ts``).
USER_CHANNEL_PREFIX = "#server-to-user-"
SOCKET_ID_RE = re.compile(r"\d+\.\d+")


class ChannelKind(enum.Enum):
    """What a channel requires of a subscriber."""

    PUBLIC = "public"  # no auth
    PRIVATE = "private"  # ``private-``: channel auth
    PRESENCE = "presence"  # ``presence-``: channel auth with channel_data, a member list
    ENCRYPTED = "encrypted"  # ``private-encrypted-``: channel auth; data relayed untouched
    USER = "user"  # ``#server-to-user-{id}``: the connection signed in as that user


@dataclass(frozen=True, slots=True)
class ChannelType:
    """A channel's kind and whether it keeps its last event (a cache channel)."""

    kind: ChannelKind
    cache: bool

    @property
    def needs_auth(self) -> bool:
        """Whether subscribing needs a channel auth signature (a user channel needs the
        connection signed in as its user instead)."""
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.PRESENCE, ChannelKind.ENCRYPTED)

    @property
    def allows_client_events(self) -> bool:
        """Client events are relayed on private and presence channels only (Pusher: "client
        events can only be triggered on private and presence channels"; pusher-js refuses
        them on encrypted channels, whose data the server cannot read)."""
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)


# Longest first: "private-encrypted-cache-" must not be read as "private-".
_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    (USER_CHANNEL_PREFIX, ChannelType(ChannelKind.USER, False)),
    ("private-encrypted-cache-", ChannelType(ChannelKind.ENCRYPTED, True)),
    ("private-encrypted-", ChannelType(ChannelKind.ENCRYPTED, False)),
    ("private-cache-", ChannelType(ChannelKind.PRIVATE, True)),
    ("private-", ChannelType(ChannelKind.PRIVATE, False)),
    ("presence-cache-", ChannelType(ChannelKind.PRESENCE, True)),
    ("presence-", ChannelType(ChannelKind.PRESENCE, False)),
    ("cache-", ChannelType(ChannelKind.PUBLIC, True)),
)
_PUBLIC = ChannelType(ChannelKind.PUBLIC, False)


def kind_of(channel: str) -> ChannelType:
    """The type of ``channel`` (a valid name), decided by its prefix."""
    for prefix, kind in _PREFIXES:
        if channel.startswith(prefix):
            return kind
    return _PUBLIC


def channel_error(name: object, max_length: int = MAX_CHANNEL_NAME_LENGTH) -> str | None:
    """Why ``name`` is not a valid Pusher channel name of at most ``max_length``
    characters, or None if it is. The reason is safe to send back (it quotes nothing)."""
    if not isinstance(name, str) or not name:
        return "channel must be a non-empty string"
    if len(name) > max_length:
        return f"The channel name is longer than the allowed {max_length} characters."
    plain = name.removeprefix(USER_CHANNEL_PREFIX)
    if not plain or _CHANNEL_RE.fullmatch(plain) is None:
        return "channel may contain only A-Z a-z 0-9 and _ - = @ , . ;"
    return None


def user_channel(user_id: str) -> str:
    """The channel of a signed-in user's messages (``send_to_user``)."""
    return USER_CHANNEL_PREFIX + user_id


#: Separates the app id from the user id in :func:`user_key`: a control character, which
#: no native user id may contain (``pure.auth.user_id_error``).
_USER_KEY_MARK = "\x1f"


def user_key(app_id: str, user_id: str) -> str:
    """The key of a Pusher user signed in on app ``app_id`` in the workers' user hub and
    bus user topics (``busframe.user_topic``): injective over (app id, user id), never a
    native user id, so ``terminate_connections`` reaches this app's user only."""
    return f"{_USER_KEY_MARK}{app_id}{_USER_KEY_MARK}{user_id}"


def is_socket_id(value: object) -> bool:
    """Whether ``value`` has the form of a Pusher socket id (``123.456``)."""
    return isinstance(value, str) and SOCKET_ID_RE.fullmatch(value) is not None


def socket_id(member: int, incarnation: int, counter: int) -> str:
    """The socket id of a process's ``counter``-th connection.

    ``member`` is the process's cluster-wide member id (``pure.cluster.member_id``: unique
    among live members), ``incarnation`` a number that differs between two processes that
    held the same member id (e.g. the process's start time in milliseconds), ``counter``
    the process's connection count. The first part packs member and incarnation without
    overlap, so distinct triples give distinct ids, across hosts and restarts.
    """
    if member < 0 or incarnation < 0 or counter < 0:
        raise ValueError("member, incarnation and counter must be >= 0")
    if member >= 1 << 32:
        raise ValueError(f"member id {member} is wider than 32 bits")
    return f"{incarnation << 32 | member}.{counter}"


def member_of(socket_id: str) -> int | None:
    """The member id of the process that issued ``socket_id`` (:func:`socket_id`), or
    None when ``socket_id`` does not have the form of one."""
    if not is_socket_id(socket_id):
        return None
    return int(socket_id.partition(".")[0]) & 0xFFFFFFFF


def incarnation_of(socket_id: str) -> int | None:
    """The incarnation of the process that issued ``socket_id`` (:func:`socket_id`), or
    None when ``socket_id`` does not have the form of one. A process's incarnations only
    grow (its start time), so an older one belongs to a process that is gone."""
    if not is_socket_id(socket_id):
        return None
    return int(socket_id.partition(".")[0]) >> 32


class SocketIds:
    """The socket ids of one process: :func:`socket_id` with a counter that only grows."""

    __slots__ = ("_counter", "_incarnation", "_member")

    def __init__(self, member: int, incarnation: int) -> None:
        socket_id(member, incarnation, 0)  # validates the arguments once
        self._member = member
        self._incarnation = incarnation
        self._counter = 0

    def next(self) -> str:
        """A socket id no earlier call of this process (or any other member or
        incarnation) returned."""
        self._counter += 1
        return socket_id(self._member, self._incarnation, self._counter)


# ------------------------------------------------------------------ the hub's names

#: The first character of every hub and bus name of a Pusher channel. It is in neither
#: the native channel set (``pure.protocol._CHANNEL_RE``) nor Pusher's, nor in app ids
#: (``A-Z a-z 0-9 _ . -``), so no native channel and no other app's channel can share a
#: Pusher channel's internal name.
INTERNAL_MARK = "|"


def app_prefix(app_id: str) -> str:
    """The start of every internal name of app ``app_id``'s channels: ``|{app_id}|``."""
    return f"{INTERNAL_MARK}{app_id}{INTERNAL_MARK}"


def internal_name(app_id: str, channel: str) -> str:
    """The hub and bus name of Pusher ``channel`` (valid) of app ``app_id``:
    ``|{app_id}|{channel}``. Injective over (app id, channel); never a native name."""
    return f"{INTERNAL_MARK}{app_id}{INTERNAL_MARK}{channel}"


def is_internal(name: str) -> bool:
    """Whether hub or bus channel ``name`` is a Pusher channel's internal name."""
    return name.startswith(INTERNAL_MARK)


def app_of(internal: str) -> str:
    """The app id of an :func:`internal_name`."""
    return internal[1 : internal.index(INTERNAL_MARK, 1)]


def pusher_name(internal: str) -> str:
    """The Pusher channel name of an :func:`internal_name` (what clients see)."""
    return internal[internal.index(INTERNAL_MARK, 1) + 1 :]
