"""shardws.pure.pusher.wire: client messages decoded, server messages encoded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardws.pure.pusher import wire
from shardws.pure.pusher.wire import (
    BadMessage,
    ClientEventRequest,
    OtherEvent,
    Ping,
    Pong,
    SigninRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    decode,
)


def _msg(**members: object) -> str:
    return json.dumps(members)


def test_decodes_what_pusher_js_sends() -> None:
    assert decode(_msg(event="pusher:ping", data={})) == Ping()
    assert decode(_msg(event="pusher:pong", data={})) == Pong()
    assert decode(_msg(event="pusher:subscribe", data={"channel": "c"})) == SubscribeRequest(
        "c", None, None
    )
    presence = _msg(
        event="pusher:subscribe",
        data={"channel": "presence-r", "auth": "k:sig", "channel_data": '{"user_id":"1"}'},
    )
    assert decode(presence) == SubscribeRequest("presence-r", "k:sig", '{"user_id":"1"}')
    # Some older clients send data as a JSON string.
    legacy = _msg(event="pusher:subscribe", data=json.dumps({"channel": "c", "auth": "a"}))
    assert decode(legacy) == SubscribeRequest("c", "a", None)
    assert decode(_msg(event="pusher:unsubscribe", data={"channel": "c"})) == UnsubscribeRequest(
        "c"
    )
    event = decode(_msg(event="client-typing", channel="private-c", data={"a": [1, "é"]}))
    assert event == ClientEventRequest("client-typing", "private-c", '{"a":[1,"é"]}'.encode())
    assert isinstance(decode(_msg(event="pusher:signin", data={})), BadMessage)
    signin = _msg(event="pusher:signin", data={"auth": "k:s", "user_data": '{"id":"1"}'})
    assert decode(signin) == SigninRequest("k:s", '{"id":"1"}')
    assert decode(_msg(event="anything", data={})) == OtherEvent("anything")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1]",
        '"pusher:ping"',
        _msg(data={}),
        _msg(event=3),
        _msg(event="pusher:subscribe"),
        _msg(event="pusher:subscribe", data={"channel": 3}),
        _msg(event="pusher:subscribe", data="not json"),
        _msg(event="pusher:subscribe", data={"channel": "c", "auth": 1}),
        _msg(event="pusher:subscribe", data={"channel": "c", "channel_data": {"user_id": 1}}),
        _msg(event="pusher:unsubscribe", data={}),
        _msg(event="client-x", data={}),
        _msg(event="client-x", channel="private-c"),
        '{"event":"client-x","channel":"private-c","data":NaN}',
        "[" * 100_000,
    ],
)
def test_malformed_messages(text: str) -> None:
    result = decode(text)
    assert isinstance(result, BadMessage) and result.reason.startswith("Invalid message format")


@given(st.text(max_size=200))
def test_decode_never_raises(text: str) -> None:
    decode(text)


@pytest.mark.parametrize("event", ["pusher:subscribe", "pusher:unsubscribe", "pusher:signin"])
def test_data_as_a_deeply_nested_json_string_is_bad_input_not_a_crash(event: str) -> None:
    # Older clients send data as a JSON-encoded string (docs/pusher.md, "Protocol
    # versions"): its nesting is as hostile as the outer message's.
    message = json.dumps({"event": event, "data": "[" * 200_000})
    assert isinstance(decode(message), BadMessage)


def test_connection_established_data_is_a_json_string() -> None:
    message = json.loads(wire.encode_connection_established("123.456", 120))
    assert message["event"] == "pusher:connection_established"
    assert json.loads(message["data"]) == {"socket_id": "123.456", "activity_timeout": 120}
    # Protocols below 7 have no activity_timeout (versions.handshake_has_activity_timeout).
    older = json.loads(wire.encode_connection_established("123.456", None))
    assert json.loads(older["data"]) == {"socket_id": "123.456"}


def test_control_messages() -> None:
    assert json.loads(wire.encode_pong()) == {"event": "pusher:pong", "data": {}}
    assert json.loads(wire.encode_ping()) == {"event": "pusher:ping", "data": {}}
    assert json.loads(wire.encode_error(4001, "Application does not exist")) == {
        "event": "pusher:error",
        "data": {"code": 4001, "message": "Application does not exist"},
    }
    assert json.loads(wire.encode_error(None, "bad"))["data"] == {"code": None, "message": "bad"}
    assert json.loads(wire.encode_cache_miss("cache-x")) == {
        "event": "pusher:cache_miss",
        "channel": "cache-x",
    }
    error = json.loads(wire.encode_subscription_error("private-x", "AuthError", "no", 401))
    assert error == {
        "event": "pusher:subscription_error",
        "channel": "private-x",
        "data": {"type": "AuthError", "error": "no", "status": 401},
    }


def test_subscription_succeeded() -> None:
    plain = json.loads(wire.encode_subscription_succeeded("private-x"))
    assert plain == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "private-x",
        "data": "{}",
    }
    members = [("1", b'{"name":"Ann"}'), ("2", None), ("1", b'{"name":"Ann"}')]
    presence = json.loads(wire.encode_presence_succeeded("presence-r", members))
    assert presence["event"] == "pusher_internal:subscription_succeeded"
    assert json.loads(presence["data"]) == {
        "presence": {"ids": ["1", "2"], "hash": {"1": {"name": "Ann"}, "2": None}, "count": 2}
    }


def test_member_events() -> None:
    added = json.loads(wire.encode_member_added("presence-r", "7", b'{"n":1}'))
    assert added["event"] == "pusher_internal:member_added" and added["channel"] == "presence-r"
    assert json.loads(added["data"]) == {"user_id": "7", "user_info": {"n": 1}}
    removed = json.loads(wire.encode_member_removed("presence-r", "7"))
    assert removed["event"] == "pusher_internal:member_removed"
    assert json.loads(removed["data"]) == {"user_id": "7"}


def test_event_data_is_embedded_verbatim() -> None:
    """An HTTP API event's data stays the exact string the SDK sent."""
    sent = '{"b": 1,  "a":"é"}'  # odd spacing and key order survive
    encoded = wire.encode_event("my-event", "chat", wire.data_of_string(sent))
    message = json.loads(encoded)
    assert message == {"event": "my-event", "channel": "chat", "data": sent}
    with_user = json.loads(wire.encode_event("client-x", "presence-r", b'{"k":1}', "u1"))
    assert with_user == {
        "event": "client-x",
        "channel": "presence-r",
        "data": {"k": 1},
        "user_id": "u1",
    }
    # Event names are escaped like any JSON string.
    assert json.loads(wire.encode_event('a"b', "c", b"1"))["event"] == 'a"b'
