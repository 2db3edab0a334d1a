"""protocol.py: encoders produce exact bytes; channel validation; close-code classes."""

from __future__ import annotations

import json

import pytest

from shardws.pure import protocol
from shardws.pure.history import Position
from shardws.pure.protocol import CloseCode, ErrorCode


def test_encode_ok_and_error() -> None:
    assert protocol.encode_ok(1) == b'{"id":1,"ok":true}'
    assert protocol.encode_ok(None) == b'{"ok":true}'
    assert protocol.encode_ok(2, epoch="x") == b'{"id":2,"ok":true,"epoch":"x"}'
    assert json.loads(protocol.encode_error(3, ErrorCode.UNKNOWN_OP, "unknown op 'x'")) == {
        "id": 3,
        "error": {"code": 104, "message": "unknown op 'x'"},
    }
    assert json.loads(protocol.encode_error(None, ErrorCode.BAD_REQUEST, "bad")) == {
        "error": {"code": 107, "message": "bad"}
    }


def test_encode_connected() -> None:
    assert json.loads(protocol.encode_connected("abc.1", 3)) == {
        "type": "connected",
        "client": "abc.1",
        "worker": 3,
        "protocol": 1,
    }


def test_encode_pub_keeps_data_bytes() -> None:
    data = b'{ "a" : [1, 2.50] }'
    push = protocol.encode_pub("chat:room-1", data)
    assert push == b'{"type":"pub","channel":"chat:room-1","data":{ "a" : [1, 2.50] }}'
    assert json.loads(push)["data"] == {"a": [1, 2.5]}


@pytest.mark.parametrize("name", ["news", "chat:room-1", "chat:#alice", "a.b/c=d+e!$~@", "x" * 255])
def test_valid_channels(name: str) -> None:
    assert protocol.channel_error(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (None, "required"),
        ("", "empty"),
        ("x" * 256, "longer"),
        ("a b", "may contain"),
        ('a"b', "may contain"),
        ("a\\b", "may contain"),
        ("a\x00b", "may contain"),
        ("é", "may contain"),
    ],
)
def test_invalid_channels(name: str | None, why: str) -> None:
    problem = protocol.channel_error(name)
    assert problem is not None and why in problem


def test_user_pub_push() -> None:
    push = protocol.encode_user_pub('al"ice é', b'{"a" : 1}')
    assert push == '{"type":"pub","user":"al\\"ice é","data":{"a" : 1}}'.encode()
    assert json.loads(push) == {"type": "pub", "user": 'al"ice é', "data": {"a": 1}}


def test_close_code_classes() -> None:
    assert not protocol.reconnect_allowed(CloseCode.DISCONNECTED)
    assert not protocol.reconnect_allowed(CloseCode.UNAUTHORIZED)
    assert not protocol.reconnect_allowed(CloseCode.BAD_REQUEST)
    assert not protocol.reconnect_allowed(CloseCode.MESSAGE_TOO_BIG)
    assert protocol.reconnect_allowed(CloseCode.GOING_AWAY)
    assert protocol.reconnect_allowed(CloseCode.SLOW_CONSUMER)
    assert protocol.reconnect_allowed(CloseCode.IDLE_TIMEOUT)
    assert protocol.reconnect_allowed(CloseCode.NOT_LIVE)
    for code in CloseCode:
        assert code < 1012 or 4000 <= code <= 4999


def test_history_members_are_parsed_strictly() -> None:
    assert protocol.parse_recover(None) is None
    assert protocol.parse_recover(b'{"epoch":"e","offset":3}') == ("e", 3)
    for bad in (b"[]", b'{"epoch":1,"offset":3}', b'{"epoch":"e","offset":-1}', b"{"):
        with pytest.raises(ValueError, match="recover must be"):
            protocol.parse_recover(bad)
    assert protocol.parse_idem(b'"k1"') == "k1"
    for bad in (b"5", b'""', b'"' + b"x" * 65 + b'"'):
        with pytest.raises(ValueError, match="idem"):
            protocol.parse_idem(bad)
    assert protocol.parse_history({}) == {"since": 0, "limit": 100, "reverse": False}
    assert protocol.parse_history({"limit": b"5", "reverse": b"true"})["limit"] == 5
    for fields in ({"limit": b"0"}, {"since": b"-1"}, {"reverse": b"1"}, {"limit": b"true"}):
        with pytest.raises(ValueError):
            protocol.parse_history(fields)


def test_positioned_pushes_read_back() -> None:
    push = protocol.encode_pub_at("chat:a", 17, "0123456789abcdef", b'{"x":1}')
    assert json.loads(push)["offset"] == 17
    assert protocol.pub_position(push, "chat:a") == Position(epoch="0123456789abcdef", offset=17)
    assert protocol.pub_position(protocol.encode_pub("chat:a", b"1"), "chat:a") is None
