"""Pure-Python reference implementation of ``shardws._core``, written independently.

Same public API and the same accept/reject decisions, error classes and attributes as the
Cython module; ``tests/test_core.py`` runs one suite over both and compares them on
generated input. It is also the fallback when the extension is not built (slow: use it
for development and tests, not production).

It deliberately shares no parsing code with the Cython scanner: UTF-8 is checked by
CPython's strict codec (which follows RFC 3629: no overlongs, no encoded surrogates,
nothing above U+10FFFF), strings by ``json.decoder.scanstring`` and values by the
stdlib ``json`` scanner, tightened to RFC 8259 (no NaN/Infinity) and to the depth limit.
Byte spans are recovered from character spans by re-encoding, which is exact because
UTF-8 decoding is a bijection on valid input.

See ``shardws._core`` for the guarantees of each function.
"""

from __future__ import annotations

import json
import json.decoder
import os
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_ID",
    "BadEnvelope",
    "Deflated",
    "DeltaError",
    "Envelope",
    "InvalidUTF8",
    "Sink",
    "build_frame",
    "build_text_frame",
    "delta_apply",
    "delta_checksum",
    "delta_create",
    "fanout",
    "msgpack_members",
    "parse_envelope",
]

#: Maximum JSON nesting depth accepted; the top-level object counts as depth 1.
MAX_DEPTH: Final = 32
#: Largest accepted command id (2**53: exact in every JSON peer's IEEE double).
MAX_ID: Final = 2**53


class InvalidUTF8(ValueError):
    """The text frame is not valid UTF-8 (RFC 3629); close with 1007 (RFC 6455 8.1)."""


class BadEnvelope(ValueError):
    """Valid UTF-8 but not an acceptable command; reply with an error, keep the connection.

    ``id`` is the command id when it could be read, else None.
    """

    def __init__(self, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.id = id


class Envelope:
    """One parsed client command. Attributes are read-only."""

    __slots__ = ("_channel", "_data", "_fields", "_id", "_op")

    def __init__(
        self,
        op: str,
        id: int | None = None,
        channel: str | None = None,
        data: bytes | None = None,
        fields: dict[str, bytes] | None = None,
    ) -> None:
        self._op = op
        self._id = id
        self._channel = channel
        self._data = data
        self._fields = {} if fields is None else fields

    @property
    def op(self) -> str:
        return self._op

    @property
    def id(self) -> int | None:
        return self._id

    @property
    def channel(self) -> str | None:
        return self._channel

    @property
    def data(self) -> bytes | None:
        return self._data

    @property
    def fields(self) -> dict[str, bytes]:
        return self._fields

    def __repr__(self) -> str:
        return (
            f"Envelope(op={self._op!r}, id={self._id!r}, channel={self._channel!r}, "
            f"data={self._data!r}, fields={self._fields!r})"
        )


# ------------------------------------------------------------------------ parsing

_WS = re.compile(r"[ \t\n\r]*")  # RFC 8259 section 2 whitespace, nothing else
_ID = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class _Number:
    """Stands in for parsed numbers: only their raw text matters here, and ``int()`` on
    a long digit string would hit CPython's int/str conversion limit."""


_NUMBER = _Number()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 section 6)")


def _number(_text: str) -> _Number:
    return _NUMBER


class _Object:
    """A decoded nested object, keeping the values of duplicate names (a dict would keep
    only the last one and hide how deep the others nest)."""

    __slots__ = ("values",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.values = [value for _, value in pairs]


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Object,
    parse_constant=_reject_constant,
    parse_int=_number,
    parse_float=_number,
    strict=True,
)
# Neither is in typeshed; both are the C accelerators in CPython (``_json``).
_scan_value: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_scan_key: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _depth(value: object) -> int:
    """Container nesting depth of a decoded value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, _Object):
            children: list[Any] = item.values
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def parse_envelope(buf: bytes) -> Envelope:
    """Parse one client command; raise ``InvalidUTF8`` or ``BadEnvelope``."""
    if not isinstance(buf, bytes):
        raise TypeError(f"expected bytes, got {type(buf).__name__}")
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUTF8(f"invalid UTF-8 at byte {exc.start}") from None

    members = _split_members(text)
    ascii_only = len(text) == len(buf)

    def raw(start: int, end: int) -> bytes:
        # Character offsets equal byte offsets only for ASCII input.
        if ascii_only:
            return buf[start:end]
        return text[start:end].encode("utf-8")

    seen: dict[str, tuple[Any, int, int]] = {}
    duplicates: set[str] = set()
    for key, value, start, end in members:
        if key in seen:
            duplicates.add(key)
        else:
            seen[key] = (value, start, end)

    id_value: int | None = None
    id_bad = False
    if "id" in seen and "id" not in duplicates:
        _, start, end = seen["id"]
        literal = text[start:end]
        if _ID.fullmatch(literal) and len(literal) <= 16 and int(literal) <= MAX_ID:
            id_value = int(literal)
        else:
            id_bad = True

    if duplicates:
        raise BadEnvelope(f"duplicate member name {sorted(duplicates)[0]!r}", id_value)
    if id_bad:
        raise BadEnvelope('"id" must be an integer from 0 to 2**53')
    if "op" not in seen:
        raise BadEnvelope('missing "op"', id_value)
    op = seen["op"][0]
    if not isinstance(op, str):
        raise BadEnvelope('"op" must be a string', id_value)
    channel = None
    if "channel" in seen:
        channel = seen["channel"][0]
        if not isinstance(channel, str):
            raise BadEnvelope('"channel" must be a string', id_value)

    data = raw(*seen["data"][1:]) if "data" in seen else None
    fields = {
        key: raw(start, end)
        for key, (_, start, end) in seen.items()
        if key not in ("op", "id", "channel", "data")
    }
    return Envelope(op, id_value, channel, data, fields)


def _split_members(text: str) -> list[tuple[str, Any, int, int]]:
    """(key, decoded value, start, end) of each top-level member, in input order.

    Raises BadEnvelope (without id) unless ``text`` is exactly one JSON object within the
    depth limit.
    """
    members: list[tuple[str, Any, int, int]] = []
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        raise BadEnvelope("command must be a JSON object")
    pos = _skip_ws(text, pos + 1)
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            if not text.startswith('"', pos):
                raise BadEnvelope("invalid JSON: expected a member name")
            try:
                key, pos = _scan_key(text, pos + 1, True)
            except ValueError as exc:
                raise BadEnvelope(f"invalid JSON: {exc}") from None
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos):
                raise BadEnvelope("invalid JSON: expected ':'")
            start = _skip_ws(text, pos + 1)
            try:
                value, end = _scan_value(text, start)
            except StopIteration:
                raise BadEnvelope("invalid JSON: expected a value") from None
            except RecursionError:
                # Only reachable far beyond MAX_DEPTH.
                raise BadEnvelope(f"JSON nesting deeper than {MAX_DEPTH}") from None
            except ValueError as exc:
                raise BadEnvelope(f"invalid JSON: {exc}") from None
            if 1 + _depth(value) > MAX_DEPTH:
                raise BadEnvelope(f"JSON nesting deeper than {MAX_DEPTH}")
            members.append((key, value, start, end))
            pos = _skip_ws(text, end)
            if text.startswith(",", pos):
                pos = _skip_ws(text, pos + 1)
                continue
            if text.startswith("}", pos):
                pos += 1
                break
            raise BadEnvelope("invalid JSON: expected ',' or '}'")
    if _skip_ws(text, pos) != len(text):
        raise BadEnvelope("invalid JSON: data after the object")
    return members


# ------------------------------------------------------------- frames and fan-out


def build_text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 section 5.2), header and payload together."""
    return build_frame(payload)


def build_frame(payload: bytes, binary: bool = False, compressed: bool = False) -> bytes:
    """One unmasked, final text (or ``binary``) frame, RSV1 set when ``compressed``."""
    if not isinstance(payload, bytes):
        raise TypeError(f"expected bytes, got {type(payload).__name__}")
    first = (0x82 if binary else 0x81) | (0x40 if compressed else 0)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


# --------------------------------------------------------------------------- MessagePack

#: Problems ``msgpack_members`` reports of a command's ``data`` (0: none).
MSGPACK_KEY = 1
MSGPACK_FLOAT = 2
MSGPACK_BIN = 3
MSGPACK_EXT = 4


def _is_str_head(c: int) -> bool:
    return 0xA0 <= c <= 0xBF or 0xD9 <= c <= 0xDB


def _mp_skip(buf: bytes, i: int, depth: int, problem: list[int]) -> int:
    """End of the MessagePack object at ``i``, or -1 when it is malformed (see the
    extension's ``_mp_skip``); the first problem found is kept in ``problem[0]``."""
    n = len(buf)
    if i >= n or depth > MAX_DEPTH:
        return -1
    c = buf[i]
    i += 1

    def note(code: int) -> None:
        if problem[0] == 0:
            problem[0] = code

    if c <= 0x7F or c >= 0xE0 or c in (0xC0, 0xC2, 0xC3):
        return i
    count = length = width = 0
    kind = 0
    if c <= 0x8F:
        count, kind = c & 0x0F, 5
    elif c <= 0x9F:
        count, kind = c & 0x0F, 4
    elif c <= 0xBF:
        length, kind = c & 0x1F, 1
    elif c == 0xC1:
        return -1
    elif c <= 0xC6:
        width, kind = 1 << (c - 0xC4), 2
    elif c <= 0xC9:
        width, kind = 1 << (c - 0xC7), 3
    elif c in (0xCA, 0xCB):
        width = 4 if c == 0xCA else 8
        if i + width > n:
            return -1
        value = struct.unpack_from("!f" if c == 0xCA else "!d", buf, i)[0]
        if value != value or value in (float("inf"), float("-inf")):
            note(MSGPACK_FLOAT)
        return i + width
    elif c <= 0xD3:
        length = 1 << ((c - 0xCC) & 3)
        return i + length if i + length <= n else -1
    elif c <= 0xD8:
        note(MSGPACK_EXT)
        length = 1 + (1 << (c - 0xD4))
        return i + length if i + length <= n else -1
    elif c <= 0xDB:
        width, kind = 1 << (c - 0xD9), 1
    elif c <= 0xDD:
        width, kind = (2 if c == 0xDC else 4), 4
    else:
        width, kind = (2 if c == 0xDE else 4), 5
    if width:
        if i + width > n:
            return -1
        value = int.from_bytes(buf[i : i + width], "big")
        if kind >= 4:
            count = value
        else:
            length = value
        i += width
    if kind <= 3:
        if kind == 3:
            length += 1  # the extension's type byte
            note(MSGPACK_EXT)
        elif kind == 2 and depth > 0:
            note(MSGPACK_BIN)
        if length > n - i:
            return -1
        end = i + length
        if kind == 1 and not utf8_valid(buf[i:end]):
            return -1
        return end
    if count > n - i:  # every element takes at least one byte
        return -1
    for _ in range(count):
        if kind == 5:
            if not (i < n and _is_str_head(buf[i])):
                note(MSGPACK_KEY)
            i = _mp_skip(buf, i, depth + 1, problem)
            if i < 0:
                return -1
        i = _mp_skip(buf, i, depth + 1, problem)
        if i < 0:
            return -1
    return i


def msgpack_members(buf: bytes) -> tuple[dict[str, bytes], int]:
    """The members of a command in MessagePack: ``({name: raw value bytes}, problem)``
    (see the extension's docstring); ``BadEnvelope`` unless ``buf`` is one well-formed
    map with distinct string keys."""
    if not isinstance(buf, bytes):
        raise TypeError(f"expected bytes, got {type(buf).__name__}")
    n = len(buf)
    c = buf[0] if n else 0
    if 0x80 <= c <= 0x8F:
        count, i = c & 0x0F, 1
    elif (c == 0xDE and n >= 3) or (c == 0xDF and n >= 5):
        width = 2 if c == 0xDE else 4
        count, i = int.from_bytes(buf[1 : 1 + width], "big"), 1 + width
    else:
        raise BadEnvelope("command must be a MessagePack map")
    members: dict[str, bytes] = {}
    problem = [0]
    for _ in range(count):
        c = buf[i] if i < n else 0
        if not _is_str_head(c):
            raise BadEnvelope("command member names must be strings")
        end = _mp_skip(buf, i, 1, [0])
        if end < 0:
            raise BadEnvelope("command is not well-formed MessagePack")
        key = buf[i + (1 if c <= 0xBF else 1 + (1 << (c - 0xD9))) : end].decode()
        if key in members:
            raise BadEnvelope(f"duplicate member name {key!r}")
        start = end
        i = _mp_skip(buf, start, 0, problem if key == "data" else [0])
        if i < 0:
            raise BadEnvelope("command is not well-formed MessagePack")
        members[key] = buf[start:i]
    if i != n:
        raise BadEnvelope("one MessagePack map per message, nothing after it")
    return members, problem[0]


def utf8_valid(buf: bytes) -> bool:
    """True if ``buf`` is well-formed UTF-8 (RFC 3629; Python's codec is just as strict)."""
    if not isinstance(buf, bytes):
        raise TypeError(f"expected bytes, got {type(buf).__name__}")
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Deflated:
    """The permessage-deflate frames of one message, one per window size, built at the
    first request (see ``shardws._core.Deflated``)."""

    __slots__ = ("_binary", "_frames", "_level", "_payload", "_saved")

    def __init__(self, payload: bytes, level: int = 6, binary: bool = False) -> None:
        if not isinstance(payload, bytes):
            raise TypeError(f"expected bytes, got {type(payload).__name__}")
        if not 1 <= level <= 9:
            raise ValueError(f"level must be 1..9, got {level}")
        self._payload = payload
        self._level = level
        self._binary = binary
        self._frames: dict[int, bytes] = {}
        self._saved = 0

    @property
    def saved(self) -> int:
        return self._saved

    def frame(self, window_bits: int) -> bytes:
        """The compressed frame for a ``window_bits`` connection (even if not smaller)."""
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be 9..15, got {window_bits}")
        if window_bits not in self._frames:
            # A fresh compressor per message: trivially free of earlier context.
            compressor = zlib.compressobj(self._level, zlib.DEFLATED, -window_bits)
            data = compressor.compress(self._payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            assert data.endswith(b"\x00\x00\xff\xff")
            data = data[:-4]
            self._frames[window_bits] = build_frame(data, self._binary, compressed=True)
        return self._frames[window_bits]


# Coalescing state of this process; see _core.pyx for the design.
_generation = 1
_dirty: list[Sink] = []
_overflowed: list[Sink] = []
_drops = 0

DEFAULT_MAX_PENDING = 1 << 20


class Sink:
    """One subscriber's write side, captured once per connection.

    The owner calls ``close()`` before queueing a close frame and at the latest in
    ``connection_lost``, so ``fanout`` never writes to a reused fd number; a sink whose
    transport reports ``is_closing()`` is also closed by ``fanout``. Pending output
    never exceeds ``max_pending`` (see ``fanout``).
    """

    __slots__ = (
        "_closed",
        "_cork",
        "_cork_base",
        "_cork_bytes",
        "_deflate_bits",
        "_direct",
        "_fd",
        "_gen",
        "_get_write_buffer_size",
        "_is_closing",
        "_max_pending",
        "_write",
        "drops",
        "overflowed",
        "owner",
    )

    def __init__(
        self,
        transport: Any,
        max_pending: int = DEFAULT_MAX_PENDING,
        owner: Any = None,
        direct: bool = True,
        deflate_bits: int = 0,
    ) -> None:
        # direct=False (TLS): frames only ever go through transport.write.
        self._direct = direct
        fd = -1
        if direct:
            sock = transport.get_extra_info("socket")
            if sock is None:
                raise ValueError("transport has no socket")
            fd = sock.fileno()
            if fd < 0:
                raise ValueError("transport socket is closed")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._fd: int = fd
        self._write = transport.write
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._closed = False
        self._gen = 0
        self._cork: list[bytes] | None = None
        self._cork_bytes = 0
        self._cork_base = 0
        self._max_pending = max_pending
        if deflate_bits and not 9 <= deflate_bits <= 15:
            raise ValueError(f"deflate_bits must be 0 or 9..15, got {deflate_bits}")
        self._deflate_bits = deflate_bits
        self.drops = 0
        self.overflowed = False
        self.owner = owner

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def corked_bytes(self) -> int:
        return self._cork_bytes

    @property
    def deflate_bits(self) -> int:
        return self._deflate_bits

    def send(self, frame: bytes) -> bool:
        """Write one frame to this sink alone, in order with the fan-out."""
        if not isinstance(frame, bytes):
            raise TypeError(f"expected bytes, got {type(frame).__name__}")
        return _deliver(self, frame, False)

    def flush(self) -> None:
        """Write this sink's corked frames now."""
        _flush_sink(self)

    def close(self) -> None:
        """Stop fan-out to this sink and forget corked frames; idempotent."""
        self._closed = True
        self._cork = None
        self._cork_bytes = 0

    def __repr__(self) -> str:
        return f"Sink(fd={self._fd}, closed={self._closed})"


def _hand_to_transport(sink: Sink, chunk: bytes) -> bool:
    try:
        sink._write(chunk)
    except Exception:
        sink._closed = True
        return False
    return True


def _write_now(sink: Sink, data: bytes, buffered: int) -> bool:
    """``os.write`` stands in for ``send(MSG_DONTWAIT)``: the transport's socket is
    already non-blocking, and CPython ignores SIGPIPE, so a dead peer gives EPIPE."""
    if buffered or not sink._direct:
        return _hand_to_transport(sink, data)
    if not data:
        return True
    try:
        sent = os.write(sink._fd, data)
    except (BlockingIOError, InterruptedError):
        sent = 0  # the transport retries when the socket is writable
    except OSError:
        sent = 0  # EPIPE, ECONNRESET...: the transport's write path reports it
    return sent == len(data) or _hand_to_transport(sink, data[sent:])


def _overflow(sink: Sink, drop: bool) -> bool:
    global _drops
    if drop:
        sink.drops += 1
        _drops += 1
        return False
    sink.overflowed = True
    sink._closed = True
    sink._cork = None
    sink._cork_bytes = 0
    _overflowed.append(sink)
    return False


def _deliver(sink: Sink, frame: bytes, drop: bool) -> bool:
    if not isinstance(sink, Sink):
        raise TypeError(f"expected Sink, got {type(sink).__name__}")
    if sink._closed:
        return False
    n = len(frame)
    if sink._cork is not None:
        # Only a sink that was already behind when its cork started is capped here; a
        # caught-up one may take one iteration's batch (bounded by what was read).
        if sink._cork_base and sink._cork_base + sink._cork_bytes + n > sink._max_pending:
            return _overflow(sink, drop)
        sink._cork.append(frame)
        sink._cork_bytes += n
        return True
    try:
        if sink._is_closing():
            sink._closed = True
            return False
        buffered = sink._get_write_buffer_size()
    except Exception:
        sink._closed = True
        return False
    # A caught-up sink takes any single frame; the cap bounds the backlog.
    if buffered and buffered + n > sink._max_pending:
        return _overflow(sink, drop)
    if buffered or sink._gen == _generation:
        sink._cork = [frame]
        sink._cork_bytes = n
        sink._cork_base = buffered
        _dirty.append(sink)
        return True
    sink._gen = _generation
    return _write_now(sink, frame, 0)


def _flush_sink(sink: Sink) -> None:
    cork = sink._cork
    if cork is None:
        return
    sink._cork = None
    sink._cork_bytes = 0
    if sink._closed:
        return
    data = cork[0] if len(cork) == 1 else b"".join(cork)
    try:
        buffered = sink._get_write_buffer_size()
    except Exception:
        sink._closed = True
        return
    _write_now(sink, data, buffered)


def fanout(
    frame: bytes, sinks: list[Sink], drop: bool = False, deflated: Deflated | None = None
) -> int:
    """Write ``frame`` (or, to compressing sinks, ``deflated``'s frame for their window)
    to every open sink; return how many sinks took it. Same contract as the Cython
    version: call ``flush()`` once per loop iteration."""
    if not isinstance(frame, bytes):
        raise TypeError(f"expected bytes, got {type(frame).__name__}")
    if not isinstance(sinks, list):
        raise TypeError(f"expected list, got {type(sinks).__name__}")
    if deflated is not None and not isinstance(deflated, Deflated):
        raise TypeError(f"expected Deflated, got {type(deflated).__name__}")
    count = 0
    for sink in sinks:
        if not isinstance(sink, Sink):
            raise TypeError(f"expected Sink, got {type(sink).__name__}")
        chosen = frame
        if sink._deflate_bits and deflated is not None:
            chosen = deflated.frame(sink._deflate_bits)
        if _deliver(sink, chosen, drop):
            count += 1
            if deflated is not None and chosen is not frame:
                deflated._saved += len(frame) - len(chosen)
    return count


def flush() -> int:
    """Send every corked sink's frames and start a new loop generation."""
    global _generation, _dirty
    _generation += 1
    if not _dirty:
        return 0
    dirty, _dirty = _dirty, []
    for sink in dirty:
        _flush_sink(sink)
    return len(dirty)


def take_overflowed() -> list[Sink]:
    """Sinks closed by the disconnect policy since the last call."""
    global _overflowed
    result, _overflowed = _overflowed, []
    return result


def total_drops() -> int:
    """Frames skipped by the drop policy in this process so far."""
    return _drops


def release_handshake(transport: Any) -> None:
    """Reference of ``_core.release_handshake``: picows's attributes are read-only from
    Python, so the reference keeps them (only memory differs, never behaviour)."""
    if transport is None:
        raise TypeError("transport must not be None")


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second refill a bucket of ``burst`` tokens;
    see ``_core.TokenBucket``."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = float(now)

    def take(self, now: float) -> bool:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens


# --------------------------------------------------------------------------- fossil deltas
# The Fossil SCM delta format (www/delta_format.wiki in Fossil's sources): a header
# "<target length>\n", then "<n>@<offset>," (copy n bytes of the source from offset) and
# "<n>:<n bytes>" (insert literal bytes) commands, then "<checksum>;". Integers are in
# Fossil's base-64 digits, most significant first. Written from the format and the
# encoder's description; tests/test_core.py checks the outputs byte for byte against
# the npm package fossil-delta (Centrifugo's clients apply it).

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_DIGIT_VALUE = {digit: value for value, digit in enumerate(_DIGITS)}
_NHASH = 16  # the rolling hash's window, and the source's block size
_MAX_INT_DIGITS = 10  # 60 bits: longer integers are refused by delta_apply
_MAX_CANDIDATES = 250  # source blocks tried per target position (as Fossil does)


class DeltaError(ValueError):
    """A delta that does not apply to the given source (malformed, or made from another
    source: its size or checksum does not match). The message says which rule failed."""


def _put_int(out: bytearray, value: int) -> None:
    if value == 0:
        out += b"0"
        return
    digits = bytearray()
    while value:
        digits.append(_DIGITS[value & 63])
        value >>= 6
    digits.reverse()
    out += digits


def _digit_count(value: int) -> int:
    count = 1
    limit = 64
    while value >= limit:
        count += 1
        limit <<= 6
    return count


def delta_checksum(data: bytes) -> int:
    """Fossil's 32-bit checksum: the sum of ``data`` read as big-endian 32-bit words
    (the last one padded with zero bytes), modulo 2**32."""
    total = 0
    whole = len(data) - len(data) % 4
    for at in range(0, whole, 4):
        total += int.from_bytes(data[at : at + 4], "big")
    if whole < len(data):
        total += int.from_bytes(data[whole:].ljust(4, b"\0"), "big")
    return total & 0xFFFFFFFF


def _window_hash(data: bytes, at: int) -> tuple[int, int]:
    a = b = 0
    for i in range(_NHASH):
        x = data[at + i]
        a += x
        b += (_NHASH - i) * x
    return a & 0xFFFF, b & 0xFFFF


def delta_create(source: bytes, target: bytes) -> bytes:
    """A fossil delta that turns ``source`` into ``target`` (``delta_apply(source,
    delta) == target``): the same bytes as Fossil's encoder and npm ``fossil-delta``'s
    ``createDelta``. Linear in the inputs' sizes (at most 250 candidates per position)."""
    if not isinstance(source, bytes) or not isinstance(target, bytes):
        raise TypeError("delta_create takes two bytes objects")
    out = bytearray()
    len_out = len(target)
    len_src = len(source)
    _put_int(out, len_out)
    out += b"\n"
    if len_src <= _NHASH:
        _put_int(out, len_out)
        out += b":"
        out += target
        _put_int(out, delta_checksum(target))
        out += b";"
        return bytes(out)
    n_hash = -(-len_src // _NHASH)
    collide = [-1] * n_hash
    landmark = [-1] * n_hash
    for at in range(0, len_src - _NHASH, _NHASH):
        a, b = _window_hash(source, at)
        slot = (a | b << 16) % n_hash
        collide[at // _NHASH] = landmark[slot]
        landmark[slot] = at // _NHASH
    base = 0
    while base + _NHASH < len_out:
        a, b = _window_hash(target, base)
        i = 0
        best_count = best_offset = best_literal = 0
        while True:
            block = landmark[(a | b << 16) % n_hash]
            tries = _MAX_CANDIDATES
            while block >= 0 and tries > 0:
                tries -= 1
                start = block * _NHASH
                # Forward from the anchor, then backward (not before target[base]).
                forward = 0
                while (
                    start + forward < len_src
                    and base + i + forward < len_out
                    and source[start + forward] == target[base + i + forward]
                ):
                    forward += 1
                back = 1
                while (
                    back < start and back <= i and source[start - back] == target[base + i - back]
                ):
                    back += 1
                back -= 1
                count = forward + back
                offset = start - back
                literal = i - back
                cost = _digit_count(literal) + _digit_count(count) + _digit_count(offset) + 3
                if count >= cost and count > best_count:
                    best_count, best_offset, best_literal = count, offset, literal
                block = collide[block]
            if best_count:
                if best_literal:
                    _put_int(out, best_literal)
                    out += b":"
                    out += target[base : base + best_literal]
                    base += best_literal
                base += best_count
                _put_int(out, best_count)
                out += b"@"
                _put_int(out, best_offset)
                out += b","
                break
            if base + i + _NHASH >= len_out:
                _put_int(out, len_out - base)
                out += b":"
                out += target[base:]
                base = len_out
                break
            old = target[base + i]
            new = target[base + i + _NHASH]
            a = (a - old + new) & 0xFFFF
            b = (b - _NHASH * old + a) & 0xFFFF
            i += 1
    if base < len_out:
        _put_int(out, len_out - base)
        out += b":"
        out += target[base:]
    _put_int(out, delta_checksum(target))
    out += b";"
    return bytes(out)


def _get_int(delta: bytes, at: int) -> tuple[int, int]:
    value = 0
    start = at
    while at < len(delta) and delta[at] in _DIGIT_VALUE:
        value = value << 6 | _DIGIT_VALUE[delta[at]]
        at += 1
    if at == start:
        raise DeltaError(f"expected a base-64 integer at byte {start}")
    if at - start > _MAX_INT_DIGITS:
        raise DeltaError(f"integer at byte {start} has more than {_MAX_INT_DIGITS} digits")
    return value, at


def delta_apply(source: bytes, delta: bytes) -> bytes:
    """The target that ``delta`` (Fossil's format, from any encoder) makes of ``source``.
    Raises :class:`DeltaError` when the delta is malformed, reads outside ``source``,
    or its size or checksum does not match what it produced: the caller's ``source``
    is not the one the delta was made from, and it must fetch the whole target."""
    if not isinstance(source, bytes) or not isinstance(delta, bytes):
        raise TypeError("delta_apply takes two bytes objects")
    size, at = _get_int(delta, 0)
    if delta[at : at + 1] != b"\n":
        raise DeltaError("size integer not terminated by a newline")
    at += 1
    out = bytearray()
    while at < len(delta):
        count, at = _get_int(delta, at)
        if at == len(delta):
            break
        op = delta[at : at + 1]
        at += 1
        if op == b"@":
            offset, at = _get_int(delta, at)
            if delta[at : at + 1] != b",":
                raise DeltaError("copy command not terminated by ','")
            at += 1
            if len(out) + count > size:
                raise DeltaError("copy exceeds the declared target size")
            if offset + count > len(source):
                raise DeltaError("copy extends past the end of the source")
            out += source[offset : offset + count]
        elif op == b":":
            if len(out) + count > size:
                raise DeltaError("insert exceeds the declared target size")
            if at + count > len(delta):
                raise DeltaError("insert extends past the end of the delta")
            out += delta[at : at + count]
            at += count
        elif op == b";":
            if at != len(delta):
                raise DeltaError("bytes after the checksum")
            if len(out) != size:
                raise DeltaError("target size does not match the declared size")
            if count != delta_checksum(bytes(out)):
                raise DeltaError("bad checksum")
            return bytes(out)
        else:
            raise DeltaError(f"unknown delta operator at byte {at - 1}")
    raise DeltaError("unterminated delta")
