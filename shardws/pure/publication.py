"""A publication in the form every wire protocol starts from, and its bus record (no I/O).

Whatever reaches a channel's subscribers — a client's or a backend's publication, an
owner's sequenced one, a presence join or leave — travels between workers and hosts as a
:class:`Publication`, not as any one protocol's push: each worker encodes it once per wire
format that has subscribers there (``server.delivery.Delivery.publish``). The channel is
not part of it: it is the bus topic.

A bus record is a fixed header followed by the variable fields::

    HEAD = kind (u8), len(event) (u16), len(origin) (u16), len(user) (u16),
           len(epoch) (u16), offset (u64)
    record = HEAD + event + origin + user + epoch + data

so the owners' order and gap checks read a position without parsing JSON, and a record
is taken apart with one ``unpack`` and five slices. ``data`` is the publisher's data in
its own format (``pure.wiredata``), embedded verbatim by every encoder of that format.

Guarantees: ``decode(encode(p)) == p`` for every valid publication; ``decode`` raises
ValueError (never anything else) for bytes that are not a record.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from shardws.pure.history import Position

_HEAD = struct.Struct("!BHHHHQ")
_MAX_FIELD = 0xFFFF  # each variable header field is at most this many bytes


class Kind(enum.IntEnum):
    """What a publication is."""

    PUB = 0  # a publication of ``data`` to the channel
    JOIN = 1  # ``user`` (connection ``origin``) joined the channel
    LEAVE = 2  # ``user`` (connection ``origin``) left the channel


_KINDS = tuple(Kind)  # by value: a tuple index is cheaper than Kind(value) per record


class Publication(NamedTuple):
    """One publication to a channel, in no protocol's form.

    ``data`` is carried data (``pure.wiredata``: the publisher's JSON text, or its
    MessagePack bytes after a 0xC1 tag; empty for a join or leave); ``event`` the event name where a
    protocol has one ("" for the native protocol); ``origin`` the client id of the
    connection it came from ("" from a backend), for protocols that do not echo a
    publication to its sender and for presence; ``user`` the user id of a join or leave
    (or of the sender, where a protocol shows it); ``position`` its place in the
    channel's history (None outside a history namespace)."""

    data: bytes
    kind: Kind = Kind.PUB
    event: str = ""
    origin: str = ""
    user: str = ""
    position: Position | None = None


def encode(publication: Publication) -> bytes:
    """The bus record of ``publication``. Raises ValueError if a text field is longer
    than 65,535 bytes of UTF-8 (channel names, client and user ids are far shorter)."""
    data, kind, event, origin, user, position = publication
    event_b = event.encode()
    origin_b = origin.encode()
    user_b = user.encode()
    if position is None:
        epoch_b = b""
        offset = 0
    else:
        epoch_b = position.epoch.encode()
        offset = position.offset
        if not epoch_b:
            raise ValueError("a position needs an epoch")
    if max(len(event_b), len(origin_b), len(user_b), len(epoch_b)) > _MAX_FIELD:
        raise ValueError("a publication's event, origin, user and epoch are at most 65535 bytes")
    head = _HEAD.pack(kind, len(event_b), len(origin_b), len(user_b), len(epoch_b), offset)
    return b"".join((head, event_b, origin_b, user_b, epoch_b, data))


def decode(record: bytes) -> Publication:
    """The publication of a bus ``record``. Raises ValueError if it is not one."""
    try:
        kind, n_event, n_origin, n_user, n_epoch, offset = _HEAD.unpack_from(record)
        at = _HEAD.size
        event = record[at : at + n_event].decode() if n_event else ""
        at += n_event
        origin = record[at : at + n_origin].decode() if n_origin else ""
        at += n_origin
        user = record[at : at + n_user].decode() if n_user else ""
        at += n_user
        position = Position(record[at : at + n_epoch].decode(), offset) if n_epoch else None
        at += n_epoch
        if at > len(record):
            raise ValueError("a publication record is shorter than its header says")
        return Publication(record[at:], _KINDS[kind], event, origin, user, position)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"not a publication record: {exc}") from None
