"""Control messages between the processes of one host, carried by the bus (no I/O).

Two kinds, both sent by the admin process today and read by the workers:

* **User topics** (``bus.user_topic(user)``; a worker subscribes while the user has a
  connection there). Each payload is one tag byte and a body:

  - ``p`` + a client push: a user-targeted publication, written to every connection of
    the user as is (encoded once by the sender, never re-serialized);
  - ``d`` + u16 close code + UTF-8 reason: close every connection of the user.

* **Inboxes** (``bus.inbox_topic(member)``): one JSON object per payload. A request is
  ``{"op": ..., "id": N, "reply_to": M, ...arguments}``; the answer goes to the inbox of
  member ``M`` as ``{"id": N, "reply": {...}}``. ``shardws.bus.requests.Requests``
  sends a request to several members and collects their answers until a deadline.

Guarantees: decoders raise ``ValueError`` (never anything else) on a payload they do
not understand, so a receiver can count and skip it. Request/reply is at-most-once like
the bus itself: a member that is busy, dead or not yet attached simply does not answer
in time, and ``Requests.ask`` reports it as missing instead of waiting longer.

Ops:

* ``channels`` (arguments ``prefix``, ``limit``): the worker's channels whose name
  starts with ``prefix`` and their local subscriber counts, at most ``limit`` of them
  (the first by name); :func:`merge_channels` sums the answers.
* The owner operations (``history.*``, ``presence.*``, ``pusher.*``): one request type and one reply
  type each (:data:`OWNER_REQUESTS`; the table is in ``docs/architecture.md``), encoded
  by :func:`encode_owner_request` and ``fields()``, decoded by
  :func:`decode_owner_request` and ``OwnerRequest.decode_reply``.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar, cast

from shardws.pure.history import Entry, Position, RingState, Unrecovered
from shardws.pure.protocol import channel_error
from shardws.pure.publication import Publication
from shardws.pure.pusher.channels import INTERNAL_MARK, is_internal, is_socket_id, pusher_name
from shardws.pure.pusher.channels import channel_error as pusher_channel_error
from shardws.pure.wiredata import as_text, from_text

log = logging.getLogger("shardws.control")

_CODE = struct.Struct("!H")
_PUSH = b"p"
_DISCONNECT = b"d"

#: Most channels a ``channels`` answer (per worker, and merged) lists.
MAX_CHANNELS = 10_000


class Disconnect(NamedTuple):
    """Close every connection of the user with ``code`` and ``reason``."""

    code: int
    reason: str


def encode_user_push(push: bytes) -> bytes:
    """User-topic payload carrying ``push`` (the exact bytes each connection receives)."""
    return _PUSH + push


def encode_disconnect(code: int, reason: str) -> bytes:
    """User-topic payload: close the user's connections with ``code`` (0..65535) and
    ``reason``."""
    return _DISCONNECT + _CODE.pack(code) + reason.encode()


def decode_user_message(payload: bytes) -> bytes | Disconnect:
    """A user-topic payload -> the client push to deliver, or a :class:`Disconnect`."""
    tag = payload[:1]
    if tag == _PUSH:
        return payload[1:]
    if tag == _DISCONNECT and len(payload) >= 1 + _CODE.size:
        (code,) = _CODE.unpack_from(payload, 1)
        try:
            reason = payload[1 + _CODE.size :].decode()
        except UnicodeDecodeError:
            raise ValueError("disconnect reason is not UTF-8") from None
        return Disconnect(code, reason)
    raise ValueError(f"unknown user message tag {tag!r}")


# --------------------------------------------------------------------------- inboxes


def encode_request(op: str, request_id: int, reply_to: int, args: Mapping[str, Any]) -> bytes:
    """Inbox payload asking for ``op``; the answer goes to member ``reply_to``'s inbox."""
    return json.dumps({**args, "op": op, "id": request_id, "reply_to": reply_to}).encode()


def encode_reply(request_id: int, reply: Mapping[str, Any]) -> bytes:
    """Inbox payload answering request ``request_id``."""
    return json.dumps({"id": request_id, "reply": reply}, ensure_ascii=False).encode()


def decode_inbox(payload: bytes) -> dict[str, Any]:
    """An inbox payload -> a request (has ``op``, an int ``id`` and ``reply_to``) or a
    reply (has an int ``id`` and a dict ``reply``)."""
    message = json.loads(payload)  # ValueError (UnicodeDecodeError, JSONDecodeError)
    if not isinstance(message, dict) or not isinstance(message.get("id"), int):
        raise ValueError("inbox message without an integer id")
    if "op" in message:
        if not isinstance(message["op"], str) or not isinstance(message.get("reply_to"), int):
            raise ValueError("request without a string op and an integer reply_to")
    elif not isinstance(message.get("reply"), dict):
        raise ValueError("inbox message is neither a request nor a reply")
    return message


def inbox_messages(origin: int, payloads: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The decoded messages among ``payloads`` that member ``origin`` sent to an inbox;
    undecodable ones (a bug in the sender) are logged and skipped."""
    for payload in payloads:
        try:
            yield decode_inbox(payload)
        except ValueError as exc:
            log.warning("bus: bad inbox message from member %d: %s", origin, exc)


# --------------------------------------------------------------------------- channels


def channels_arguments(request: Mapping[str, Any]) -> tuple[str, int]:
    """The (prefix, limit) of a ``channels`` request; ValueError if mistyped."""
    prefix = request.get("prefix", "")
    limit = request.get("limit", MAX_CHANNELS)
    if not isinstance(prefix, str) or not isinstance(limit, int) or limit < 1:
        raise ValueError("channels: prefix must be a string and limit an integer >= 1")
    return prefix, min(limit, MAX_CHANNELS)


def channels_answer(counts: Mapping[str, int], limit: int) -> dict[str, Any]:
    """A worker's answer to ``channels`` from its local ``counts`` (already filtered by
    the request's prefix): ``{"channels": {name: count}, "truncated": bool}`` with at
    most ``limit`` names, the first by name (so a truncated answer is exact up to its
    last name)."""
    names = list(counts)
    truncated = len(names) > limit
    # nsmallest: O(n log limit), not a full sort, for a worker with very many channels.
    chosen = heapq.nsmallest(limit, names) if truncated else sorted(names)
    return {"channels": {name: counts[name] for name in chosen}, "truncated": truncated}


def merge_channels(answers: Iterable[Mapping[str, Any]], limit: int) -> tuple[dict[str, int], bool]:
    """Sum workers' ``channels`` answers -> (counts by name, truncated). Every count in
    the result is exact over the answers given: names past the last name of any
    truncated answer are dropped (that worker may have had them too), then at most
    ``limit`` names are kept, the first by name."""
    totals: dict[str, int] = {}
    cut: str | None = None
    truncated = False
    for answer in answers:
        counts = answer.get("channels")
        if not isinstance(counts, dict):
            continue
        for name, count in counts.items():
            if isinstance(count, int):
                totals[name] = totals.get(name, 0) + count
        if answer.get("truncated") and counts:
            truncated = True
            last = max(counts)
            cut = last if cut is None else min(cut, last)
    names = sorted(name for name in totals if cut is None or name <= cut)
    if len(names) > limit or len(names) < len(totals):
        truncated = True
    return {name: totals[name] for name in names[:limit]}, truncated


# --------------------------------------------------------------------------- owner operations
#
# Requests a worker (or the admin) sends to a channel's owner, or for presence to every
# worker; each request type names its ``op`` and its reply type. ``fields()`` gives the
# JSON members of a request or reply (beside ``op``/``id``/``reply_to``, or inside
# ``reply``); ``from_fields`` reads them back and raises ValueError, naming the member at
# fault, for anything else. Every operation may be answered with an ``OwnerRefusal``
# (``{"error": reason}``) instead of its reply.

_ReplyT = TypeVar("_ReplyT", bound="OwnerReply")


class OwnerReply(ABC):
    """An owner operation's answer (the reply types below)."""

    __slots__ = ()

    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """The reply's JSON members."""

    @classmethod
    @abstractmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        """The reply from its JSON members; ValueError naming the member at fault."""


class OwnerRequest(ABC, Generic[_ReplyT]):
    """An owner operation's request; ``_ReplyT`` is the type of its answer."""

    __slots__ = ()
    op: ClassVar[str]
    reply_type: ClassVar[type[OwnerReply]]

    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """The request's JSON members (beside ``op``, ``id`` and ``reply_to``)."""

    @classmethod
    @abstractmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        """The request from its JSON members; ValueError naming the member at fault."""

    def decode_reply(self, fields: Mapping[str, Any]) -> _ReplyT | OwnerRefusal:
        """The answer to this request from the ``reply`` of an inbox message."""
        if "error" in fields:
            return OwnerRefusal.from_fields(fields)
        return cast(_ReplyT, self.reply_type.from_fields(fields))


def _str(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _int(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer")
    return value


def _channel(fields: Mapping[str, Any]) -> str:
    channel = fields.get("channel")
    if not isinstance(channel, str) or channel_error(channel) is not None:
        raise ValueError("bad channel")
    return channel


def _channel_list(fields: Mapping[str, Any]) -> tuple[str, ...]:
    channels = fields.get("channels")
    if not isinstance(channels, list):
        raise ValueError("channels must be a list")
    if not all(isinstance(channel, str) for channel in channels):
        raise ValueError("channels must be a list of strings")
    return tuple(channels)


@dataclass(frozen=True, slots=True)
class _Channels:
    """The members of a request or a reply whose only member is ``channels``."""

    channels: tuple[str, ...]

    def fields(self) -> dict[str, Any]:
        return {"channels": list(self.channels)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_channel_list(fields))


def _position(fields: Mapping[str, Any]) -> Position:
    return Position(_str(fields, "epoch"), _int(fields, "offset"))


def _position_value(value: Any, name: str) -> Position:
    """A position carried as ``[epoch, offset]``."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and type(value[1]) is int
    ):
        return Position(value[0], value[1])
    raise ValueError(f"{name} must be [epoch, offset]")


_REASONS = frozenset(reason.value for reason in Unrecovered)


def _entries_of(publications: Iterable[Publication]) -> list[list[Any]]:
    """Stored publications on the wire: ``[[offset, data], ...]``, all in the reply's
    epoch (one ring)."""
    return [[p.position.offset if p.position else 0, as_text(p.data)] for p in publications]


def _publications(fields: Mapping[str, Any], epoch: str) -> tuple[Publication, ...]:
    entries = fields.get("publications")
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and len(e) == 2 and type(e[0]) is int and isinstance(e[1], str)
        for e in entries
    ):
        raise ValueError("publications must be a list of [offset, data]")
    return tuple(Publication(from_text(data), position=Position(epoch, at)) for at, data in entries)


@dataclass(frozen=True, slots=True)
class OwnerRefusal(OwnerReply):
    """Any operation's answer when it cannot be done (``error`` says why): not the
    owner of the channel, a malformed request, an unknown op."""

    error: str

    def fields(self) -> dict[str, Any]:
        return {"error": self.error}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_str(fields, "error"))


# -- history.publish


@dataclass(frozen=True, slots=True)
class HistoryPublishReply(OwnerReply):
    """Where the publication is stored (also for a repeated ``idem``: the first one)."""

    position: Position

    def fields(self) -> dict[str, Any]:
        return {"epoch": self.position.epoch, "offset": self.position.offset}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_position(fields))


@dataclass(frozen=True, slots=True)
class HistoryPublishRequest(OwnerRequest[HistoryPublishReply]):
    """Sequence and publish ``data`` (valid JSON, checked by whoever accepted it) with
    the optional idempotency key ``idem``."""

    op: ClassVar[str] = "history.publish"
    reply_type: ClassVar[type[OwnerReply]] = HistoryPublishReply
    channel: str
    data: bytes
    idem: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel, "data": as_text(self.data), "idem": self.idem}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        channel = _channel(fields)
        data, idem = fields.get("data"), fields.get("idem")
        if not isinstance(data, str) or not (idem is None or isinstance(idem, str)):
            raise ValueError("bad publication")
        return cls(channel, from_text(data), idem)


# -- history.position


@dataclass(frozen=True, slots=True)
class HistoryPositionReply(OwnerReply):
    """The channel's current ``position``; for a request with ``since`` also whether
    that position was ``recovered``: if so, the missed ``publications`` (oldest first,
    each with its position); if not, the ``reason`` (None only from an owner older than
    the member)."""

    position: Position
    recovered: bool | None = None
    publications: tuple[Publication, ...] = ()
    reason: Unrecovered | None = None

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"epoch": self.position.epoch, "offset": self.position.offset}
        if self.recovered is not None:
            fields["recovered"] = self.recovered
            fields["publications"] = _entries_of(self.publications)
        if self.reason is not None:
            fields["reason"] = self.reason.value
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        position = _position(fields)
        if "recovered" not in fields:
            return cls(position)
        recovered = fields["recovered"]
        if not isinstance(recovered, bool):
            raise ValueError("recovered must be true or false")
        reason = fields.get("reason")
        if reason is not None and reason not in _REASONS:
            raise ValueError(f"reason must be one of {sorted(_REASONS)}, got {reason!r}")
        return cls(
            position,
            recovered,
            _publications(fields, position.epoch),
            None if reason is None else Unrecovered(reason),
        )


@dataclass(frozen=True, slots=True)
class HistoryPositionRequest(OwnerRequest[HistoryPositionReply]):
    """The channel's position; with ``since`` (a subscriber's recovery, a repair) also
    the publications after it, if the ring still holds them all."""

    op: ClassVar[str] = "history.position"
    reply_type: ClassVar[type[OwnerReply]] = HistoryPositionReply
    channel: str
    since: Position | None = None

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel, "since": None if self.since is None else list(self.since)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        channel = _channel(fields)
        since = fields.get("since")
        return cls(channel, None if since is None else _position_value(since, "since"))


# -- history.positions


@dataclass(frozen=True, slots=True)
class HistoryPositionsReply(OwnerReply):
    """The positions of the asked channels this owner holds a ring for."""

    positions: Mapping[str, Position]

    def fields(self) -> dict[str, Any]:
        return {"positions": {channel: list(at) for channel, at in self.positions.items()}}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        positions = fields.get("positions")
        if not isinstance(positions, dict):
            raise ValueError("positions must be an object")
        return cls({channel: _position_value(at, channel) for channel, at in positions.items()})


@dataclass(frozen=True, slots=True)
class HistoryPositionsRequest(_Channels, OwnerRequest[HistoryPositionsReply]):
    """The positions of several channels (a worker's periodic check against an owner)."""

    op: ClassVar[str] = "history.positions"
    reply_type: ClassVar[type[OwnerReply]] = HistoryPositionsReply


# -- history.page


@dataclass(frozen=True, slots=True)
class HistoryPageReply(OwnerReply):
    """A page of the history and the channel's current ``position``."""

    position: Position
    publications: tuple[Publication, ...]

    def fields(self) -> dict[str, Any]:
        return {
            "epoch": self.position.epoch,
            "offset": self.position.offset,
            "publications": _entries_of(self.publications),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        position = _position(fields)
        return cls(position, _publications(fields, position.epoch))


@dataclass(frozen=True, slots=True)
class HistoryPageRequest(OwnerRequest[HistoryPageReply]):
    """Up to ``limit`` stored publications after offset ``since`` (oldest first), or with
    ``reverse`` the newest ones before ``since`` (0: from the newest), newest first."""

    op: ClassVar[str] = "history.page"
    reply_type: ClassVar[type[OwnerReply]] = HistoryPageReply
    channel: str
    since: int = 0
    limit: int = 100
    reverse: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "since": self.since,
            "limit": self.limit,
            "reverse": self.reverse,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        channel = _channel(fields)
        since, limit = fields.get("since", 0), fields.get("limit", 100)
        if type(since) is not int or type(limit) is not int:
            raise ValueError("since and limit must be integers")
        reverse = fields.get("reverse", False)
        if not isinstance(reverse, bool):
            raise ValueError("reverse must be true or false")
        return cls(channel, since, limit, reverse)


# -- history.handover


@dataclass(frozen=True, slots=True)
class _Done(OwnerReply):
    """A reply that says only that the request was carried out: ``{"ok": true}``."""

    def fields(self) -> dict[str, Any]:
        return {"ok": True}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        if fields.get("ok") is not True:
            raise ValueError("ok must be true")
        return cls()


@dataclass(frozen=True, slots=True)
class HistoryHandoverReply(_Done):
    """The rings were taken (sent only if the hand-over was asked with an id)."""


@dataclass(frozen=True, slots=True)
class HistoryHandoverRequest(OwnerRequest[HistoryHandoverReply]):
    """Rings moving to the addressee, their new owner (a notification: id 0)."""

    op: ClassVar[str] = "history.handover"
    reply_type: ClassVar[type[OwnerReply]] = HistoryHandoverReply
    rings: Mapping[str, RingState]

    def fields(self) -> dict[str, Any]:
        return {
            "rings": {
                channel: {
                    "size": state.size,
                    "ttl": state.ttl,
                    "epoch": state.epoch,
                    "offset": state.offset,
                    "entries": [
                        [e.offset, e.stored_at, as_text(e.data), e.idem] for e in state.entries
                    ],
                }
                for channel, state in self.rings.items()
            }
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        rings = fields.get("rings")
        if not isinstance(rings, dict):
            raise ValueError("rings must be an object")
        return cls({channel: _ring_state(channel, ring) for channel, ring in rings.items()})


def _ring_state(channel: str, ring: Any) -> RingState:
    if not isinstance(ring, dict):
        raise ValueError(f"ring of {channel!r} must be an object")
    size, ttl, entries = ring.get("size"), ring.get("ttl"), ring.get("entries")
    if type(size) is not int or size < 1:
        raise ValueError(f"ring of {channel!r}: size must be an integer >= 1")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"ring of {channel!r}: ttl must be a number")
    if not isinstance(entries, list):
        raise ValueError(f"ring of {channel!r}: entries must be a list")
    return RingState(
        size,
        float(ttl),
        _str(ring, "epoch"),
        _int(ring, "offset"),
        tuple(_entry(channel, entry) for entry in entries),
    )


def _entry(channel: str, entry: Any) -> Entry:
    if (
        isinstance(entry, list)
        and len(entry) == 4
        and type(entry[0]) is int
        and type(entry[1]) in (int, float)
        and isinstance(entry[2], str)
        and (entry[3] is None or isinstance(entry[3], str))
    ):
        offset, stored_at, data, idem = entry
        return Entry(offset, float(stored_at), from_text(data), idem)
    raise ValueError(f"ring of {channel!r}: an entry must be [offset, stored_at, data, idem]")


# -- presence.list, presence.stats


class PresenceMember(NamedTuple):
    """One subscriber: its user id ("" for anonymous), client id and connection info
    (JSON text, or None)."""

    user: str
    client: str
    info: str | None


@dataclass(frozen=True, slots=True)
class PresenceListReply(OwnerReply):
    """The addressee's subscribers of the channel that have an identity."""

    members: tuple[PresenceMember, ...]

    def fields(self) -> dict[str, Any]:
        return {"members": [list(member) for member in self.members]}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        members = fields.get("members")
        if not isinstance(members, list):
            raise ValueError("members must be a list")
        return cls(tuple(_presence_member(member) for member in members))


def _presence_member(value: Any) -> PresenceMember:
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and (value[2] is None or isinstance(value[2], str))
    ):
        return PresenceMember(value[0], value[1], value[2])
    raise ValueError("a member must be [user, client, info]")


@dataclass(frozen=True, slots=True)
class _ChannelRequest(OwnerRequest[_ReplyT]):
    """A request whose only member is ``channel``."""

    channel: str

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_channel(fields))


@dataclass(frozen=True, slots=True)
class PresenceListRequest(_ChannelRequest[PresenceListReply]):
    """A worker's subscribers of ``channel`` (asked of every worker)."""

    op: ClassVar[str] = "presence.list"
    reply_type: ClassVar[type[OwnerReply]] = PresenceListReply


@dataclass(frozen=True, slots=True)
class PresenceStatsReply(OwnerReply):
    """How many subscribers of the channel the addressee has and their distinct user
    ids (no client ids or infos: small for channels with many members)."""

    clients: int
    users: tuple[str, ...]

    def fields(self) -> dict[str, Any]:
        return {"clients": self.clients, "users": list(self.users)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        users = fields.get("users")
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise ValueError("users must be a list of strings")
        return cls(_int(fields, "clients"), tuple(users))


@dataclass(frozen=True, slots=True)
class PresenceStatsRequest(_ChannelRequest[PresenceStatsReply]):
    """A worker's subscriber count and users of ``channel`` (asked of every worker)."""

    op: ClassVar[str] = "presence.stats"
    reply_type: ClassVar[type[OwnerReply]] = PresenceStatsReply


# -- pusher.join, pusher.leave, pusher.users (a Pusher presence channel's owner)


def _pusher_channel(fields: Mapping[str, Any]) -> str:
    channel = fields.get("channel")
    if (
        not isinstance(channel, str)
        or not is_internal(channel)
        or INTERNAL_MARK not in channel[1:]
        or pusher_channel_error(pusher_name(channel)) is not None
    ):
        raise ValueError("bad pusher channel")
    return channel


def _bool(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _socket(fields: Mapping[str, Any]) -> str:
    socket = fields.get("socket_id")
    if not is_socket_id(socket):
        raise ValueError("socket_id must be a Pusher socket id")
    assert isinstance(socket, str)
    return socket


def _optional_json(fields: Mapping[str, Any], name: str) -> bytes | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be JSON text or null")
    return value.encode()


def _members(value: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not isinstance(value, list) or not all(
        isinstance(m, list)
        and len(m) == 2
        and isinstance(m[0], str)
        and (m[1] is None or isinstance(m[1], str))
        for m in value
    ):
        raise ValueError("members must be [[user_id, user_info JSON text or null]]")
    return tuple((m[0], None if m[1] is None else m[1].encode()) for m in value)


def _members_value(members: Iterable[tuple[str, bytes | None]]) -> list[list[Any]]:
    return [[user, None if info is None else info.decode()] for user, info in members]


@dataclass(frozen=True, slots=True)
class PusherJoinReply(OwnerReply):
    """The subscription is in: the channel's ``members`` (one ``(user_id, user_info raw
    JSON or None)`` per user, the joining one included); or, with ``full`` > 0, it was
    refused: the channel has ``full`` users already."""

    members: tuple[tuple[str, bytes | None], ...]
    full: int = 0

    def fields(self) -> dict[str, Any]:
        return {"members": _members_value(self.members), "full": self.full}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_members(fields.get("members")), _int(fields, "full"))


@dataclass(frozen=True, slots=True)
class PusherJoinRequest(OwnerRequest[PusherJoinReply]):
    """Connection ``socket_id`` subscribes to the presence ``channel`` (an internal name)
    as ``user_id`` with ``user_info`` (raw JSON or None); the channel holds at most
    ``max_members`` users. The owner announces ``member_added`` when it is the user's
    first connection -- unless ``restore``: a subscription that already exists, told
    to an owner that does not know it (it restarted, or the channel moved to it), which
    is put back without announcing and without the member limit (a notification)."""

    op: ClassVar[str] = "pusher.join"
    reply_type: ClassVar[type[OwnerReply]] = PusherJoinReply
    channel: str
    socket_id: str
    user_id: str
    user_info: bytes | None
    max_members: int
    restore: bool = False

    def fields(self) -> dict[str, Any]:
        info = None if self.user_info is None else self.user_info.decode()
        return {
            "channel": self.channel,
            "socket_id": self.socket_id,
            "user_id": self.user_id,
            "user_info": info,
            "max_members": self.max_members,
            "restore": self.restore,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        max_members = _int(fields, "max_members")
        if max_members < 1:
            raise ValueError("max_members must be >= 1")
        user_id = _str(fields, "user_id")
        if not user_id:
            raise ValueError("user_id must not be empty")
        return cls(
            _pusher_channel(fields),
            _socket(fields),
            user_id,
            _optional_json(fields, "user_info"),
            max_members,
            _bool(fields, "restore"),
        )


@dataclass(frozen=True, slots=True)
class PusherLeaveReply(_Done):
    """The subscription is out (sent only if the leave was asked with an id)."""


@dataclass(frozen=True, slots=True)
class PusherLeaveRequest(OwnerRequest[PusherLeaveReply]):
    """Connection ``socket_id`` of ``user_id`` left the presence ``channel``; the owner
    announces ``member_removed`` when it was the user's last connection. ``user_id`` lets
    an owner that lost its roster (it restarted, or the channel just moved to it) still
    announce the user's departure once the other workers have restored their members;
    empty when the subscription never joined."""

    op: ClassVar[str] = "pusher.leave"
    reply_type: ClassVar[type[OwnerReply]] = PusherLeaveReply
    channel: str
    socket_id: str
    user_id: str = ""

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel, "socket_id": self.socket_id, "user_id": self.user_id}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        user_id = fields.get("user_id", "")
        if not isinstance(user_id, str):
            raise ValueError("user_id must be a string")
        return cls(_pusher_channel(fields), _socket(fields), user_id)


@dataclass(frozen=True, slots=True)
class PusherUsersReply(OwnerReply):
    """A presence channel's distinct ``users`` and its ``subscriptions`` count."""

    users: tuple[str, ...]
    subscriptions: int

    def fields(self) -> dict[str, Any]:
        return {"users": list(self.users), "subscriptions": self.subscriptions}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        users = fields.get("users")
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise ValueError("users must be a list of strings")
        return cls(tuple(users), _int(fields, "subscriptions"))


@dataclass(frozen=True, slots=True)
class _PusherChannelRequest(OwnerRequest[_ReplyT]):
    """A request whose only member is ``channel``, a Pusher channel's internal name."""

    channel: str

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_pusher_channel(fields))


@dataclass(frozen=True, slots=True)
class PusherUsersRequest(_PusherChannelRequest[PusherUsersReply]):
    """The users of the presence ``channel`` (an internal name), from its owner."""

    op: ClassVar[str] = "pusher.users"
    reply_type: ClassVar[type[OwnerReply]] = PusherUsersReply


# -- pusher.cache_put, pusher.cache_get (a Pusher cache channel's owner)


@dataclass(frozen=True, slots=True)
class PusherCachePutReply(_Done):
    """The event was kept (sent only if the put was asked with an id)."""


@dataclass(frozen=True, slots=True)
class PusherCachePutRequest(OwnerRequest[PusherCachePutReply]):
    """Keep ``event`` (the message subscribers got, JSON text) as the cache ``channel``'s
    (an internal name) last event for ``ttl`` seconds (a notification: id 0)."""

    op: ClassVar[str] = "pusher.cache_put"
    reply_type: ClassVar[type[OwnerReply]] = PusherCachePutReply
    channel: str
    event: bytes
    ttl: float

    def fields(self) -> dict[str, Any]:
        return {"channel": self.channel, "event": self.event.decode(), "ttl": self.ttl}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        ttl = fields.get("ttl")
        if not (type(ttl) is int or type(ttl) is float) or not ttl > 0:
            raise ValueError("ttl must be a number > 0")
        return cls(_pusher_channel(fields), _str(fields, "event").encode(), float(ttl))


@dataclass(frozen=True, slots=True)
class PusherCacheGetReply(OwnerReply):
    """The cache channel's last event (JSON text to send as is), or None: a miss."""

    event: bytes | None

    def fields(self) -> dict[str, Any]:
        return {"event": None if self.event is None else self.event.decode()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_optional_json(fields, "event"))


@dataclass(frozen=True, slots=True)
class PusherCacheGetRequest(_PusherChannelRequest[PusherCacheGetReply]):
    """The last event of the cache ``channel`` (an internal name), if younger than its
    TTL."""

    op: ClassVar[str] = "pusher.cache_get"
    reply_type: ClassVar[type[OwnerReply]] = PusherCacheGetReply


# -- pusher.occupancy, pusher.occupied (occupied/vacated webhooks, decided by the owner)


@dataclass(frozen=True, slots=True)
class PusherOccupancyReply(_Done):
    """The owner took the notice."""


@dataclass(frozen=True, slots=True)
class PusherOccupancyRequest(OwnerRequest[PusherOccupancyReply]):
    """Worker ``member`` has subscribers of ``channel`` (an internal name) when
    ``occupied``, none left otherwise. The owner sends ``channel_occupied`` when the
    channel had no worker before, ``channel_vacated`` when the last is gone -- unless
    ``restore``: what already was, told to an owner that does not know it."""

    op: ClassVar[str] = "pusher.occupancy"
    reply_type: ClassVar[type[OwnerReply]] = PusherOccupancyReply
    channel: str
    member: int
    occupied: bool
    restore: bool = False

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        channel, member = _pusher_channel(fields), _int(fields, "member")
        if member < 0:
            raise ValueError("member must be >= 0")
        return cls(channel, member, _bool(fields, "occupied"), _bool(fields, "restore"))


@dataclass(frozen=True, slots=True)
class PusherOccupiedReply(_Channels, OwnerReply):
    """The Pusher ``channels`` (internal names) with subscribers on the asked worker
    whose owner is the asker, among those whose occupancy is tracked."""


@dataclass(frozen=True, slots=True)
class PusherOccupiedRequest(OwnerRequest[PusherOccupiedReply]):
    """Asked by the owner ``owner`` of a worker of another host that it had taken for
    gone and sees again (a partition healed): which of my channels have you?"""

    op: ClassVar[str] = "pusher.occupied"
    reply_type: ClassVar[type[OwnerReply]] = PusherOccupiedReply
    owner: int

    def fields(self) -> dict[str, Any]:
        return {"owner": self.owner}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_int(fields, "owner"))


#: The owner operations by op name.
OWNER_REQUESTS: dict[str, type[OwnerRequest[Any]]] = {
    kind.op: kind
    for kind in (
        HistoryPublishRequest,
        HistoryPositionRequest,
        HistoryPositionsRequest,
        HistoryPageRequest,
        HistoryHandoverRequest,
        PresenceListRequest,
        PresenceStatsRequest,
        PusherJoinRequest,
        PusherLeaveRequest,
        PusherUsersRequest,
        PusherCachePutRequest,
        PusherCacheGetRequest,
        PusherOccupancyRequest,
        PusherOccupiedRequest,
    )
}


def encode_owner_request(request: OwnerRequest[Any], request_id: int, reply_to: int) -> bytes:
    """Inbox payload asking for ``request`` (``request_id`` 0: a notification, nobody
    waits for the answer)."""
    return encode_request(request.op, request_id, reply_to, request.fields())


def decode_owner_request(op: str, fields: Mapping[str, Any]) -> OwnerRequest[Any]:
    """The request ``op`` with the members ``fields`` (a decoded inbox request);
    ValueError for an op that is not an owner operation or a member at fault."""
    kind = OWNER_REQUESTS.get(op)
    if kind is None:
        raise ValueError(f"unknown op {op!r}")
    return kind.from_fields(fields)
