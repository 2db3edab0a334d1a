"""The native protocol in MessagePack: commands in, replies and pushes out (no I/O).

A client picks it in the upgrade with ``Sec-WebSocket-Protocol: shardws.msgpack``
(:func:`chosen`; JSON stays the default without it). Every message is then one binary
frame holding one MessagePack map with the same members as the JSON protocol
(``pure.protocol``, docs/protocol.md); a text frame is refused with error 113.

* :func:`parse_command` is ``core.parse_envelope`` for MessagePack: the same
  ``Envelope``, with ``data`` in its carried form (``pure.wiredata``: the publisher's
  MessagePack bytes, sliced out of the command, never re-encoded) and every other member
  as JSON text, so the session's checks are the JSON protocol's.
* :func:`encode_publication` builds a publication push around the data's MessagePack
  bytes (the publisher's own, or converted once from JSON): made once per publication
  per worker by ``Delivery.publish``, the same bytes for every subscriber.
* :func:`from_json` turns any other JSON reply or push of ``pure.protocol`` into its
  MessagePack form (replies go to one connection: converting them there keeps one
  source of truth for their members); ``b64data`` becomes ``data`` as bytes again.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs; stubtest reads no config

from shardws.core import (
    MAX_ID,
    MSGPACK_BIN,
    MSGPACK_EXT,
    MSGPACK_FLOAT,
    MSGPACK_KEY,
    BadEnvelope,
    Envelope,
    msgpack_members,
)
from shardws.pure.publication import Kind, Publication
from shardws.pure.wiredata import carried, msgpack_of, pack, packb

#: The subprotocol name that selects MessagePack (RFC 6455 1.9, 4.2.2).
SUBPROTOCOL = "shardws.msgpack"


def chosen(offers: list[str]) -> bool:
    """Whether the ``Sec-WebSocket-Protocol`` header lines ``offers`` ask for
    MessagePack (each line a comma-separated list of names, RFC 6455 4.1)."""
    return any(name.strip() == SUBPROTOCOL for line in offers for name in line.split(","))


#: What a ``data`` problem of ``core.msgpack_members`` is refused with (error 107).
PROBLEMS = {
    MSGPACK_KEY: "data: map keys must be strings (JSON has no other keys)",
    MSGPACK_FLOAT: "data: NaN and Infinity have no JSON form",
    MSGPACK_BIN: "data: binary is accepted only as the whole data (b64data for JSON)",
    MSGPACK_EXT: "data: MessagePack extension types are not accepted",
}


def _value(raw: bytes) -> Any:
    # One member's value: msgpack_members checked it is well-formed (UTF-8 included).
    if 0xA0 <= raw[0] <= 0xBF:  # a short string (op, channel): no unpacker needed
        return raw[1:].decode()
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def parse_command(payload: bytes) -> Envelope:
    """The command in the binary message ``payload``; raises ``BadEnvelope`` (with the
    command's id when it could be read) saying what is wrong."""
    members, problem = msgpack_members(payload)
    raw_id = members.pop("id", None)
    command_id = None if raw_id is None else _value(raw_id)
    if command_id is not None and (type(command_id) is not int or not 0 <= command_id <= MAX_ID):
        raise BadEnvelope('"id" must be an integer from 0 to 2**53')
    raw_op = members.pop("op", None)
    if raw_op is None:
        raise BadEnvelope('missing "op"', command_id)
    op = _value(raw_op)
    if not isinstance(op, str):
        raise BadEnvelope('"op" must be a string', command_id)
    raw_channel = members.pop("channel", None)
    channel = None if raw_channel is None else _value(raw_channel)
    if channel is not None and not isinstance(channel, str):
        raise BadEnvelope('"channel" must be a string', command_id)
    raw_data = members.pop("data", None)
    if problem:
        raise BadEnvelope(PROBLEMS[problem], command_id)
    fields = {}
    for key, raw in members.items():
        try:
            fields[key] = json.dumps(_value(raw), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):
            raise BadEnvelope(f"{key}: not a value the command accepts", command_id) from None
    return Envelope(
        op, command_id, channel, None if raw_data is None else carried(raw_data), fields
    )


_TYPE_PUB = packb("type") + packb("pub")
_CHANNEL = packb("channel")
_OFFSET = packb("offset")
_EPOCH = packb("epoch")
_DATA = packb("data")
_ID = packb("id")
_PUBLICATIONS = packb("publications")


def encode_publication(channel: str, publication: Publication) -> bytes:
    """The MessagePack push of ``publication`` on ``channel``: the members of
    ``protocol.encode_publication``'s, in the same order, with the data's MessagePack
    bytes embedded as they are."""
    data, kind, _event, origin, user, position = publication
    if kind is Kind.PUB:
        head = _TYPE_PUB + _CHANNEL + packb(channel)
        if position is None:
            return b"\x83" + head + _DATA + msgpack_of(data)
        offset = packb(position.offset)
        epoch = packb(position.epoch)
        return b"\x85" + head + _OFFSET + offset + _EPOCH + epoch + _DATA + msgpack_of(data)
    kind_name = "join" if kind is Kind.JOIN else "leave"
    return packb({"type": kind_name, "channel": channel, "user": user, "client": origin})


def encode_history(command_id: int | None, epoch: str, offset: int, pushes: list[bytes]) -> bytes:
    """Reply to ``history`` (``protocol.encode_history``'s members, in the same order),
    with ``pushes`` -- each a MessagePack push of :func:`encode_publication` -- embedded
    as they are: the publishers' MessagePack data is never re-encoded."""
    members = b"" if command_id is None else _ID + packb(command_id)
    members += b"\xa2ok\xc3" + _EPOCH + packb(epoch) + _OFFSET + packb(offset)
    members += _PUBLICATIONS + _array_header(len(pushes)) + b"".join(pushes)
    return bytes([0x80 | (5 if command_id is not None else 4)]) + members


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _with_bytes(push: Any) -> Any:
    # A JSON push's "b64data" (whole-binary MessagePack data) is "data" as bytes here.
    if isinstance(push, dict) and "b64data" in push:
        return {
            ("data" if key == "b64data" else key): (
                base64.b64decode(value) if key == "b64data" else value
            )
            for key, value in push.items()
        }
    return push


_OK = b'{"ok":true}'
_OK_TAIL = b',"ok":true}'


def from_json(message: bytes) -> bytes:
    """The MessagePack form of a JSON reply or push of ``pure.protocol``."""
    # The plain ok reply (one per publish) without the JSON parse.
    if message == _OK:
        return b"\x81\xa2ok\xc3"
    if message.startswith(b'{"id":') and message.endswith(_OK_TAIL):
        digits = message[6 : -len(_OK_TAIL)]
        if digits.isdigit():
            return b"\x82\xa2id" + packb(int(digits)) + b"\xa2ok\xc3"
    value = _with_bytes(json.loads(message))
    publications = value.get("publications") if isinstance(value, dict) else None
    if isinstance(publications, list):  # a history reply
        value["publications"] = [_with_bytes(push) for push in publications]
    return pack(value)
