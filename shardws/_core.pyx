# cython: language_level=3
"""Cython hot path of shardws: command parsing, frame building and fan-out.

``shardws._core_ref`` is an independently written pure-Python twin with the same public
API; ``tests/test_core.py`` runs one suite against both and differential-tests them.

Guarantees of ``parse_envelope(buf)``:

* UTF-8 is checked first, over the whole buffer, strictly per RFC 3629 section 4
  (no overlongs, no encoded surrogates, nothing above U+10FFFF, no truncated
  sequences). Failure raises ``InvalidUTF8``: the server closes with 1007
  (RFC 6455 section 8.1).
* Only then is the buffer parsed as exactly one RFC 8259 JSON text (surrounding
  whitespace allowed), with nesting depth at most ``MAX_DEPTH`` (the top-level object is
  depth 1). Anything else raises ``BadEnvelope``; the connection stays open.
* ``BadEnvelope.id`` is the command id only when the buffer is syntactically valid JSON
  within the depth limit, is an object, has exactly one ``"id"`` member, and that member
  is a valid id (integer literal 0..2**53). Otherwise it is ``None``.
* ``Envelope.data`` and ``Envelope.fields`` values are the exact input bytes of the
  member values, never re-serialized, so a publisher's JSON reaches subscribers
  byte-for-byte.
* No Python object is built for the JSON structure: the scanner walks the bytes with an
  explicit bracket stack (no recursion) and only the result objects are created.

``build_text_frame`` and ``fanout`` implement the server-to-client side of RFC 6455
section 5.2 (unmasked frames) and a direct-``send()`` fan-out; see their docstrings.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy
from picows.picows cimport MemoryBuffer, WSTransport


cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT


#: Maximum JSON nesting depth accepted; the top-level object counts as depth 1.
MAX_DEPTH = 32
#: Largest accepted command id: 2**53, the largest integer every JSON peer (JavaScript
#: numbers are IEEE doubles) represents exactly.
MAX_ID = 9007199254740992

cdef enum:
    C_MAX_DEPTH = 32
    # Scanner results below zero are errors.
    ERR_SYNTAX = -1
    ERR_DEPTH = -2
    # Known members, by slot.
    K_OP = 0
    K_ID = 1
    K_CHANNEL = 2
    K_DATA = 3
    K_OTHER = 4

cdef uint64_t C_MAX_ID = 9007199254740992ULL


class InvalidUTF8(ValueError):
    """The text frame is not valid UTF-8 (RFC 3629); close with 1007 (RFC 6455 8.1)."""


class BadEnvelope(ValueError):
    """Valid UTF-8 but not an acceptable command; reply with an error, keep the connection.

    ``id`` is the command id when it could be read (see the module docstring), else None.
    """

    def __init__(self, message, id=None):
        super().__init__(message)
        self.id = id


cdef class Envelope:
    """One parsed client command. Attributes are read-only."""

    cdef readonly str op
    cdef readonly object id
    cdef readonly str channel
    cdef readonly bytes data
    cdef readonly dict fields

    def __init__(self, str op not None, id=None, str channel=None, bytes data=None,
                 dict fields=None):
        self.op = op
        self.id = id
        self.channel = channel
        self.data = data
        self.fields = {} if fields is None else fields

    def __repr__(self):
        return (
            f"Envelope(op={self.op!r}, id={self.id!r}, channel={self.channel!r}, "
            f"data={self.data!r}, fields={self.fields!r})"
        )


# --------------------------------------------------------------------------- UTF-8

cdef Py_ssize_t _utf8_invalid_at(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Offset of the first ill-formed sequence, or -1 if the buffer is valid UTF-8.

    Implements the well-formed byte sequence table of RFC 3629 section 4: the second byte
    range depends on the lead byte, which is what excludes overlongs (C0, C1, E0 80-9F,
    F0 80-8F), surrogates (ED A0-BF) and code points above U+10FFFF (F4 90-BF, F5-FF).
    """
    cdef Py_ssize_t i = 0
    cdef uint64_t w = 0
    cdef unsigned char c, c1, lo, hi
    while i < n:
        c = p[i]
        if c < 0x80:
            # Commands are almost all ASCII: test 8 bytes per step for any high bit.
            while i + 8 <= n:
                memcpy(&w, p + i, 8)
                if w & <uint64_t>0x8080808080808080ULL:
                    break
                i += 8
            while i < n and p[i] < 0x80:
                i += 1
            continue
        if c < 0xC2:
            return i  # stray continuation byte, or C0/C1 (always overlong)
        if c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return i
            i += 2
        elif c < 0xF0:
            if i + 2 >= n:
                return i
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
            c1 = p[i + 1]
            if c1 < lo or c1 > hi or (p[i + 2] & 0xC0) != 0x80:
                return i
            i += 3
        elif c < 0xF5:
            if i + 3 >= n:
                return i
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
            c1 = p[i + 1]
            if (c1 < lo or c1 > hi or (p[i + 2] & 0xC0) != 0x80
                    or (p[i + 3] & 0xC0) != 0x80):
                return i
            i += 4
        else:
            return i
    return -1


# ---------------------------------------------------------------------- JSON scanner

# Bytes that end the fast loop inside a string: '"', '\\' and controls < 0x20
# (RFC 8259 section 7 forbids them raw).
cdef unsigned char _STR_STOP[256]
# Hex digit values, 0xFF for anything else.
cdef unsigned char _HEX[256]


cdef void _init_tables() noexcept:
    cdef int k
    for k in range(256):
        _STR_STOP[k] = 1 if (k < 0x20 or k == 0x22 or k == 0x5C) else 0
        _HEX[k] = 0xFF
    for k in range(10):
        _HEX[0x30 + k] = k
    for k in range(6):
        _HEX[0x41 + k] = 10 + k
        _HEX[0x61 + k] = 10 + k


_init_tables()


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    # RFC 8259 section 2: exactly these four; no NBSP, no form feed.
    return c == 0x20 or c == 0x09 or c == 0x0A or c == 0x0D


cdef inline Py_ssize_t _skip_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(p[i]):
        i += 1
    return i


cdef inline Py_ssize_t _scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                    bint* escaped) noexcept nogil:
    """p[i] is the opening quote. Index past the closing quote, or ERR_SYNTAX."""
    cdef unsigned char c
    i += 1
    while i < n:
        c = p[i]
        if not _STR_STOP[c]:
            # Non-ASCII bytes need no check here: the whole buffer is valid UTF-8.
            i += 1
            continue
        if c == 0x22:
            return i + 1
        if c != 0x5C:
            return ERR_SYNTAX  # raw control character
        escaped[0] = True
        i += 1
        if i >= n:
            return ERR_SYNTAX
        c = p[i]
        if c == 0x75:  # \uXXXX
            if i + 4 >= n:
                return ERR_SYNTAX
            if (_HEX[p[i + 1]] | _HEX[p[i + 2]] | _HEX[p[i + 3]] | _HEX[p[i + 4]]) == 0xFF:
                return ERR_SYNTAX
            i += 5
        elif (c == 0x22 or c == 0x5C or c == 0x2F or c == 0x62 or c == 0x66
              or c == 0x6E or c == 0x72 or c == 0x74):
            i += 1
        else:
            return ERR_SYNTAX
    return ERR_SYNTAX


cdef inline Py_ssize_t _scan_digits(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and 0x30 <= p[i] <= 0x39:
        i += 1
    return i


cdef inline Py_ssize_t _scan_number(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """RFC 8259 section 6: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?"""
    cdef Py_ssize_t j
    if p[i] == 0x2D:
        i += 1
    if i >= n:
        return ERR_SYNTAX
    if p[i] == 0x30:
        i += 1  # a digit after a leading zero is left for the caller to reject
    elif 0x31 <= p[i] <= 0x39:
        i = _scan_digits(p, i + 1, n)
    else:
        return ERR_SYNTAX
    if i < n and p[i] == 0x2E:
        j = _scan_digits(p, i + 1, n)
        if j == i + 1:
            return ERR_SYNTAX
        i = j
    if i < n and (p[i] == 0x65 or p[i] == 0x45):
        i += 1
        if i < n and (p[i] == 0x2B or p[i] == 0x2D):
            i += 1
        j = _scan_digits(p, i, n)
        if j == i:
            return ERR_SYNTAX
        i = j
    return i


cdef inline Py_ssize_t _scan_literal(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                     const char* word, Py_ssize_t k) noexcept nogil:
    if i + k > n or memcmp(p + i, word, k) != 0:
        return ERR_SYNTAX
    return i + k


cdef Py_ssize_t _scan_value(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                            int depth) noexcept nogil:
    """Skip one JSON value starting exactly at p[i]; return the index past it.

    ``depth`` is the depth of the container holding the value. Iterative: ``stack``
    holds the opening bracket of every open container, so hostile input cannot
    exhaust the C stack and the depth limit is enforced before any further byte is read.
    """
    cdef unsigned char stack[C_MAX_DEPTH + 1]
    cdef int sp = 0
    cdef unsigned char c
    cdef bint esc = False
    cdef bint have_value
    while True:
        # State: expecting a value at p[i].
        if i >= n:
            return ERR_SYNTAX
        c = p[i]
        have_value = True
        if c == 0x22:
            i = _scan_string(p, i, n, &esc)
        elif c == 0x7B or c == 0x5B:  # { [
            if depth + sp + 1 > C_MAX_DEPTH:
                return ERR_DEPTH
            stack[sp] = c
            sp += 1
            i = _skip_ws(p, i + 1, n)
            if i >= n:
                return ERR_SYNTAX
            if p[i] == c + 2:  # '{'+2 == '}', '['+2 == ']': empty container
                sp -= 1
                i += 1
            elif c == 0x7B:
                # First member: key, colon, then expect its value.
                if p[i] != 0x22:
                    return ERR_SYNTAX
                i = _scan_string(p, i, n, &esc)
                if i < 0:
                    return i
                i = _skip_ws(p, i, n)
                if i >= n or p[i] != 0x3A:
                    return ERR_SYNTAX
                i = _skip_ws(p, i + 1, n)
                have_value = False
            else:
                have_value = False
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _scan_number(p, i, n)
        elif c == 0x74:
            i = _scan_literal(p, i, n, b"true", 4)
        elif c == 0x66:
            i = _scan_literal(p, i, n, b"false", 5)
        elif c == 0x6E:
            i = _scan_literal(p, i, n, b"null", 4)
        else:
            return ERR_SYNTAX  # includes NaN/Infinity and any non-ASCII byte
        if i < 0:
            return i
        if not have_value:
            continue
        # State: a value just ended; close containers or move to the next element.
        while True:
            if sp == 0:
                return i
            i = _skip_ws(p, i, n)
            if i >= n:
                return ERR_SYNTAX
            c = p[i]
            if c == stack[sp - 1] + 2:
                sp -= 1
                i += 1
                continue
            if c != 0x2C:
                return ERR_SYNTAX
            i = _skip_ws(p, i + 1, n)
            if stack[sp - 1] == 0x7B:
                if i >= n or p[i] != 0x22:
                    return ERR_SYNTAX  # also rejects a trailing comma before '}'
                i = _scan_string(p, i, n, &esc)
                if i < 0:
                    return i
                i = _skip_ws(p, i, n)
                if i >= n or p[i] != 0x3A:
                    return ERR_SYNTAX
                i = _skip_ws(p, i + 1, n)
            break  # a trailing comma before ']' fails as "expected a value"


# -------------------------------------------------------------------- string decoding

cdef inline Py_ssize_t _put_utf8(char* out, Py_ssize_t k, unsigned int cp) noexcept nogil:
    # Surrogate code points are written too (3 bytes); decoded with "surrogatepass".
    if cp < 0x80:
        out[k] = <char>cp
        return k + 1
    if cp < 0x800:
        out[k] = <char>(0xC0 | (cp >> 6))
        out[k + 1] = <char>(0x80 | (cp & 0x3F))
        return k + 2
    if cp < 0x10000:
        out[k] = <char>(0xE0 | (cp >> 12))
        out[k + 1] = <char>(0x80 | ((cp >> 6) & 0x3F))
        out[k + 2] = <char>(0x80 | (cp & 0x3F))
        return k + 3
    out[k] = <char>(0xF0 | (cp >> 18))
    out[k + 1] = <char>(0x80 | ((cp >> 12) & 0x3F))
    out[k + 2] = <char>(0x80 | ((cp >> 6) & 0x3F))
    out[k + 3] = <char>(0x80 | (cp & 0x3F))
    return k + 4


cdef inline unsigned int _hex4(const unsigned char* q) noexcept nogil:
    return (_HEX[q[0]] << 12) | (_HEX[q[1]] << 8) | (_HEX[q[2]] << 4) | _HEX[q[3]]


cdef str _decode_string(const unsigned char* p, Py_ssize_t start, Py_ssize_t end, bint escaped):
    """Decode the already validated JSON string p[start:end] (quotes included).

    Escapes follow what JSON decoders do (and Python's ``json``): an escaped high
    surrogate directly followed by an escaped low surrogate is one code point; any other
    surrogate escape stays a lone surrogate in the result.
    """
    cdef Py_ssize_t i = start + 1
    cdef Py_ssize_t stop = end - 1
    cdef Py_ssize_t k = 0
    cdef unsigned int cp, lo
    cdef unsigned char c
    cdef char* out
    if not escaped:
        return PyUnicode_DecodeUTF8(<const char*>p + i, stop - i, NULL)
    # Every escape is at least as long as its UTF-8 encoding, so the input length bounds
    # the output length.
    out = <char*>PyMem_Malloc(stop - i + 1)
    if out == NULL:
        raise MemoryError()
    try:
        while i < stop:
            c = p[i]
            if c != 0x5C:
                out[k] = <char>c
                k += 1
                i += 1
                continue
            c = p[i + 1]
            if c == 0x75:
                cp = _hex4(p + i + 2)
                i += 6
                if (0xD800 <= cp <= 0xDBFF and i + 6 <= stop and p[i] == 0x5C
                        and p[i + 1] == 0x75):
                    lo = _hex4(p + i + 2)
                    if 0xDC00 <= lo <= 0xDFFF:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                        i += 6
                k = _put_utf8(out, k, cp)
                continue
            if c == 0x62:
                out[k] = b"\b"
            elif c == 0x66:
                out[k] = b"\f"
            elif c == 0x6E:
                out[k] = b"\n"
            elif c == 0x72:
                out[k] = b"\r"
            elif c == 0x74:
                out[k] = b"\t"
            else:
                out[k] = <char>c  # \" \\ \/
            k += 1
            i += 2
        return PyUnicode_DecodeUTF8(out, k, b"surrogatepass")
    finally:
        PyMem_Free(out)


cdef inline bint _key_is(const unsigned char* p, Py_ssize_t ks, Py_ssize_t ke,
                         const char* name, Py_ssize_t k) noexcept nogil:
    # Unescaped key p[ks:ke] (quotes included) equals name?
    return ke - ks - 2 == k and memcmp(p + ks + 1, name, k) == 0


_KNOWN = {"op": K_OP, "id": K_ID, "channel": K_CHANNEL, "data": K_DATA}


cdef object _parse_id(const unsigned char* p, Py_ssize_t vs, Py_ssize_t ve):
    """A valid id as int, or None: digits only, no leading zero, at most 2**53."""
    cdef Py_ssize_t k
    cdef uint64_t v = 0
    if ve - vs > 16 or ve == vs:  # 2**53 has 16 digits
        return None
    if p[vs] == 0x30 and ve - vs > 1:
        return None
    for k in range(vs, ve):
        if not 0x30 <= p[k] <= 0x39:
            return None
        v = v * 10 + (p[k] - 0x30)
    if v > C_MAX_ID:
        return None
    return v


def parse_envelope(bytes buf not None):
    """Parse one client command (a text frame's payload) into an ``Envelope``.

    Raises ``InvalidUTF8`` (close with 1007) or ``BadEnvelope`` (error reply); see the
    module docstring for the exact rules.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t bad = _utf8_invalid_at(p, n)
    cdef Py_ssize_t i, ks, ke, vs, ve
    cdef bint esc, vesc
    cdef int slot
    cdef bint duplicate = False
    # Value spans of the known members; -1 = absent.
    cdef Py_ssize_t spans[8]
    cdef bint escs[4]
    cdef dict fields = {}
    cdef str key
    if bad >= 0:
        raise InvalidUTF8(f"invalid UTF-8 at byte {bad}")

    for slot in range(8):
        spans[slot] = -1
    i = _skip_ws(p, 0, n)
    if i >= n or p[i] != 0x7B:
        raise BadEnvelope("command must be a JSON object")
    i = _skip_ws(p, i + 1, n)
    if i < n and p[i] == 0x7D:
        i += 1
    else:
        while True:
            if i >= n or p[i] != 0x22:
                raise BadEnvelope("invalid JSON: expected a member name")
            esc = False
            ks = i
            i = _scan_string(p, i, n, &esc)
            if i < 0:
                raise BadEnvelope("invalid JSON string")
            ke = i
            i = _skip_ws(p, i, n)
            if i >= n or p[i] != 0x3A:
                raise BadEnvelope("invalid JSON: expected ':'")
            vs = _skip_ws(p, i + 1, n)
            vesc = False
            if vs < n and p[vs] == 0x22:
                ve = _scan_string(p, vs, n, &vesc)  # strings are the common value
            else:
                ve = _scan_value(p, vs, n, 1)
            if ve == ERR_DEPTH:
                raise BadEnvelope(f"JSON nesting deeper than {C_MAX_DEPTH}")
            if ve < 0:
                raise BadEnvelope("invalid JSON value")

            # Common case, plain ASCII names: no str is built for known members.
            key = None
            if esc:
                key = _decode_string(p, ks, ke, True)
                slot = _KNOWN.get(key, K_OTHER)
            elif _key_is(p, ks, ke, b"op", 2):
                slot = K_OP
            elif _key_is(p, ks, ke, b"id", 2):
                slot = K_ID
            elif _key_is(p, ks, ke, b"channel", 7):
                slot = K_CHANNEL
            elif _key_is(p, ks, ke, b"data", 4):
                slot = K_DATA
            else:
                slot = K_OTHER
                key = _decode_string(p, ks, ke, False)
            if slot == K_OTHER:
                if key in fields:
                    duplicate = True
                else:
                    fields[key] = PyBytes_FromStringAndSize(<const char*>p + vs, ve - vs)
            elif spans[2 * slot] >= 0:
                duplicate = True
                if slot == K_ID:
                    spans[2 * K_ID] = -2  # ambiguous: no id reported
            else:
                spans[2 * slot] = vs
                spans[2 * slot + 1] = ve
                escs[slot] = vesc

            i = _skip_ws(p, ve, n)
            if i < n and p[i] == 0x2C:
                i = _skip_ws(p, i + 1, n)
                continue
            if i < n and p[i] == 0x7D:
                i += 1
                break
            raise BadEnvelope("invalid JSON: expected ',' or '}'")
    if _skip_ws(p, i, n) != n:
        raise BadEnvelope("invalid JSON: data after the object")

    # The JSON is well formed: from here on errors carry the id when it is readable.
    cdef object id_value = None
    cdef bint id_bad = False
    if spans[2 * K_ID] >= 0:
        id_value = _parse_id(p, spans[2 * K_ID], spans[2 * K_ID + 1])
        id_bad = id_value is None
    if duplicate:
        raise BadEnvelope("duplicate member name", id_value)
    if id_bad:
        raise BadEnvelope('"id" must be an integer from 0 to 2**53')
    if spans[2 * K_OP] < 0:
        raise BadEnvelope('missing "op"', id_value)
    if p[spans[2 * K_OP]] != 0x22:
        raise BadEnvelope('"op" must be a string', id_value)
    if spans[2 * K_CHANNEL] >= 0 and p[spans[2 * K_CHANNEL]] != 0x22:
        raise BadEnvelope('"channel" must be a string', id_value)

    cdef Envelope env = Envelope.__new__(Envelope)
    env.op = _decode_string(p, spans[2 * K_OP], spans[2 * K_OP + 1], escs[K_OP])
    env.id = id_value
    if spans[2 * K_CHANNEL] >= 0:
        env.channel = _decode_string(p, spans[2 * K_CHANNEL], spans[2 * K_CHANNEL + 1],
                                     escs[K_CHANNEL])
    if spans[2 * K_DATA] >= 0:
        env.data = PyBytes_FromStringAndSize(<const char*>p + spans[2 * K_DATA],
                                             spans[2 * K_DATA + 1] - spans[2 * K_DATA])
    env.fields = fields
    return env



# ------------------------------------------------------------------- frames and fan-out

cdef bytes _build_frame(bytes payload, unsigned char first_byte):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h
    cdef int k
    if n < 126:
        h = 2
    elif n < 65536:
        h = 4
    else:
        h = 10
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, h + n)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    out[0] = first_byte
    if h == 2:
        out[1] = <unsigned char>n
    elif h == 4:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>(n & 0xFF)
    else:
        out[1] = 127
        for k in range(8):
            out[2 + k] = <unsigned char>((<uint64_t>n >> (56 - 8 * k)) & 0xFF)
    memcpy(out + h, PyBytes_AS_STRING(payload), n)
    return frame


def build_text_frame(bytes payload not None):
    """One unmasked, final text frame (RFC 6455 section 5.2), header and payload together.

    Servers must not mask (section 5.1). The payload length uses the shortest form the
    RFC requires: 7 bits below 126, 126 + 16-bit big-endian below 65536, else 127 +
    64-bit big-endian.
    """
    return _build_frame(payload, 0x81)  # FIN + opcode 0x1 (text)


def build_frame(bytes payload not None, bint binary=False, bint compressed=False):
    """Like ``build_text_frame``, for a binary message (opcode 0x2) when ``binary``, and
    with RSV1 set when ``compressed`` (RFC 7692 section 6: the payload is the message
    deflated, tail removed; only valid on a connection that negotiated permessage-deflate).
    """
    return _build_frame(payload, (0x82 if binary else 0x81) | (0x40 if compressed else 0))


# One zlib compressor per (level, window bits) in this process. Every message is
# compressed on its own (Z_FULL_FLUSH resets the dictionary), as server_no_context_takeover
# requires, so a compressor is reused without ever being re-initialized.
cdef dict _compressors = {}
cdef object _zlib = None
cdef Py_ssize_t _TAIL_LEN = 4  # RFC 7692 7.2.1: 00 00 ff ff, removed by the sender


cdef class Deflated:
    """The permessage-deflate frames of one message, built lazily: at most one per
    window size, the first time a sink with that window asks (``fanout``, ``frame``).

    Each frame is the message compressed on its own (RFC 7692 7.2.1, final 4 octets
    removed; valid under ``server_no_context_takeover``), in one final frame with RSV1
    set, even where deflate does not shrink it: whether to compress is the caller's
    choice (``[compression] threshold``). ``saved`` counts the bytes compression kept
    off the wire (negative when it grew a message) over the deliveries ``fanout`` made
    with these frames.
    """

    cdef bytes _payload
    cdef int _level
    cdef unsigned char _first
    cdef list _frames
    cdef readonly Py_ssize_t saved

    def __init__(self, bytes payload not None, int level=6, bint binary=False):
        if not 1 <= level <= 9:
            raise ValueError(f"level must be 1..9, got {level}")
        self._payload = payload
        self._level = level
        self._first = 0xC2 if binary else 0xC1  # FIN + RSV1 + opcode
        self._frames = None
        self.saved = 0

    def frame(self, int window_bits):
        """The compressed frame for a ``window_bits`` (9..15) connection."""
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be 9..15, got {window_bits}")
        return self._frame(window_bits)

    cdef bytes _frame(self, int window_bits):
        global _zlib
        cdef object built
        if self._frames is None:
            self._frames = [None] * 16
        built = self._frames[window_bits]
        if built is not None:
            return <bytes>built
        if _zlib is None:
            import zlib
            _zlib = zlib
        key = (self._level, window_bits)
        compressor = _compressors.get(key)
        if compressor is None:
            compressor = _zlib.compressobj(self._level, _zlib.DEFLATED, -window_bits)
            _compressors[key] = compressor
        cdef bytes data = compressor.compress(self._payload) + compressor.flush(_zlib.Z_FULL_FLUSH)
        cdef bytes frame = _build_frame(data[:PyBytes_GET_SIZE(data) - _TAIL_LEN], self._first)
        self._frames[window_bits] = frame
        return frame


# --------------------------------------------------------------------------- MessagePack

#: Problems ``msgpack_members`` reports of a command's ``data`` (0: none): a map key
#: that is not a string, a NaN or infinite float, binary below the top level, an
#: extension type. Data with any of them has no JSON form (``pure.wiredata``).
MSGPACK_KEY = 1
MSGPACK_FLOAT = 2
MSGPACK_BIN = 3
MSGPACK_EXT = 4

cdef enum:
    MP_KEY = 1
    MP_FLOAT = 2
    MP_BIN = 3
    MP_EXT = 4

cdef inline uint64_t _be(const unsigned char* q, int width) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(width):
        v = (v << 8) | q[k]
    return v


cdef Py_ssize_t _mp_skip(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth,
                         int* problem) noexcept nogil:
    """End of the MessagePack object at ``i`` (RFC-less: the msgpack spec's formats), or
    -1 when it is truncated, uses 0xC1, has a string that is not UTF-8, or nests deeper
    than C_MAX_DEPTH. The first problem (MSGPACK_*) found on the way is kept in
    ``problem``; ``depth`` 0 is the top level, where binary is no problem."""
    cdef unsigned char c
    cdef uint64_t length = 0, count = 0, j
    cdef int width = 0, kind = 0  # kind: 0 scalar payload, 1 str, 2 bin, 3 ext, 4 array, 5 map
    cdef Py_ssize_t end
    if i >= n or depth > C_MAX_DEPTH:
        return -1
    c = p[i]
    i += 1
    if c <= 0x7F or c >= 0xE0 or c == 0xC0 or c == 0xC2 or c == 0xC3:
        return i
    if c <= 0x8F:
        count = c & 0x0F
        kind = 5
    elif c <= 0x9F:
        count = c & 0x0F
        kind = 4
    elif c <= 0xBF:
        length = c & 0x1F
        kind = 1
    elif c == 0xC1:
        return -1
    elif c <= 0xC6:
        width = 1 << (c - 0xC4)
        kind = 2
    elif c <= 0xC9:
        width = 1 << (c - 0xC7)
        kind = 3
    elif c == 0xCA or c == 0xCB:
        width = 4 if c == 0xCA else 8
        if i + width > n:
            return -1
        # IEEE 754: an exponent of all ones is NaN or an infinity.
        if (c == 0xCA and (p[i] & 0x7F) == 0x7F and (p[i + 1] & 0x80) == 0x80) or (
            c == 0xCB and (p[i] & 0x7F) == 0x7F and (p[i + 1] & 0xF0) == 0xF0
        ):
            if problem[0] == 0:
                problem[0] = MP_FLOAT
        return i + width
    elif c <= 0xD3:
        length = 1 << ((c - 0xCC) & 3)
        return i + <Py_ssize_t>length if i + <Py_ssize_t>length <= n else -1
    elif c <= 0xD8:
        if problem[0] == 0:
            problem[0] = MP_EXT
        length = 1 + (1 << (c - 0xD4))
        return i + <Py_ssize_t>length if i + <Py_ssize_t>length <= n else -1
    elif c <= 0xDB:
        width = 1 << (c - 0xD9)
        kind = 1
    elif c <= 0xDD:
        width = 2 if c == 0xDC else 4
        kind = 4
    else:
        width = 2 if c == 0xDE else 4
        kind = 5
    if width:
        if i + width > n:
            return -1
        if kind >= 4:
            count = _be(p + i, width)
        else:
            length = _be(p + i, width)
        i += width
    if kind <= 3:
        if kind == 3:
            length += 1  # the extension's type byte
            if problem[0] == 0:
                problem[0] = MP_EXT
        elif kind == 2 and depth > 0 and problem[0] == 0:
            problem[0] = MP_BIN
        if length > <uint64_t>(n - i):
            return -1
        end = i + <Py_ssize_t>length
        if kind == 1 and _utf8_invalid_at(p + i, end - i) >= 0:
            return -1
        return end
    if count > <uint64_t>(n - i):  # every element takes at least one byte
        return -1
    for j in range(count):
        if kind == 5:
            c = p[i] if i < n else 0
            if not (0xA0 <= c <= 0xBF or 0xD9 <= c <= 0xDB) and problem[0] == 0:
                problem[0] = MP_KEY
            i = _mp_skip(p, i, n, depth + 1, problem)
            if i < 0:
                return -1
        i = _mp_skip(p, i, n, depth + 1, problem)
        if i < 0:
            return -1
    return i


def msgpack_members(bytes buf not None):
    """The members of a command in MessagePack: ``({name: raw value bytes}, problem)``,
    each value a slice of ``buf``, and ``problem`` the first MSGPACK_* of the ``data``
    member's value (0 for none, or without data). Raises ``BadEnvelope`` unless ``buf``
    is exactly one well-formed map (strings UTF-8, at most MAX_DEPTH deep) with distinct
    string keys."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t i = 0, ks, ke, vs
    cdef uint64_t count, j
    cdef int problem = 0, ignored = 0
    cdef unsigned char c
    cdef dict members = {}
    cdef str key
    if n == 0:
        raise BadEnvelope("command must be a MessagePack map")
    c = p[0]
    if 0x80 <= c <= 0x8F:
        count = c & 0x0F
        i = 1
    elif (c == 0xDE and n >= 3) or (c == 0xDF and n >= 5):
        count = _be(p + 1, 2 if c == 0xDE else 4)
        i = 3 if c == 0xDE else 5
    else:
        raise BadEnvelope("command must be a MessagePack map")
    for j in range(count):
        ks = i
        c = p[i] if i < n else 0
        if not (0xA0 <= c <= 0xBF or 0xD9 <= c <= 0xDB):
            raise BadEnvelope("command member names must be strings")
        ke = _mp_skip(p, i, n, 1, &ignored)
        if ke < 0:
            raise BadEnvelope("command is not well-formed MessagePack")
        ks += 1 if c <= 0xBF else 1 + (1 << (c - 0xD9))
        key = PyUnicode_DecodeUTF8(<const char*>p + ks, ke - ks, NULL)
        if key in members:
            raise BadEnvelope(f"duplicate member name {key!r}")
        vs = ke
        if key == "data":
            i = _mp_skip(p, vs, n, 0, &problem)
        else:
            i = _mp_skip(p, vs, n, 0, &ignored)
        if i < 0:
            raise BadEnvelope("command is not well-formed MessagePack")
        members[key] = buf[vs:i]
    if i != n:
        raise BadEnvelope("one MessagePack map per message, nothing after it")
    return members, problem


def utf8_valid(bytes buf not None):
    """True if ``buf`` is well-formed UTF-8: the same strict RFC 3629 section 4 check
    ``parse_envelope`` applies (no overlongs, surrogates or code points above U+10FFFF)."""
    return _utf8_invalid_at(<const unsigned char*>PyBytes_AS_STRING(buf),
                            PyBytes_GET_SIZE(buf)) < 0


# Coalescing state of this process (one event loop per worker process). A sink written
# directly in the current generation corks further frames; flush() sends each corked
# sink's frames in one syscall and starts a new generation. The owner calls flush() once
# per event-loop iteration in which anything was written.
cdef uint64_t _generation = 1
cdef list _dirty = []
cdef list _overflowed = []
cdef Py_ssize_t _drops = 0

DEFAULT_MAX_PENDING = 1 << 20


cdef class Sink:
    """One subscriber's write side, captured once per connection.

    The transport's methods and socket fd are looked up once here, not per message.
    Contract: the owner calls ``close()`` before queueing a close frame and, at the
    latest, in ``connection_lost`` (both asyncio and uvloop call it before closing the
    fd), so ``fanout`` never sends to an fd number the kernel may have reused. As a
    second guard, a sink whose transport reports ``is_closing()`` is closed by
    ``fanout`` and skipped.

    Backlog cap: once the transport holds unsent bytes (the client is behind), a frame
    that would take its pending output (transport buffer plus corked frames) over
    ``max_pending`` bytes is dropped (``drop`` policy, counted in ``drops``) or the sink
    is closed and reported by ``take_overflowed()`` so its owner can disconnect the
    slow consumer. A caught-up sink always takes the current iteration's frames, so the
    bound is ``max_pending`` plus one iteration's batch.
    """

    cdef int _fd
    cdef object _write
    cdef object _get_write_buffer_size
    cdef object _is_closing
    cdef bint _closed
    cdef uint64_t _gen
    cdef list _cork
    cdef Py_ssize_t _cork_bytes
    cdef Py_ssize_t _cork_base
    cdef Py_ssize_t _max_pending
    cdef readonly Py_ssize_t drops
    cdef readonly bint overflowed
    cdef public object owner
    cdef bint _direct
    cdef int _deflate_bits

    def __init__(self, transport, Py_ssize_t max_pending=DEFAULT_MAX_PENDING, owner=None,
                 bint direct=True, int deflate_bits=0):
        # direct=False (TLS): bytes must pass through the transport's encryption, so
        # frames are only ever handed to transport.write (still coalesced per iteration).
        self._direct = direct
        self._fd = -1
        if direct:
            sock = transport.get_extra_info("socket")
            if sock is None:
                raise ValueError("transport has no socket")
            self._fd = sock.fileno()
            if self._fd < 0:
                raise ValueError("transport socket is closed")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._write = transport.write
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._closed = False
        self._gen = 0
        self._cork = None
        self._cork_bytes = 0
        self._cork_base = 0
        self._max_pending = max_pending
        if deflate_bits and not 9 <= deflate_bits <= 15:
            raise ValueError(f"deflate_bits must be 0 or 9..15, got {deflate_bits}")
        # 0: no permessage-deflate; else the window the connection negotiated, which
        # picks this sink's frame from fanout's Deflated.
        self._deflate_bits = deflate_bits
        self.drops = 0
        self.overflowed = False
        self.owner = owner

    @property
    def fd(self):
        return self._fd

    @property
    def closed(self):
        return self._closed

    @property
    def deflate_bits(self):
        """The negotiated permessage-deflate window bits, 0 if not compressing."""
        return self._deflate_bits

    @property
    def corked_bytes(self):
        """Bytes corked for the next ``flush()``."""
        return self._cork_bytes

    def send(self, bytes frame not None):
        """Write one frame to this sink alone (replies, own pushes), in order with the
        fan-out; over ``max_pending`` the sink overflows (disconnect policy)."""
        return _deliver(self, frame, False)

    def flush(self):
        """Write this sink's corked frames now (e.g. before a close frame)."""
        _flush_sink(self)

    def close(self):
        """Stop fan-out to this sink and forget corked frames; idempotent."""
        self._closed = True
        self._cork = None
        self._cork_bytes = 0

    def __repr__(self):
        return f"Sink(fd={self._fd}, closed={bool(self._closed)})"


cdef inline bint _hand_to_transport(Sink sink, bytes frame, Py_ssize_t offset):
    """transport.write(frame[offset:]); False (and the sink closed) if it raised."""
    try:
        if offset == 0:
            sink._write(frame)
        else:
            sink._write(frame[offset:])
    except Exception:
        sink._closed = True
        return False
    return True


cdef bint _write_now(Sink sink, bytes data, Py_ssize_t buffered):
    """Direct ``send()`` while the transport buffer is empty, the rest to the transport."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t sent
    if buffered or not sink._direct:
        return _hand_to_transport(sink, data, 0)
    if n == 0:
        return True
    # MSG_NOSIGNAL: a dead peer must give EPIPE, not kill the process with SIGPIPE.
    sent = c_send(sink._fd, PyBytes_AS_STRING(data), <size_t>n, MSG_NOSIGNAL | MSG_DONTWAIT)
    if sent == n:
        return True
    if sent < 0:
        # EAGAIN/EWOULDBLOCK/EINTR: the transport retries when writable. Any other
        # error: the transport's own write path hits it and reports it.
        sent = 0
    return _hand_to_transport(sink, data, sent)


cdef bint _overflow(Sink sink, bint drop):
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


cdef bint _deliver(Sink sink, bytes frame, bint drop):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
    cdef Py_ssize_t buffered
    if sink._closed:
        return False
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
        # Written once already in this loop iteration, or the kernel buffer is full:
        # cork, so everything else this iteration leaves in one syscall at flush().
        sink._cork = [frame]
        sink._cork_bytes = n
        sink._cork_base = buffered
        _dirty.append(sink)
        return True
    # First frame for this sink in this iteration: send at once (no added latency).
    sink._gen = _generation
    return _write_now(sink, frame, 0)


cdef void _flush_sink(Sink sink):
    cdef list cork = sink._cork
    cdef Py_ssize_t buffered
    if cork is None:
        return
    sink._cork = None
    sink._cork_bytes = 0
    if sink._closed:
        return
    data = <bytes>cork[0] if len(cork) == 1 else b"".join(cork)
    try:
        buffered = sink._get_write_buffer_size()
    except Exception:
        sink._closed = True
        return
    _write_now(sink, data, buffered)


def fanout(bytes frame not None, list sinks not None, bint drop=False,
           Deflated deflated=None):
    """Write ``frame`` to every open sink; return how many sinks took it.

    With ``deflated`` (the same message), a sink that negotiated permessage-deflate gets
    the compressed frame for its window size instead, built once for all such sinks;
    without it, every sink gets ``frame``.

    Per sink, the first frame of an event-loop iteration goes out at once with one
    non-blocking ``send()`` while the transport's own buffer is empty (any unsent tail
    goes to ``transport.write``, which keeps order). Further frames for that sink in the
    same iteration, or any frame while the transport holds data, are corked and leave
    together at ``flush()`` in one syscall. The caller must call ``flush()`` once per
    loop iteration in which it called ``fanout`` or ``Sink.send``.

    A frame that would push a sink's pending output over its ``max_pending`` is
    skipped and counted (``drop=True``) or closes the sink and reports it through
    ``take_overflowed()``. Never raises for a single bad sink.
    """
    cdef Py_ssize_t count = 0
    cdef object item
    cdef Sink sink
    cdef bytes compressed
    for item in sinks:
        sink = <Sink?>item
        if sink._deflate_bits and deflated is not None:
            compressed = deflated._frame(sink._deflate_bits)
            if _deliver(sink, compressed, drop):
                count += 1
                deflated.saved += PyBytes_GET_SIZE(frame) - PyBytes_GET_SIZE(compressed)
        elif _deliver(sink, frame, drop):
            count += 1
    return count


def flush():
    """Send every corked sink's frames (one syscall per sink) and start a new loop
    generation. Returns the number of sinks flushed."""
    global _generation, _dirty
    _generation += 1
    if not _dirty:
        return 0
    cdef list dirty = _dirty
    _dirty = []
    cdef object sink
    for sink in dirty:
        _flush_sink(<Sink>sink)
    return len(dirty)


def take_overflowed():
    """Sinks closed by the disconnect policy since the last call (their owners should
    close the connections as slow consumers)."""
    global _overflowed
    cdef list result = _overflowed
    _overflowed = []
    return result


def total_drops():
    """Frames skipped by the drop policy in this process so far."""
    return _drops


def release_handshake(WSTransport transport not None):
    """Free what picows keeps per connection after the upgrade but we never use again.

    The parsed upgrade request and our response (~0.8 KB per connection) are dropped,
    and picows's 1 KiB frame-building buffer is replaced by a small one: our data
    frames go through ``Sink``, so picows only builds control frames (ping, pong,
    close) there, and it grows the buffer itself if it ever needs more. Call it from
    ``on_ws_connected``, after reading anything needed from ``transport.request``.
    """
    transport.request = None
    transport.response = None
    transport._write_buffer = MemoryBuffer(64)


cdef class TokenBucket:
    """Rate limiter: ``rate`` tokens per second refill a bucket of ``burst`` tokens.

    ``take(now)`` spends one token and returns True, or returns False (nothing spent)
    when the bucket is empty. ``now`` is any monotonic clock in seconds; a clock that
    goes backwards refills nothing. A full bucket at creation lets a client open with a
    burst (subscribing to its channels) without being limited.
    """

    cdef double _rate
    cdef double _burst
    cdef double _tokens
    cdef double _stamp

    def __init__(self, double rate, double burst, double now):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    cpdef bint take(self, double now):
        cdef double elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    @property
    def tokens(self):
        return self._tokens


# --------------------------------------------------------------------------- fossil deltas
# The Fossil SCM delta format (www/delta_format.wiki in Fossil's sources): a header
# "<target length>\n", then "<n>@<offset>," (copy) and "<n>:<n bytes>" (insert)
# commands, then "<checksum>;"; integers in Fossil's base-64 digits. Outputs are byte for
# byte those of Fossil's encoder and npm fossil-delta (checked in tests/test_core.py).

class DeltaError(ValueError):
    """A delta that does not apply to the given source (malformed, or made from another
    source: its size or checksum does not match). The message says which rule failed."""


cdef enum:
    NHASH = 16            # rolling-hash window and source block size
    MAX_INT_DIGITS = 10   # 60 bits: longer integers are refused
    MAX_CANDIDATES = 250  # source blocks tried per target position, as Fossil does

cdef const char* DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
cdef signed char DIGIT_VALUE[256]


cdef void _init_digit_values() noexcept:
    cdef int i
    for i in range(256):
        DIGIT_VALUE[i] = -1
    for i in range(64):
        DIGIT_VALUE[<unsigned char>DIGITS[i]] = i


_init_digit_values()


cdef struct OutBuf:
    unsigned char* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _reserve(OutBuf* out, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = out.size + extra
    cdef Py_ssize_t capacity
    cdef unsigned char* grown
    if want <= out.capacity:
        return 0
    capacity = out.capacity * 2 if out.capacity * 2 > want else want
    grown = <unsigned char*>PyMem_Realloc(out.data, capacity)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    out.capacity = capacity
    return 0


cdef int _put_bytes(OutBuf* out, const unsigned char* src, Py_ssize_t n) except -1:
    _reserve(out, n)
    memcpy(out.data + out.size, src, n)
    out.size += n
    return 0


cdef int _put_char(OutBuf* out, unsigned char c) except -1:
    _reserve(out, 1)
    out.data[out.size] = c
    out.size += 1
    return 0


cdef int _put_int(OutBuf* out, uint64_t value) except -1:
    cdef unsigned char digits[12]
    cdef int n = 0
    if value == 0:
        return _put_char(out, b'0')
    while value:
        digits[n] = DIGITS[value & 63]
        value >>= 6
        n += 1
    _reserve(out, n)
    while n:
        n -= 1
        out.data[out.size] = digits[n]
        out.size += 1
    return 0


cdef inline int _digit_count(Py_ssize_t value) noexcept:
    cdef int count = 1
    cdef Py_ssize_t limit = 64
    while value >= limit:
        count += 1
        limit <<= 6
    return count


cdef unsigned int _checksum(const unsigned char* z, Py_ssize_t n) noexcept:
    cdef unsigned int total = 0
    cdef Py_ssize_t at = 0
    while at + 4 <= n:
        total += ((<unsigned int>z[at] << 24) | (<unsigned int>z[at + 1] << 16)
                  | (<unsigned int>z[at + 2] << 8) | z[at + 3])
        at += 4
    if at < n:
        total += <unsigned int>z[at] << 24
        if at + 1 < n:
            total += <unsigned int>z[at + 1] << 16
        if at + 2 < n:
            total += <unsigned int>z[at + 2] << 8
    return total


def delta_checksum(bytes data not None):
    """Fossil's 32-bit checksum: the sum of ``data`` read as big-endian 32-bit words
    (the last one padded with zero bytes), modulo 2**32."""
    return _checksum(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef inline unsigned int _hash_value(unsigned int a, unsigned int b) noexcept:
    return (a & 0xFFFF) | ((b & 0xFFFF) << 16)


cdef int _create(const unsigned char* src, Py_ssize_t len_src, const unsigned char* tgt,
                 Py_ssize_t len_out, OutBuf* out, Py_ssize_t* collide,
                 Py_ssize_t* landmark, Py_ssize_t n_hash) except -1:
    cdef Py_ssize_t at, i, base, block, start, forward, back, count, offset, literal
    cdef Py_ssize_t best_count, best_offset, best_literal, slot
    cdef unsigned int a, b, old, new
    cdef int tries, k
    for at in range(n_hash):
        collide[at] = -1
        landmark[at] = -1
    at = 0
    while at < len_src - NHASH:
        a = 0
        b = 0
        for k in range(NHASH):
            a += src[at + k]
            b += (NHASH - k) * src[at + k]
        slot = _hash_value(a, b) % n_hash
        collide[at // NHASH] = landmark[slot]
        landmark[slot] = at // NHASH
        at += NHASH
    base = 0
    while base + NHASH < len_out:
        a = 0
        b = 0
        for k in range(NHASH):
            a += tgt[base + k]
            b += (NHASH - k) * tgt[base + k]
        a &= 0xFFFF
        b &= 0xFFFF
        i = 0
        best_count = 0
        best_offset = 0
        best_literal = 0
        while True:
            block = landmark[_hash_value(a, b) % n_hash]
            tries = MAX_CANDIDATES
            while block >= 0 and tries > 0:
                tries -= 1
                start = block * NHASH
                forward = 0
                while (start + forward < len_src and base + i + forward < len_out
                       and src[start + forward] == tgt[base + i + forward]):
                    forward += 1
                back = 1
                while back < start and back <= i and src[start - back] == tgt[base + i - back]:
                    back += 1
                back -= 1
                count = forward + back
                offset = start - back
                literal = i - back
                if (count >= _digit_count(literal) + _digit_count(count)
                        + _digit_count(offset) + 3 and count > best_count):
                    best_count = count
                    best_offset = offset
                    best_literal = literal
                block = collide[block]
            if best_count:
                if best_literal:
                    _put_int(out, best_literal)
                    _put_char(out, b':')
                    _put_bytes(out, tgt + base, best_literal)
                    base += best_literal
                base += best_count
                _put_int(out, best_count)
                _put_char(out, b'@')
                _put_int(out, best_offset)
                _put_char(out, b',')
                break
            if base + i + NHASH >= len_out:
                _put_int(out, len_out - base)
                _put_char(out, b':')
                _put_bytes(out, tgt + base, len_out - base)
                base = len_out
                break
            old = tgt[base + i]
            new = tgt[base + i + NHASH]
            a = (a - old + new) & 0xFFFF
            b = (b - NHASH * old + a) & 0xFFFF
            i += 1
    if base < len_out:
        _put_int(out, len_out - base)
        _put_char(out, b':')
        _put_bytes(out, tgt + base, len_out - base)
    _put_int(out, _checksum(tgt, len_out))
    _put_char(out, b';')
    return 0


def delta_create(bytes source not None, bytes target not None):
    """A fossil delta that turns ``source`` into ``target`` (``delta_apply(source,
    delta) == target``): the same bytes as Fossil's encoder and npm ``fossil-delta``'s
    ``createDelta``. Linear in the inputs' sizes (at most 250 candidates per position)."""
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(source)
    cdef const unsigned char* tgt = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t len_src = PyBytes_GET_SIZE(source)
    cdef Py_ssize_t len_out = PyBytes_GET_SIZE(target)
    cdef Py_ssize_t n_hash = (len_src + NHASH - 1) // NHASH
    cdef Py_ssize_t* tables = NULL
    cdef OutBuf out
    out.data = NULL
    out.size = 0
    out.capacity = 0
    try:
        _reserve(&out, len_out // 8 + 32)
        _put_int(&out, len_out)
        _put_char(&out, b'\n')
        if len_src <= NHASH:
            _put_int(&out, len_out)
            _put_char(&out, b':')
            _put_bytes(&out, tgt, len_out)
            _put_int(&out, _checksum(tgt, len_out))
            _put_char(&out, b';')
        else:
            tables = <Py_ssize_t*>PyMem_Malloc(2 * n_hash * sizeof(Py_ssize_t))
            if tables == NULL:
                raise MemoryError()
            _create(src, len_src, tgt, len_out, &out, tables, tables + n_hash, n_hash)
        return PyBytes_FromStringAndSize(<char*>out.data, out.size)
    finally:
        PyMem_Free(tables)
        PyMem_Free(out.data)


cdef Py_ssize_t _get_int(const unsigned char* d, Py_ssize_t n, Py_ssize_t* at) except -1:
    # The base-64 integer at d[at[0]]; advances at[0] past it.
    cdef Py_ssize_t start = at[0]
    cdef Py_ssize_t i = start
    cdef Py_ssize_t value = 0
    cdef signed char digit
    while i < n:
        digit = DIGIT_VALUE[d[i]]
        if digit < 0:
            break
        if i - start == MAX_INT_DIGITS:
            raise DeltaError(f"integer at byte {start} has more than {MAX_INT_DIGITS} digits")
        value = (value << 6) | digit
        i += 1
    if i == start:
        raise DeltaError(f"expected a base-64 integer at byte {start}")
    at[0] = i
    return value


def delta_apply(bytes source not None, bytes delta not None):
    """The target that ``delta`` (Fossil's format, from any encoder) makes of ``source``.
    Raises :class:`DeltaError` when the delta is malformed, reads outside ``source``,
    or its size or checksum does not match what it produced: the caller's ``source``
    is not the one the delta was made from, and it must fetch the whole target."""
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(source)
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(delta)
    cdef Py_ssize_t len_src = PyBytes_GET_SIZE(source)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(delta)
    cdef Py_ssize_t at = 0
    cdef Py_ssize_t size, count, offset
    cdef unsigned char op
    cdef OutBuf out
    out.data = NULL
    out.size = 0
    out.capacity = 0
    try:
        size = _get_int(d, n, &at)
        if at >= n or d[at] != b'\n':
            raise DeltaError("size integer not terminated by a newline")
        at += 1
        # Never trust the declared size for the allocation; grow as bytes are produced.
        _reserve(&out, size if size < n + len_src else n + len_src)
        while at < n:
            count = _get_int(d, n, &at)
            if at >= n:
                break
            op = d[at]
            at += 1
            if op == b'@':
                offset = _get_int(d, n, &at)
                if at >= n or d[at] != b',':
                    raise DeltaError("copy command not terminated by ','")
                at += 1
                if out.size + count > size:
                    raise DeltaError("copy exceeds the declared target size")
                if offset + count > len_src:
                    raise DeltaError("copy extends past the end of the source")
                _put_bytes(&out, src + offset, count)
            elif op == b':':
                if out.size + count > size:
                    raise DeltaError("insert exceeds the declared target size")
                if at + count > n:
                    raise DeltaError("insert extends past the end of the delta")
                _put_bytes(&out, d + at, count)
                at += count
            elif op == b';':
                if at != n:
                    raise DeltaError("bytes after the checksum")
                if out.size != size:
                    raise DeltaError("target size does not match the declared size")
                if <Py_ssize_t>_checksum(out.data, out.size) != count:
                    raise DeltaError("bad checksum")
                return PyBytes_FromStringAndSize(<char*>out.data, out.size)
            else:
                raise DeltaError(f"unknown delta operator at byte {at - 1}")
        raise DeltaError("unterminated delta")
    finally:
        PyMem_Free(out.data)
