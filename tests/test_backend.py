"""shardws.pure.backend: parsing what backends send, over HTTP and the ingress (no I/O)."""

from __future__ import annotations

import json

import pytest

from shardws.config import default_config
from shardws.pure import control
from shardws.pure.backend import (
    BadRequest,
    Publication,
    check_json,
    parse_channels_query,
    parse_disconnect,
    parse_ingress,
    parse_publish,
)

CONFIG = default_config()


def test_publish_targets() -> None:
    assert parse_publish(b'{"channel":"a","data":{"x": 1}}', CONFIG) == Publication(
        ("a",), None, b'{"x":1}'
    )
    assert parse_publish(b'{"channels":["a","b"],"data":[]}', CONFIG).channels == ("a", "b")
    user = parse_publish(b'{"user":"alice","data":"hi"}', CONFIG)
    assert (user.user, user.channels) == ("alice", ())
    assert user.bus_messages() == [
        (b"ualice\0", b'p{"type":"pub","user":"alice","data":"hi"}'),
    ]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{nope", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"channel":"a","data":NaN}', "NaN is not JSON"),
        (b"[1]", "object"),
        (b'{"channel":"a"}', '"data"'),
        (b'{"channel":"a","user":"u","data":1}', "exactly one"),
        (b'{"channels":[],"data":1}', "1..1000"),
        (b'{"channels":"a","data":1}', "1..1000"),
        (b'{"channel":"bad name","data":1}', "may contain"),
        (b'{"channel":7,"data":1}', "channel is required"),
        (b'{"channel":"ns:x","data":1}', "not configured"),
        (b'{"user":"","data":1}', "non-empty"),
        (b'{"user":"a\\u0000b","data":1}', "control characters"),
        (b'{"user":"\\ud800","data":1}', "valid Unicode"),
    ],
)
def test_publish_refusals_say_why(body: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why.replace("(", r"\(")):
        parse_publish(body, CONFIG)


@pytest.mark.parametrize(
    "raw", [b"1", b' {"a": [1, 2.5e3, "\xc3\xa9"]} ', b'"s"', b"null", b"[]", b"\t-0.5\n"]
)
def test_check_json_accepts_one_value_byte_for_byte(raw: bytes) -> None:
    assert check_json(raw) == raw.strip()
    json.loads(raw)  # the oracle agrees


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"1 2",
        b'1,"x":2',  # would smuggle a member into the wrapping envelope
        b'1,"id":3',
        b'1,"channel":"c"',
        b'1},{"a":1',
        b"NaN",
        b"\xff",
        b"[" * 40 + b"]" * 40,
    ],
)
def test_check_json_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        check_json(raw)


def test_ingress_forms() -> None:
    two = parse_ingress([b"news", b' {"a":1}'], CONFIG)
    assert two == Publication(("news",), None, b'{"a":1}')
    one = parse_ingress([b'{"channels":["a","b"],"data":2}'], CONFIG)
    assert one.channels == ("a", "b")
    for frames, why in (
        ([], "got 0"),
        ([b"a", b"1", b"2"], "got 3"),
        ([b"\xffx", b"1"], "ASCII"),
        ([b"ns:x", b"1"], "not configured"),
        ([b"a", b"{"], "not one JSON value"),
    ):
        with pytest.raises(BadRequest, match=why):
            parse_ingress(frames, CONFIG)


def test_disconnect_defaults_and_rules() -> None:
    assert parse_disconnect(b'{"user":"alice"}') == (
        "alice",
        control.Disconnect(4009, "disconnected by the server"),
    )
    assert parse_disconnect(b'{"user":"a","code":4500,"reason":"bye"}')[1] == (4500, "bye")
    for body, why in (
        (b"{}", '"user"'),
        (b'{"user":"a","code":1000}', "4000 to 4999"),
        (b'{"user":"a","code":5000}', "4000 to 4999"),
        (b'{"user":"a","code":"4000"}', "4000 to 4999"),
        (b'{"user":"a","code":true}', "4000 to 4999"),
        (b'{"user":"a","reason":7}', "string"),
        (b'{"user":"a","reason":"' + b"x" * 121 + b'"}', "120 bytes"),
    ):
        with pytest.raises(BadRequest, match=why):
            parse_disconnect(body)


def test_channels_query() -> None:
    assert parse_channels_query({}) == ("", control.MAX_CHANNELS)
    assert parse_channels_query({"prefix": "chat:", "limit": "5"}) == ("chat:", 5)
    for query in ({"limit": "0"}, {"limit": "x"}, {"limit": "10001"}, {"limit": "²"}):
        with pytest.raises(BadRequest, match="limit"):
            parse_channels_query(query)
    with pytest.raises(BadRequest, match="prefix"):
        parse_channels_query({"prefix": "p" * 300})
