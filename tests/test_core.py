"""One suite for both ``shardws._core`` (Cython) and ``shardws._core_ref`` (pure Python).

Every behavioural test runs against each implementation through the ``core`` fixture;
the hypothesis tests feed the same input to both and require identical outcomes. The
compiled module is imported, never skipped: if it is not built, its tests fail.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IMPLEMENTATIONS = {"cython": "shardws._core", "python": "shardws._core_ref"}


def _load(name: str) -> ModuleType:
    # A plain import: a missing or broken build raises and the test errors (fails).
    return importlib.import_module(IMPLEMENTATIONS[name])


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def core(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param)


def outcome(mod: ModuleType, buf: bytes) -> tuple[Any, ...]:
    """Everything observable about parsing ``buf``, comparable across implementations."""
    try:
        env = mod.parse_envelope(buf)
    except mod.InvalidUTF8:
        return ("InvalidUTF8",)
    except mod.BadEnvelope as exc:
        return ("BadEnvelope", exc.id)
    return ("ok", env.op, env.id, env.channel, env.data, env.fields)


def both(buf: bytes) -> tuple[Any, ...]:
    """The common outcome of both implementations (asserting they agree)."""
    cy = outcome(_load("cython"), buf)
    py = outcome(_load("python"), buf)
    assert cy == py, buf
    return cy


# ------------------------------------------------------------------ valid commands


VALID: list[tuple[bytes, dict[str, Any]]] = [
    (
        b'{"id":1,"op":"subscribe","channel":"news"}',
        {"op": "subscribe", "id": 1, "channel": "news", "data": None, "fields": {}},
    ),
    (b'{"op":"ping"}', {"op": "ping", "id": None, "channel": None, "data": None}),
    (b'{"op":"x","id":0}', {"id": 0}),
    (b'{"op":"x","id":9007199254740992}', {"id": 2**53}),
    (b'{"op":"publish","channel":"c","data":1}', {"data": b"1"}),
    (b'{"op":"publish","data":-1.5e-3}', {"data": b"-1.5e-3"}),
    (b'{"op":"publish","data":0}', {"data": b"0"}),
    (b'{"op":"publish","data":-0.0E+10}', {"data": b"-0.0E+10"}),
    (b'{"op":"publish","data":"s"}', {"data": b'"s"'}),
    (b'{"op":"publish","data":"a\\nb\\u00e9"}', {"data": b'"a\\nb\\u00e9"'}),
    (b'{"op":"publish","data":true}', {"data": b"true"}),
    (b'{"op":"publish","data":false}', {"data": b"false"}),
    (b'{"op":"publish","data":null}', {"data": b"null"}),
    (b'{"op":"publish","data":[]}', {"data": b"[]"}),
    (b'{"op":"publish","data":{}}', {"data": b"{}"}),
    (b'{"op":"publish","data":[ ]}', {"data": b"[ ]"}),
    (
        b'{"op":"publish","data":{"a":[1,{"b":null,"b":2}],"c":{"d":[[],{}]}}}',
        {"data": b'{"a":[1,{"b":null,"b":2}],"c":{"d":[[],{}]}}'},
    ),
    # Whitespace inside and around data: data keeps the inside, never the outside.
    (
        b' \t\r\n{ "op" : "publish" ,\n "data" :  [ 1 ,\n\t{"a" : "b"} ]  \r\n} \n',
        {"op": "publish", "data": b'[ 1 ,\n\t{"a" : "b"} ]'},
    ),
    # Member order is free.
    (
        b'{"data":{"k":"v"},"channel":"c","op":"publish","id":5}',
        {"op": "publish", "id": 5, "channel": "c", "data": b'{"k":"v"}'},
    ),
    # Unicode raw in channel and data.
    (
        '{"op":"publish","channel":"caf\u00e9-\u6f22\U0001f600","data":"\u00e9\U0001f600"}'.encode(),
        {"channel": "caf\u00e9-\u6f22\U0001f600", "data": '"\u00e9\U0001f600"'.encode()},
    ),
    # Escapes in channel are resolved.
    (b'{"op":"s","channel":"ne\\u0077s"}', {"channel": "news"}),
    (b'{"op":"s","channel":"\\"\\\\\\/\\b\\f\\n\\r\\t"}', {"channel": '"\\/\b\f\n\r\t'}),
    (b'{"op":"s","channel":"\\ud83d\\ude00!"}', {"channel": "\U0001f600!"}),
    (b'{"op":"s","channel":"\\uD83D\\uDE00"}', {"channel": "\U0001f600"}),
    # Lone surrogate escapes are kept, as JSON decoders do.
    (b'{"op":"s","channel":"\\ud800"}', {"channel": "\ud800"}),
    (b'{"op":"s","channel":"\\udc00\\ud800"}', {"channel": "\udc00\ud800"}),
    (b'{"op":"s","channel":"\\ud83d\\u0041"}', {"channel": "\ud83dA"}),
    (b'{"op":"s","channel":"\\ud83d\\ud83d\\ude00"}', {"channel": "\ud83d\U0001f600"}),
    (b'{"op":"s","channel":"\\ud83dx\\ude00"}', {"channel": "\ud83dx\ude00"}),
    (b'{"op":"s","channel":""}', {"channel": ""}),
    # Escaped names are compared decoded.
    (b'{"\\u006fp":"x","\\u0069d":3}', {"op": "x", "id": 3}),
    (b'{"op":"\\u0070ing"}', {"op": "ping"}),
    # Other members land in fields, raw.
    (
        b'{"op":"connect","token":"abc","offset":12,"opts":{"a": [1, 2]},"t\\u00e9":null}',
        {
            "op": "connect",
            "fields": {
                "token": b'"abc"',
                "offset": b"12",
                "opts": b'{"a": [1, 2]}',
                "t\u00e9": b"null",
            },
        },
    ),
]


@pytest.mark.parametrize(("buf", "expected"), VALID)
def test_valid(core: ModuleType, buf: bytes, expected: dict[str, Any]) -> None:
    env = core.parse_envelope(buf)
    for name, value in expected.items():
        assert getattr(env, name) == value, name
    if "fields" not in expected:
        assert env.fields == {}
    if env.data is not None:
        json.loads(env.data)  # raw, but still one JSON value


def test_envelope_is_read_only(core: ModuleType) -> None:
    env = core.parse_envelope(b'{"op":"x","id":1,"channel":"c","data":1}')
    for name in ("op", "id", "channel", "data", "fields"):
        with pytest.raises(AttributeError):
            setattr(env, name, None)


def test_envelope_constructor(core: ModuleType) -> None:
    env = core.Envelope("ping")
    assert (env.op, env.id, env.channel, env.data, env.fields) == ("ping", None, None, None, {})
    env = core.Envelope("p", 3, "c", b"1", {"k": b"2"})
    assert (env.op, env.id, env.channel, env.data, env.fields) == ("p", 3, "c", b"1", {"k": b"2"})
    assert "Envelope(op='p'" in repr(env)


def test_exception_hierarchy(core: ModuleType) -> None:
    assert issubclass(core.InvalidUTF8, ValueError)
    assert issubclass(core.BadEnvelope, ValueError)
    assert not issubclass(core.InvalidUTF8, core.BadEnvelope)
    assert core.BadEnvelope("m").id is None
    assert core.BadEnvelope("m", 4).id == 4
    assert core.MAX_DEPTH == 32
    assert core.MAX_ID == 2**53


def test_parse_requires_bytes(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.parse_envelope('{"op":"x"}')
    with pytest.raises(TypeError):
        core.parse_envelope(None)


# ---------------------------------------------------------------------- rejections

BAD_UTF8 = [
    b"\xff",  # never valid
    b"\x80",  # stray continuation
    b"\xc0\xaf",  # overlong '/'
    b"\xc1\xbf",  # overlong
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xf0\x80\x80\xaf",  # overlong 4-byte
    b"\xed\xa0\x80",  # U+D800 encoded
    b"\xed\xbf\xbf",  # U+DFFF encoded
    b"\xed\xa0\xbd\xed\xb8\x80",  # CESU-8 surrogate pair
    b"\xe2\x82",  # truncated 3-byte
    b"\xc3",  # truncated 2-byte
    b"\xf0\x9f\x98",  # truncated 4-byte
    b"\xe2\x28\xa1",  # bad continuation
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",  # lead byte beyond RFC 3629
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
]


@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize(
    "template",
    [
        b"%s",
        b'{"op":"%s"}',  # inside a string
        b'{"op":"x","data":"a%sb"}',
        b'{"op":"x"}%s',  # outside strings
        b'%s{"op":"x"}',
        b'{"op":"x",%s}',
        b'{"op":"x","data":' + b"[" * 40 + b"%s",  # invalid JSON too: UTF-8 wins
        b"12345678abcdefg%s",  # after a run of ASCII longer than 8 bytes
    ],
)
def test_invalid_utf8(core: ModuleType, template: bytes, bad: bytes) -> None:
    with pytest.raises(core.InvalidUTF8):
        core.parse_envelope(template % bad)


@pytest.mark.parametrize(
    "good",
    [
        b"\xc2\x80",
        b"\xdf\xbf",
        b"\xe0\xa0\x80",
        b"\xed\x9f\xbf",
        b"\xee\x80\x80",
        b"\xef\xbf\xbf",
        b"\xf0\x90\x80\x80",
        b"\xf4\x8f\xbf\xbf",
    ],
)
def test_utf8_boundaries_accepted(core: ModuleType, good: bytes) -> None:
    env = core.parse_envelope(b'{"op":"%s"}' % good)
    assert env.op == good.decode()


BAD: list[tuple[bytes, int | None]] = [
    # Not one JSON object.
    (b"", None),
    (b"  \n", None),
    (b"[]", None),
    (b'"op"', None),
    (b"1", None),
    (b"null", None),
    (b'[{"op":"x"}]', None),
    (b'{"op":"x"} {}', None),
    (b'{"op":"x"}x', None),
    (b'{"op":"x"},', None),
    (b'{"op":"x"', None),
    (b'{"op":"x', None),
    (b'{"op"', None),
    (b"{", None),
    (b"}", None),
    # Trailing commas, missing parts.
    (b'{"op":"x",}', None),
    (b'{,"op":"x"}', None),
    (b'{"op":"x",,"id":1}', None),
    (b'{"op":"x","data":[1,]}', None),
    (b'{"op":"x","data":[,1]}', None),
    (b'{"op":"x","data":{"a":1,}}', None),
    (b'{"op":"x","data":{"a"}}', None),
    (b'{"op":"x","data":{"a":}}', None),
    (b'{"op":"x","data":{1:2}}', None),
    (b'{"op":"x","data":}', None),
    (b'{"op":"x","data"}', None),
    (b'{"op" "x"}', None),
    (b'{"op":"x" "id":1}', None),
    (b'{"op":"x","data":[1 2]}', None),
    (b'{"op":"x","data":[}', None),
    (b'{"op":"x","data":[}]}', None),
    (b'{"op":"x","data":{]}', None),
    # Not RFC 8259 values.
    (b'{"op":"x","data":NaN}', None),
    (b'{"op":"x","data":Infinity}', None),
    (b'{"op":"x","data":-Infinity}', None),
    (b'{"op":"x","data":True}', None),
    (b'{"op":"x","data":nul}', None),
    (b'{"op":"x","data":truex}', None),
    (b'{"op":"x","data":undefined}', None),
    (b"{'op':'x'}", None),
    (b'{op:"x"}', None),
    # Numbers.
    (b'{"op":"x","data":01}', None),
    (b'{"op":"x","data":-01}', None),
    (b'{"op":"x","data":00}', None),
    (b'{"op":"x","data":1.}', None),
    (b'{"op":"x","data":.5}', None),
    (b'{"op":"x","data":1e}', None),
    (b'{"op":"x","data":1e+}', None),
    (b'{"op":"x","data":+1}', None),
    (b'{"op":"x","data":-}', None),
    (b'{"op":"x","data":0x10}', None),
    (b'{"op":"x","data":1.5.2}', None),
    # Strings.
    (b'{"op":"a\nb"}', None),
    (b'{"op":"a\tb"}', None),
    (b'{"op":"\x00"}', None),
    (b'{"op":"x","data":"\x1f"}', None),
    (b'{"op":"\\x41"}', None),
    (b'{"op":"\\\'"}', None),
    (b'{"op":"\\u12"}', None),
    (b'{"op":"\\u12G4"}', None),
    (b'{"op":"\\u+123"}', None),
    (b'{"op":"\\u 123"}', None),
    (b'{"op":"\\U0041"}', None),
    (b'{"op":"\\"}', None),
    (b'{"op":"\\ud83d\\uZZZZ"}', None),
    (b'{"a\nb":1,"op":"x"}', None),
    # Whitespace is only space, tab, LF, CR.
    (b'{\x0c"op":"x"}', None),
    (b'{\x0b"op":"x"}', None),
    (b'\x00{"op":"x"}', None),
    # Valid UTF-8 but non-ASCII outside strings.
    (b'{"op":"x"}\xc2\xa0', None),  # NBSP
    (b'\xef\xbb\xbf{"op":"x"}', None),  # BOM
    (b'{"op":"x","data":\xd9\xa3}', None),  # ARABIC-INDIC DIGIT THREE
    (b'{"op":"x","data":1\xd9\xa3}', None),
    (b'{\xc3\xa9:1,"op":"x"}', None),
    (b'{"op":"x","data":[1,\xe2\x80\x83 2]}', None),  # EM SPACE
    # Duplicate names, compared decoded.
    (b'{"op":"x","op":"y"}', None),
    (b'{"id":3,"op":"x","op":"y"}', 3),
    (b'{"id":3,"op":"x","\\u006fp":"y"}', 3),
    (b'{"id":3,"op":"x","data":1,"data":2}', 3),
    (b'{"id":3,"op":"x","channel":"a","channel":"a"}', 3),
    (b'{"id":3,"op":"x","tok":1,"t\\u006fk":1}', 3),
    (b'{"id":1,"id":1,"op":"x"}', None),  # ambiguous id is not reported
    # op.
    (b"{}", None),
    (b'{"id":7}', 7),
    (b'{"id":7,"data":1}', 7),
    (b'{"id":7,"op":1}', 7),
    (b'{"id":7,"op":null}', 7),
    (b'{"id":7,"op":["x"]}', 7),
    (b'{"id":7,"op":{"a":"x"}}', 7),
    (b'{"id":7,"op":true}', 7),
    # id.
    (b'{"op":"x","id":-1}', None),
    (b'{"op":"x","id":-0}', None),
    (b'{"op":"x","id":1.0}', None),
    (b'{"op":"x","id":1e2}', None),
    (b'{"op":"x","id":1E0}', None),
    (b'{"op":"x","id":"1"}', None),
    (b'{"op":"x","id":null}', None),
    (b'{"op":"x","id":true}', None),
    (b'{"op":"x","id":[1]}', None),
    (b'{"op":"x","id":9007199254740993}', None),
    (b'{"op":"x","id":10000000000000000}', None),
    (b'{"op":"x","id":99999999999999999999999999}', None),
    (b'{"id":5.5}', None),  # bad id outranks missing op
    # channel.
    (b'{"id":2,"op":"x","channel":5}', 2),
    (b'{"id":2,"op":"x","channel":null}', 2),
    (b'{"id":2,"op":"x","channel":["a"]}', 2),
    (b'{"id":2,"op":"x","channel":false}', 2),
    # A syntax error anywhere hides the id.
    (b'{"id":2,"op":1,"data":[1,]}', None),
    (b'{"id":2,"op":"x","data":01}', None),
]


@pytest.mark.parametrize(("buf", "expected_id"), BAD)
def test_bad_envelope(core: ModuleType, buf: bytes, expected_id: int | None) -> None:
    with pytest.raises(core.BadEnvelope) as info:
        core.parse_envelope(buf)
    assert not isinstance(info.value, core.InvalidUTF8)
    assert info.value.id == expected_id


def _nested(depth: int, kind: str) -> bytes:
    """A value of exactly ``depth`` nested containers."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    pairs, odd = divmod(depth, 2)
    if odd:
        return b'[{"a":' * pairs + b"[]" + b"}]" * pairs
    return b'[{"a":' * (pairs - 1) + b"[{}]" + b"}]" * (pairs - 1)


@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
@pytest.mark.parametrize("member", ["data", "extra"])
def test_depth_limit(core: ModuleType, kind: str, member: str) -> None:
    # The top-level object is depth 1, so a member value may nest 31 deep.
    for depth in (30, 31):
        value = _nested(depth, kind)
        env = core.parse_envelope(b'{"op":"x","id":1,"%s":%s}' % (member.encode(), value))
        raw = env.data if member == "data" else env.fields[member]
        assert raw == value
    for depth in (32, 33, 1000):
        buf = b'{"op":"x","id":1,"%s":%s}' % (member.encode(), _nested(depth, kind))
        with pytest.raises(core.BadEnvelope) as info:
            core.parse_envelope(buf)
        assert info.value.id is None


def test_depth_limit_hidden_by_duplicate_names(core: ModuleType) -> None:
    # A dict-based parser would keep only the last "a" and miss the depth.
    deep = _nested(31, "array")
    with pytest.raises(core.BadEnvelope):
        core.parse_envelope(b'{"op":"x","data":{"a":%s,"a":1}}' % deep)
    core.parse_envelope(b'{"op":"x","data":{"a":%s,"a":1}}' % _nested(30, "array"))


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_hostile_nesting(core: ModuleType, depth: int) -> None:
    for opener in (b"[", b'{"a":'):
        with pytest.raises(core.BadEnvelope):
            core.parse_envelope(b'{"op":"x","data":' + opener * depth)
    with pytest.raises(core.BadEnvelope):
        core.parse_envelope(b"[" * depth)


def test_large_values(core: ModuleType) -> None:
    # Longer than CPython's int/str digit limit: valid JSON all the same.
    digits = b"7" * 20_000
    env = core.parse_envelope(b'{"op":"x","data":%s,"n":-%s.5e-9}' % (digits, digits))
    assert env.data == digits
    assert env.fields["n"] == b"-%s.5e-9" % digits
    long_text = ("\u00e9a\U0001f600\\n" * 50_000).encode()
    env = core.parse_envelope(b'{"op":"x","channel":"%s"}' % long_text)
    assert env.channel == "\u00e9a\U0001f600\n" * 50_000


# ------------------------------------------------------------ hypothesis: differential

KNOWN = ("op", "id", "channel", "data")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
whitespace = st.text(alphabet=" \t\n\r", max_size=3)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON, in one of several valid spellings."""
    ensure_ascii = draw(st.booleans())
    style = draw(st.sampled_from(["compact", "default", "indent"]))
    if style == "compact":
        text = json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))
    elif style == "default":
        text = json.dumps(value, ensure_ascii=ensure_ascii)
    else:
        indent = draw(st.integers(0, 2) | st.just("\t"))
        text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    return text.encode()


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A valid envelope and the values it encodes."""
    values: dict[str, Any] = {"op": draw(st.text(max_size=10))}
    if draw(st.booleans()):
        values["id"] = draw(st.integers(0, 2**53))
    if draw(st.booleans()):
        values["channel"] = draw(st.text(max_size=10))
    if draw(st.booleans()):
        values["data"] = draw(json_values)
    extra = draw(
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k not in KNOWN), json_values, max_size=3
        )
    )
    values.update(extra)
    members = [(key, draw(encoded(value))) for key, value in values.items()]
    members = draw(st.permutations(members))
    parts = []
    for key, raw in members:
        parts.append(
            draw(whitespace).encode()
            + draw(encoded(key))
            + draw(whitespace).encode()
            + b":"
            + draw(whitespace).encode()
            + raw
            + draw(whitespace).encode()
        )
    buf = (
        draw(whitespace).encode()
        + b"{"
        + b",".join(parts)
        + draw(whitespace).encode()
        + b"}"
        + draw(whitespace).encode()
    )
    return buf, values


# SHARDWS_HYPOTHESIS_EXAMPLES=20000 for a deep run; the default keeps the file fast.
FAST = settings(
    max_examples=int(os.environ.get("SHARDWS_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FAST
@given(envelopes())
def test_generated_envelopes(case: tuple[bytes, dict[str, Any]]) -> None:
    buf, values = case
    result = both(buf)
    if 1 + max((_depth(v) for v in values.values()), default=0) > 32:
        assert result[0] == "BadEnvelope"
        return
    assert result[0] == "ok", result
    _, op, id_, channel, data, fields = result
    assert op == values["op"]
    assert id_ == values.get("id")
    assert channel == values.get("channel")
    if "data" in values:
        assert data is not None
        assert json.loads(data) == values["data"]
        assert data in buf  # the exact input bytes
    else:
        assert data is None
    assert set(fields) == set(values) - set(KNOWN)
    for key, raw in fields.items():
        assert json.loads(raw) == values[key]
        assert raw in buf


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(envelopes())[0])
    interesting = st.sampled_from(
        [*b'{}[]",:\\-+.0123456789eEtfnu \t\n\r\x00\x1f', 0x80, 0xC3, 0xED, 0xF4, 0xFF]
    )
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if action == "delete" and buf:
            del buf[pos]
        elif action == "insert":
            buf.insert(pos, draw(interesting | st.integers(0, 255)))
        elif buf:
            buf[pos] = draw(interesting | st.integers(0, 255))
    return bytes(buf)


@FAST
@given(mutated())
def test_mutated_envelopes_agree(buf: bytes) -> None:
    both(buf)


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_agree(buf: bytes) -> None:
    both(buf)


# Text over the JSON alphabet (plus a few troublemakers) reaches deeper than raw bytes.
json_ish = st.lists(
    st.sampled_from(
        [
            *'{}[]",:\\/-+.0123456789eEtrufalsnbNIy \t\n\r\x00\x0c',
            *('"op"', '"id"', '"data"', "true", "null", "\\u", "\u00e9", "\ud800"),
        ]
    ),
    max_size=40,
).map("".join)


@FAST
@given(json_ish)
def test_json_ish_text_agrees(text: str) -> None:
    both(text.encode("utf-8", "surrogatepass"))


@FAST
@given(st.text(max_size=20), st.booleans())
def test_escaped_strings_decode_like_json(text: str, ensure_ascii: bool) -> None:
    channel = json.dumps(text, ensure_ascii=ensure_ascii).encode()
    result = both(b'{"op":%s,"channel":%s}' % (channel, channel))
    assert result[1] == result[3] == text


@FAST
@given(st.lists(st.sampled_from(["\\ud83d", "\\ude00", "\\udbff", "\\udfff", "\\u0041", "x"])))
def test_surrogate_escapes_decode_like_json(pieces: list[str]) -> None:
    literal = '"' + "".join(pieces) + '"'
    result = both(b'{"op":%s}' % literal.encode())
    assert result[1] == json.loads(literal)


# ---------------------------------------------------------------------------- frames


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_build_text_frame(core: ModuleType, length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    frame = core.build_text_frame(payload)
    assert frame[0] == 0x81  # FIN, opcode text (RFC 6455 5.2)
    assert frame[1] & 0x80 == 0  # server frames are never masked
    code = frame[1] & 0x7F
    if length < 126:
        assert code == length
        header = 2
    elif length < 65536:
        assert code == 126
        assert struct.unpack("!H", frame[2:4])[0] == length
        header = 4
    else:
        assert code == 127
        assert struct.unpack("!Q", frame[2:10])[0] == length
        header = 10
    assert frame[header:] == payload
    assert len(frame) == header + length


def test_build_text_frame_requires_bytes(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.build_text_frame("text")


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_build_frame_opcode_and_rsv1(core: ModuleType, binary: bool, compressed: bool) -> None:
    frame = core.build_frame(b"abc", binary, compressed)
    assert frame[0] == 0x80 | (0x40 if compressed else 0) | (0x2 if binary else 0x1)
    assert frame[1:] == b"\x03abc"
    assert core.build_frame(b"abc") == core.build_text_frame(b"abc")


@pytest.mark.parametrize(
    ("buf", "valid"),
    [
        (b"", True),
        ("héllo €𝄞".encode(), True),
        (b"\xc0\xaf", False),  # overlong
        (b"\xed\xa0\x80", False),  # surrogate
        (b"\xf4\x90\x80\x80", False),  # above U+10FFFF
        (b"ok\xe2\x82", False),  # truncated
    ],
)
def test_utf8_valid(core: ModuleType, buf: bytes, valid: bool) -> None:
    assert core.utf8_valid(buf) is valid


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_utf8_valid_agrees_with_parse_envelope(buf: bytes) -> None:
    for name in IMPLEMENTATIONS:
        mod = _load(name)
        try:
            mod.parse_envelope(buf)
            rejected_as_utf8 = False
        except mod.InvalidUTF8:
            rejected_as_utf8 = True
        except mod.BadEnvelope:
            rejected_as_utf8 = False
        assert mod.utf8_valid(buf) is not rejected_as_utf8


def inflate_frame(frame: bytes, window_bits: int = 15) -> bytes:
    """The message of one compressed server frame (RFC 7692 7.2.2)."""
    import zlib

    assert frame[0] & 0x40, "RSV1 must mark a compressed message"
    code = frame[1] & 0x7F
    header = 2 if code < 126 else 4 if code == 126 else 10
    inflater = zlib.decompressobj(-window_bits)
    return inflater.decompress(frame[header:] + b"\x00\x00\xff\xff")


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_deflated_frames_inflate_to_the_message(core: ModuleType, bits: int) -> None:
    message = json.dumps({"text": "hello world " * 300}).encode()
    deflated = core.Deflated(message, 6)
    frame = deflated.frame(bits)
    assert frame[0] == 0xC1  # FIN + RSV1 + text
    assert len(frame) < len(message) / 5
    assert inflate_frame(frame, bits) == message
    # Each message is compressed on its own: a fresh inflater (no context) reads it, even
    # after other messages went through the same process-wide compressor.
    core.Deflated(b"x" * 5000).frame(bits)
    again = core.Deflated(message, 6).frame(bits)
    assert inflate_frame(again, bits) == message
    assert core.Deflated(b"\x00\x01", binary=True).frame(bits)[0] == 0xC2
    assert inflate_frame(core.Deflated(b"").frame(bits)) == b""


def test_deflated_rejects_bad_arguments(core: ModuleType) -> None:
    with pytest.raises(ValueError):
        core.Deflated(b"x", 0)
    with pytest.raises(ValueError):
        core.Deflated(b"x").frame(8)
    with pytest.raises(TypeError):
        core.Deflated("x")


@given(st.binary(max_size=3000), st.integers(1, 9), st.integers(9, 15))
@settings(max_examples=60, deadline=None)
def test_deflated_implementations_agree(payload: bytes, level: int, bits: int) -> None:
    frames = [_load(n).Deflated(payload, level, True).frame(bits) for n in IMPLEMENTATIONS]
    assert {inflate_frame(f, bits) for f in frames} == {payload}


# --------------------------------------------------------------------------- fan-out

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
        yield runner.run


async def connect() -> tuple[asyncio.Transport, socket.socket]:
    """A real transport on one end of a socketpair; the other end is the 'client'."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    return transport, peer


async def read_exactly(peer: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = bytearray()
    async with asyncio.timeout(timeout):
        while len(chunks) < n:
            chunk = await loop.sock_recv(peer, min(n - len(chunks), 1 << 20))
            assert chunk, "peer saw EOF"
            chunks += chunk
    return bytes(chunks)


async def assert_silent(peer: socket.socket) -> None:
    await asyncio.sleep(0.02)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


def test_sink_captures_transport(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        transport, peer = await connect()
        sink = core.Sink(transport)
        assert sink.fd == transport.get_extra_info("socket").fileno()
        assert sink.closed is False
        with pytest.raises(AttributeError):
            sink.closed = True
        with pytest.raises(AttributeError):
            sink.fd = 0
        sink.close()
        sink.close()
        assert sink.closed is True
        transport.close()
        peer.close()

    run(main())


def test_sink_requires_socket(core: ModuleType) -> None:
    class NoSocket:
        def get_extra_info(self, name: str) -> None:
            return None

    with pytest.raises(ValueError):
        core.Sink(NoSocket())


def test_fanout_delivers_once_to_each(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        pairs = [await connect() for _ in range(4)]
        sinks = [core.Sink(t) for t, _ in pairs]
        frames = [core.build_text_frame(b'{"n":%d}' % i) for i in range(3)]
        for frame in frames:
            assert core.fanout(frame, sinks) == 4
        assert core.flush() == 4  # frames 2 and 3 were corked per sink
        expected = b"".join(frames)
        for transport, peer in pairs:
            assert await read_exactly(peer, len(expected)) == expected
            await assert_silent(peer)
            transport.close()
            peer.close()

    run(main())


def test_fanout_skips_closed_sink(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        pairs = [await connect() for _ in range(3)]
        sinks = [core.Sink(t) for t, _ in pairs]
        sinks[1].close()
        frame = core.build_text_frame(b"hello")
        assert core.fanout(frame, sinks) == 2
        assert core.fanout(frame, []) == 0
        assert await read_exactly(pairs[0][1], len(frame)) == frame
        assert await read_exactly(pairs[2][1], len(frame)) == frame
        await assert_silent(pairs[1][1])
        for transport, peer in pairs:
            transport.close()
            peer.close()

    run(main())


def _fill(fd: int) -> bytes:
    """Write to a non-blocking socket until the kernel buffer is full; return what went."""
    sent = bytearray()
    chunk = bytes(range(256)) * 256
    while True:
        try:
            n = os.write(fd, chunk)
        except BlockingIOError:
            return bytes(sent)
        sent += chunk[:n]


def test_fanout_to_slow_peer_keeps_order(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        (slow_t, slow_peer), (fast_t, fast_peer) = await connect(), await connect()
        sinks = [core.Sink(slow_t), core.Sink(fast_t)]
        backlog = _fill(sinks[0].fd)  # the slow client has not read anything yet
        frames = [core.build_text_frame(bytes([65 + i]) * 3000) for i in range(5)]
        for frame in frames:
            assert core.fanout(frame, sinks) == 2
        core.flush()
        # Nothing fit: the first frame went to the transport, later ones queued behind it.
        assert slow_t.get_write_buffer_size() == sum(map(len, frames))
        assert fast_t.get_write_buffer_size() == 0
        expected = backlog + b"".join(frames)
        assert await read_exactly(slow_peer, len(expected)) == expected
        assert await read_exactly(fast_peer, len(expected) - len(backlog)) == b"".join(frames)
        await assert_silent(slow_peer)
        for t, p in ((slow_t, slow_peer), (fast_t, fast_peer)):
            t.close()
            p.close()

    run(main())


def test_fanout_partial_send_remainder_via_transport(
    core: ModuleType, run: Callable[..., Any]
) -> None:
    async def main() -> None:
        transport, peer = await connect()
        sink = core.Sink(transport, max_pending=16 << 20)
        big = core.build_text_frame(os.urandom(4 << 20))  # larger than any socket buffer
        small = core.build_text_frame(b"after")
        assert core.fanout(big, [sink]) == 1
        buffered = transport.get_write_buffer_size()
        assert 0 < buffered < len(big)  # part went by send(), the rest is queued
        assert core.fanout(small, [sink]) == 1  # must queue behind, not jump ahead
        core.flush()
        assert transport.get_write_buffer_size() == buffered + len(small)
        expected = big + small
        assert await read_exactly(peer, len(expected)) == expected
        transport.close()
        peer.close()

    run(main())


def test_fanout_to_dead_peer_does_not_raise(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        (dead_t, dead_peer), (live_t, live_peer) = await connect(), await connect()
        sinks = [core.Sink(dead_t), core.Sink(live_t)]
        dead_peer.close()
        frame = core.build_text_frame(b"x" * 100)
        for _ in range(5):
            core.fanout(frame, sinks)  # EPIPE goes to the transport's error path
            core.flush()
            await asyncio.sleep(0.01)
        assert dead_t.is_closing()
        assert core.fanout(frame, sinks) == 1
        core.flush()
        assert sinks[0].closed  # the closing transport was noticed
        assert not sinks[1].closed
        got = await read_exactly(live_peer, 6 * len(frame))
        assert got == frame * 6
        live_t.close()
        live_peer.close()

    run(main())


def test_fanout_skips_closed_transport(core: ModuleType, run: Callable[..., Any]) -> None:
    """A sink its owner forgot to close must not send() to a possibly reused fd."""

    async def main() -> None:
        transport, peer = await connect()
        sink = core.Sink(transport)
        transport.close()
        await asyncio.sleep(0.01)  # connection_lost ran; the fd is closed
        assert core.fanout(core.build_text_frame(b"late"), [sink]) == 0
        assert sink.closed
        peer.close()

    run(main())


class _Broken:
    """A transport whose methods fail as a closed uvloop handle's do."""

    def __init__(self, sock: socket.socket, fail: str) -> None:
        self.sock = sock
        self.fail = fail

    def get_extra_info(self, name: str) -> socket.socket:
        return self.sock

    def is_closing(self) -> bool:
        if self.fail == "is_closing":
            raise RuntimeError("handle is closed")
        return False

    def get_write_buffer_size(self) -> int:
        if self.fail == "size":
            raise RuntimeError("handle is closed")
        return 1  # forces the transport.write path

    def write(self, data: bytes) -> None:
        raise RuntimeError("handle is closed")


@pytest.mark.parametrize("fail", ["is_closing", "size", "write"])
def test_fanout_survives_raising_transport(core: ModuleType, fail: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        sink = core.Sink(_Broken(a, fail))
        # With data buffered the frame is corked (taken) and written at flush().
        assert core.fanout(b"frame", [sink]) == (1 if fail == "write" else 0)
        core.flush()
        assert sink.closed


def test_fanout_argument_types(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.fanout("frame", [])
    with pytest.raises(TypeError):
        core.fanout(b"frame", [object()])


def test_coalescing_first_frame_at_once_rest_in_one_write(
    core: ModuleType, run: Callable[..., Any]
) -> None:
    async def main() -> None:
        core.flush()
        transport, peer = await connect()
        sink = core.Sink(transport)
        frames = [core.build_text_frame(b"m%d" % i) for i in range(10)]
        for frame in frames:
            assert core.fanout(frame, [sink]) == 1
        # An idle sink gets the first frame at once; the rest wait for flush().
        assert await read_exactly(peer, len(frames[0])) == frames[0]
        await assert_silent(peer)
        assert sink.corked_bytes == sum(map(len, frames[1:]))
        assert core.flush() == 1
        assert sink.corked_bytes == 0
        rest = b"".join(frames[1:])
        assert await read_exactly(peer, len(rest)) == rest
        # A new loop generation: the next frame leaves at once again.
        assert core.fanout(frames[0], [sink]) == 1
        assert await read_exactly(peer, len(frames[0])) == frames[0]
        core.flush()
        transport.close()
        peer.close()

    run(main())


def test_sink_send_keeps_order_with_fanout(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        core.flush()
        transport, peer = await connect()
        sink = core.Sink(transport)
        pub, reply = core.build_text_frame(b"pub"), core.build_text_frame(b"reply")
        assert core.fanout(pub, [sink]) == 1
        assert core.fanout(pub, [sink]) == 1  # corked
        assert sink.send(reply) is True  # must not overtake the corked publication
        sink.flush()  # per-sink flush, e.g. before a close frame
        expected = pub + pub + reply
        assert await read_exactly(peer, len(expected)) == expected
        assert core.flush() == 1  # the sink was on the dirty list; nothing left to send
        await assert_silent(peer)
        transport.close()
        peer.close()

    run(main())


@pytest.mark.parametrize("drop", [True, False])
def test_slow_consumer_policy_bounds_pending(
    core: ModuleType, run: Callable[..., Any], drop: bool
) -> None:
    async def main() -> None:
        core.flush()
        core.take_overflowed()
        (slow_t, slow_peer), (fast_t, fast_peer) = await connect(), await connect()
        limit = 64 * 1024
        slow = core.Sink(slow_t, max_pending=limit, owner="slow")
        fast = core.Sink(fast_t, max_pending=limit, owner="fast")
        _fill(slow.fd)  # the slow client stopped reading
        frame = core.build_text_frame(b"x" * 1000)
        drops_before = core.total_drops()
        delivered = 0
        for _ in range(200):
            core.fanout(frame, [slow, fast], drop=drop)
            core.flush()
            assert slow_t.get_write_buffer_size() + slow.corked_bytes <= limit + len(frame)
            delivered += 1
            await read_exactly(fast_peer, len(frame))  # the fast one gets every frame
        if drop:
            assert not slow.closed and slow.drops > 100
            assert core.total_drops() - drops_before == slow.drops
            assert core.take_overflowed() == []
        else:
            assert slow.closed and slow.overflowed and slow.drops == 0
            assert [s.owner for s in core.take_overflowed()] == ["slow"]
            assert core.take_overflowed() == []
        assert not fast.closed and fast.drops == 0 and delivered == 200
        for t, p in ((slow_t, slow_peer), (fast_t, fast_peer)):
            t.close()
            p.close()

    run(main())


# -------------------------------------------------------------------------- selector


def test_selector_prefers_extension() -> None:
    _load("cython")  # must be built
    code = "import shardws.core as c; print(c.IMPLEMENTATION, c.parse_envelope.__module__)"
    env = {k: v for k, v in os.environ.items() if k != "SHARDWS_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["cython", "shardws._core"], out.stderr
    env["SHARDWS_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["python", "shardws._core_ref"], out.stderr


# ------------------------------------------------------------------ release_handshake


def test_release_handshake_keeps_the_connection_working(core: ModuleType) -> None:
    """After release, picows still sends control and data frames and closes cleanly."""
    import picows

    class Server(picows.WSListener):
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            core.release_handshake(transport)
            if core.__name__ == "shardws._core":
                assert transport.request is None and transport.response is None
            transport.send(picows.WSMsgType.TEXT, b"x" * 5000)  # grows the small buffer
            transport.send_ping(b"p")
            transport.send_close(picows.WSCloseCode(4501), b"bye")

    class Client(picows.WSListener):
        def __init__(self) -> None:
            self.got: list[tuple[picows.WSMsgType, bytes]] = []

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            self.got.append((frame.msg_type, frame.get_payload_as_bytes()))
            if frame.msg_type == picows.WSMsgType.CLOSE:
                transport.disconnect()

    async def main() -> None:
        server = await picows.ws_create_server(lambda _r: Server(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await picows.ws_connect(
            Client, f"ws://127.0.0.1:{port}/", enable_auto_pong=False
        )
        await asyncio.wait_for(transport.wait_disconnected(), 5)
        assert [t for t, _ in client.got] == [
            picows.WSMsgType.TEXT,
            picows.WSMsgType.PING,
            picows.WSMsgType.CLOSE,
        ]
        assert client.got[0][1] == b"x" * 5000
        assert client.got[2][1] == b"\x11\x95bye"  # 4501, big-endian
        server.close()

    asyncio.run(main())

    with pytest.raises(TypeError):
        core.release_handshake(None)


# ------------------------------------------------------------------------ TokenBucket


def test_token_bucket(core: ModuleType) -> None:
    bucket = core.TokenBucket(10.0, 3, 100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.05)  # half a token refilled
    assert bucket.take(100.11)  # one whole token (and a bit)
    assert not bucket.take(99.0)  # a clock going backwards refills nothing
    assert bucket.take(200.0) and bucket.tokens == pytest.approx(2.0)  # capped at burst
    with pytest.raises(ValueError):
        core.TokenBucket(0.0, 3, 0.0)
    with pytest.raises(ValueError):
        core.TokenBucket(1.0, 0, 0.0)


@given(st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), max_size=50))
def test_token_bucket_implementations_agree(steps: list[float]) -> None:
    fast, ref = _load("cython").TokenBucket(7.0, 5, 0.0), _load("python").TokenBucket(7.0, 5, 0.0)
    now = 0.0
    for step in steps:
        now += step / 100
        assert fast.take(now) == ref.take(now)


def test_indirect_sink_writes_only_through_the_transport(
    core: ModuleType, run: Callable[..., Any]
) -> None:
    """TLS connections: no direct send(), frames still coalesced and ordered."""

    class Recording:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def get_extra_info(self, name: str) -> None:
            raise AssertionError("an indirect sink needs no socket")

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    async def main() -> None:
        core.flush()
        transport = Recording()
        sink = core.Sink(transport, direct=False)
        assert sink.fd == -1
        assert core.fanout(b"a", [sink]) == 1
        assert core.fanout(b"b", [sink]) == 1
        assert sink.send(b"c")
        core.flush()
        assert transport.writes == [b"a", b"bc"]

    run(main())


def test_fanout_compresses_once_per_window_size(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        bits = [0, 9, 15, 9, 0, 15]  # 0: this subscriber did not negotiate compression
        pairs = [await connect() for _ in bits]
        sinks = [core.Sink(t, deflate_bits=b) for (t, _), b in zip(pairs, bits, strict=True)]
        assert [s.deflate_bits for s in sinks] == bits
        message = b'{"type":"pub","data":"' + b"abc" * 2000 + b'"}'
        frame = core.build_text_frame(message)
        deflated = core.Deflated(message)
        assert core.fanout(frame, sinks, False, deflated) == len(sinks)
        core.flush()
        expected = {0: frame, 9: deflated.frame(9), 15: deflated.frame(15)}
        assert len(expected[9]) < len(frame) and len(expected[15]) < len(frame)
        saved = sum(len(frame) - len(expected[b]) for b in bits)
        assert deflated.saved == saved
        for (transport, peer), b in zip(pairs, bits, strict=True):
            got = await read_exactly(peer, len(expected[b]))
            assert got == expected[b]  # the very frame built once for that window size
            await assert_silent(peer)
            transport.close()
            peer.close()
        # Without a Deflated every sink gets the plain frame.
        pairs = [await connect() for _ in range(2)]
        sinks = [core.Sink(t, deflate_bits=15) for t, _ in pairs]
        assert core.fanout(frame, sinks) == 2
        core.flush()
        for transport, peer in pairs:
            assert await read_exactly(peer, len(frame)) == frame
            transport.close()
            peer.close()

    run(main())


def test_sink_rejects_bad_deflate_bits(core: ModuleType, run: Callable[..., Any]) -> None:
    async def main() -> None:
        transport, peer = await connect()
        for bad in (8, 16, -1):
            with pytest.raises(ValueError):
                core.Sink(transport, deflate_bits=bad)
        transport.close()
        peer.close()

    run(main())


# --------------------------------------------------------------------------- MessagePack

_MP_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), children, max_size=4)
    ),
    max_leaves=12,
)


def _mp_outcome(mod: ModuleType, buf: bytes) -> Any:
    try:
        return mod.msgpack_members(buf)
    except mod.BadEnvelope as exc:
        return ("bad", str(exc))


def test_msgpack_members_slices_values_and_reports_data_problems(core: ModuleType) -> None:
    import msgpack

    data = b"\x82\xa1v\xca\x3f\xc0\x00\x00\xa1b\xc4\x01\x00"  # float32, nested bin
    buf = b"\x83\xa2op\xa7publish\xa7channel\xa1c\xa4data" + data
    members, problem = core.msgpack_members(buf)
    assert members == {"op": b"\xa7publish", "channel": b"\xa1c", "data": data}
    assert problem == core.MSGPACK_BIN
    cases = {
        core.MSGPACK_KEY: {1: 2},
        core.MSGPACK_FLOAT: [float("inf")],
        core.MSGPACK_EXT: [msgpack.ExtType(1, b"")],
        0: b"whole binary is fine",
    }
    for expected, value in cases.items():
        buf = msgpack.packb({"op": "publish", "data": value}, strict_types=False)
        assert core.msgpack_members(buf)[1] == expected
    # Not a map, truncated, 0xC1, bad UTF-8, trailing bytes, non-string or repeated keys.
    for bad in (
        b"",
        b"\x90",
        b"\x81\xa2op",
        b"\x81\xa2op\xc1",
        b"\x81\xa2op\xa1\xff",
        b"\x80\x80",
        b"\x81\x01\x02",
        b"\x82\xa1a\x01\xa1a\x02",
        b"\x81\xa1a" + b"\x91" * 40 + b"\x01",
    ):
        with pytest.raises(core.BadEnvelope):
            core.msgpack_members(bad)


@given(st.dictionaries(st.text(max_size=6), _MP_VALUES, max_size=5))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_msgpack_members_agree_and_slice_every_value(command: dict[str, Any]) -> None:
    import msgpack

    buf = msgpack.packb(command, use_bin_type=True)
    outcomes = [_mp_outcome(_load(name), buf) for name in sorted(IMPLEMENTATIONS)]
    assert outcomes[0] == outcomes[1]
    members, _problem = outcomes[0]
    assert members == {k: msgpack.packb(v, use_bin_type=True) for k, v in command.items()}


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_msgpack_members_agree_on_arbitrary_bytes(buf: bytes) -> None:
    outcomes = [_mp_outcome(_load(name), buf) for name in sorted(IMPLEMENTATIONS)]
    assert outcomes[0] == outcomes[1]


# ------------------------------------------------------------------ fossil deltas

JS = os.path.join(os.path.dirname(__file__), "js")


def _dashboard(values: dict[int, float] | None = None) -> bytes:
    records = [
        {
            "id": i,
            "name": f"sensor-{i:03d}",
            "value": (values or {}).get(i, round((i * 7919 % 100000) / 100, 2)),
            "status": "ok",
            "unit": "kPa",
        }
        for i in range(40)
    ]
    return json.dumps({"dashboard": "plant-3", "records": records}, separators=(",", ":")).encode()


def _edited(rng: Any, base: bytes) -> bytes:
    # A target that shares most of its bytes with base: a few replaced, inserted, deleted
    # or moved spans (what a delta is for), sometimes bytes above 0x7f.
    out = bytearray(base)
    for _ in range(rng.randint(0, 5)):
        at = rng.randint(0, len(out))
        span = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 40)))
        action = rng.randint(0, 3)
        if action == 0:
            out[at:at] = span
        elif action == 1:
            del out[at : at + rng.randint(1, 60)]
        elif action == 2:
            out[at : at + len(span)] = span
        else:
            out += out[at : at + rng.randint(1, 200)]
    return bytes(out)


def _reference_cases() -> list[tuple[bytes, bytes]]:
    import random

    rng = random.Random(33)
    cases = [
        (b"", b""),
        (b"", b"hello"),
        (b"short", b"shorter still"),
        (b"x" * 17, b"x" * 17),
        (_dashboard(), _dashboard({3: 1.5, 17: 99.25, 31: 0.0})),
        (_dashboard(), b""),
        (b"abcdefghijklmnopqrstuvwxyz" * 40, b"abcdefghijklmnopqrstuvwxyz" * 41),
    ]
    for _ in range(60):
        base = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 3000)))
        if rng.random() < 0.5:
            base = _dashboard({i: rng.random() for i in range(rng.randint(0, 40))})
        cases.append((base, _edited(rng, base)))
    return cases


def test_delta_matches_the_npm_reference(core: ModuleType) -> None:
    """npm fossil-delta makes the same bytes as our create, and applies our deltas; our
    apply takes its deltas (it is the encoder Centrifugo's clients read)."""
    from pusherjs import node

    cases = _reference_cases()
    ours = [core.delta_create(source, target) for source, target in cases]
    request = [
        {
            "source": base64.b64encode(source).decode(),
            "target": base64.b64encode(target).decode(),
            "delta": base64.b64encode(delta).decode(),
        }
        for (source, target), delta in zip(cases, ours, strict=True)
    ]
    done = subprocess.run(
        [node(), os.path.join(JS, "fossil_delta.mjs")],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=60,
        cwd=JS,
        check=True,
    )
    results = json.loads(done.stdout)
    assert len(results) == len(cases)
    for (source, target), delta, result in zip(cases, ours, results, strict=True):
        theirs = base64.b64decode(result["created"])
        assert result["error"] is None, result["error"]
        assert base64.b64decode(result["applied"]) == target
        assert core.delta_apply(source, theirs) == target
        assert delta == theirs


def test_delta_of_the_dashboard_is_small(core: ModuleType) -> None:
    source = _dashboard()
    target = _dashboard({3: 1.5, 17: 99.25, 31: 0.75})
    delta = core.delta_create(source, target)
    assert len(delta) * 10 < len(target)
    assert core.delta_apply(source, delta) == target


def test_delta_checksum(core: ModuleType) -> None:
    assert core.delta_checksum(b"") == 0
    assert core.delta_checksum(b"\x00\x00\x00\x01") == 1
    assert core.delta_checksum(b"\x01") == 1 << 24
    assert core.delta_checksum(b"\xff" * 8) == 0xFFFFFFFE


HOSTILE_DELTAS = [
    b"",
    b"\n",
    b"3",
    b"3\n",
    b"3\n3:abc",  # no checksum
    b"3\n3:ab",  # insert past the end
    b"3\n4:abcd0;",  # more than declared
    b"3\n3:abc0;",  # bad checksum
    b"3\n2@0,",  # unterminated
    b"3\n3@99,0;",  # copy past the source
    b"3\n3@0;",  # copy not terminated by ','
    b"3\n3?abc",  # unknown operator
    b"3\n:abc",  # no count
    b"zzzzzzzzzzzz\n0;",  # integer too long
    b"0\n0;x",  # bytes after the checksum
    b"\xff\n0;",
]


@pytest.mark.parametrize("delta", HOSTILE_DELTAS)
def test_delta_apply_refuses_hostile_input(core: ModuleType, delta: bytes) -> None:
    with pytest.raises(core.DeltaError):
        core.delta_apply(b"0123456789abcdef0123", delta)
    assert issubclass(core.DeltaError, ValueError)


def test_delta_apply_refuses_another_source(core: ModuleType) -> None:
    source = _dashboard()
    delta = core.delta_create(source, _dashboard({5: 1.0}))
    with pytest.raises(core.DeltaError):
        core.delta_apply(_dashboard({9: 2.0}), delta)


def test_delta_requires_bytes(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.delta_create("a", b"b")
    with pytest.raises(TypeError):
        core.delta_apply(b"a", bytearray(b"b"))


def _delta_outcome(mod: ModuleType, source: bytes, delta: bytes) -> tuple[str, bytes]:
    try:
        return ("ok", mod.delta_apply(source, delta))
    except mod.DeltaError:
        return ("DeltaError", b"")


@st.composite
def source_and_target(draw: st.DrawFn) -> tuple[bytes, bytes]:
    source = draw(st.binary(max_size=600))
    pieces = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=30),
                st.tuples(st.integers(0, 600), st.integers(0, 200)).map(
                    lambda span: source[span[0] : span[0] + span[1]]
                ),
            ),
            max_size=8,
        )
    )
    return source, b"".join(pieces)


@given(source_and_target())
@settings(max_examples=300, deadline=None)
def test_delta_implementations_agree(case: tuple[bytes, bytes]) -> None:
    source, target = case
    cy, py = _load("cython"), _load("python")
    delta = cy.delta_create(source, target)
    assert py.delta_create(source, target) == delta
    assert cy.delta_apply(source, delta) == target
    assert py.delta_apply(source, delta) == target


@given(source_and_target(), st.binary(max_size=8), st.integers(0, 2000))
@settings(max_examples=300, deadline=None)
def test_delta_apply_agrees_on_damaged_deltas(
    case: tuple[bytes, bytes], junk: bytes, at: int
) -> None:
    source, target = case
    delta = _load("python").delta_create(source, target)
    at %= len(delta) + 1
    damaged = delta[:at] + junk + delta[at + len(junk) :]
    assert _delta_outcome(_load("cython"), source, damaged) == _delta_outcome(
        _load("python"), source, damaged
    )
