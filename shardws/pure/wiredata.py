"""A publication's data in its publisher's format, and its form in the other format (no I/O).

A native client publishes in JSON (text frames) or MessagePack (binary frames, the
``shardws.msgpack`` subprotocol, ``pure.msgpackwire``). Its data travels on the bus, in
history rings and in owner messages exactly as it was published, one ``bytes``:

* JSON data is the publisher's JSON text as is (it never starts with :data:`MSGPACK`).
* MessagePack data is :data:`MSGPACK` (the byte 0xC1, which MessagePack never uses and
  which no UTF-8 text starts with) followed by the publisher's MessagePack bytes.

A subscriber in the publisher's format gets those bytes unchanged; a subscriber in the
other format gets them converted, once per worker per publication (``Delivery.publish``
encodes once per wire format). The rules (docs/protocol.md, "Data across formats"):

* MessagePack data is checked at publish (``core.msgpack_members``): map keys must be
  strings; floats must be finite; no extension types; binary (``bin``) only as the whole
  data. Anything else is refused with error 107 naming the rule, so every accepted
  publication has a JSON form.
* Whole-binary data reaches JSON subscribers as ``"b64data": "<base64>"`` instead of
  ``"data"`` (Centrifugo's form); MessagePack subscribers get the bytes.
* JSON data reaches MessagePack subscribers as the same values; an integer outside
  MessagePack's 64 bits becomes a float64 (what ``JSON.parse`` makes of it too).
* Integers between 2^53 and 2^64 travel exactly in both formats (JSON text has no
  limit; a JavaScript ``JSON.parse`` rounds them, as it would any JSON publisher's).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs; stubtest reads no config

#: The first byte of MessagePack data in its carried form (0xC1: "never used" in the
#: MessagePack specification; never the first byte of UTF-8 text).
MSGPACK = b"\xc1"

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def carried(msgpack_data: bytes) -> bytes:
    """The carried form of a MessagePack publisher's ``msgpack_data``."""
    return MSGPACK + msgpack_data


def is_msgpack(data: bytes) -> bool:
    """Whether carried ``data`` came from a MessagePack publisher."""
    return data[:1] == MSGPACK


def _refuse_ext(code: int, _data: bytes) -> Any:
    raise ValueError(f"MessagePack extension types are not accepted (ext {code})")


def unpack(raw: bytes) -> Any:
    """The value of MessagePack ``raw`` (one object, nothing after it); ValueError if it
    is not well-formed, has invalid UTF-8 in a string or an extension type."""
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=False, ext_hook=_refuse_ext, use_list=True
        )
    except ValueError:
        raise
    except Exception as exc:  # msgpack's own errors (ExtraData, FormatError, StackError)
        raise ValueError(f"not MessagePack: {exc}") from None


def json_member(data: bytes) -> bytes:
    """The member of a JSON push that carries ``data``: ``"data":<JSON>``, or
    ``"b64data":"<base64>"`` for whole-binary MessagePack data."""
    if data[:1] != MSGPACK:
        return b'"data":' + data
    value = unpack(data[1:])
    if isinstance(value, bytes):
        return b'"b64data":"' + base64.b64encode(value) + b'"'
    return b'"data":' + json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _floats_for_overflow(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _floats_for_overflow(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_floats_for_overflow(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT_MIN <= value <= _INT_MAX else float(value)
    return value


def packb(value: Any) -> bytes:
    """``msgpack.packb`` (``bin`` for bytes), typed; OverflowError past 64 bits."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def pack(value: Any) -> bytes:
    """MessagePack of a JSON value; integers past 64 bits become float64."""
    try:
        return packb(value)
    except OverflowError:
        return packb(_floats_for_overflow(value))


def msgpack_of(data: bytes) -> bytes:
    """The MessagePack bytes of carried ``data``: the publisher's own for MessagePack
    data, converted for JSON data."""
    if data[:1] == MSGPACK:
        return data[1:]
    return pack(json.loads(data))


def as_text(data: bytes) -> str:
    """Carried ``data`` as a string, for the JSON of owner requests and replies
    (``pure.control``): JSON text as it is; MessagePack data as NUL (never the first
    character of JSON text) followed by its base64."""
    if data[:1] == MSGPACK:
        return "\x00" + base64.b64encode(data[1:]).decode()
    return data.decode()


def from_text(text: str) -> bytes:
    """The carried data of ``as_text``'s string; ValueError for bad base64."""
    if text[:1] == "\x00":
        try:
            return MSGPACK + base64.b64decode(text[1:], validate=True)
        except ValueError:
            raise ValueError("bad base64 in MessagePack data") from None
    return text.encode()
