"""``pure.msgpackwire`` and ``pure.wiredata`` without sockets: commands parsed as the JSON
parser would, pushes with the JSON protocol's members, data converted by the documented
rules (docs/protocol.md, "Data across formats")."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardws.core import BadEnvelope
from shardws.pure import msgpackwire, protocol, wiredata
from shardws.pure.history import Position
from shardws.pure.protocol import encode_publication
from shardws.pure.publication import Kind, Publication
from shardws.pure.wiredata import carried

_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def test_chosen_reads_every_offered_name() -> None:
    assert msgpackwire.chosen(["chat, shardws.msgpack"])
    assert msgpackwire.chosen(["a", " shardws.msgpack "])
    assert not msgpackwire.chosen([]) and not msgpackwire.chosen(["shardws.msgpackx"])


def test_parse_command_gives_the_json_parsers_envelope() -> None:
    fields = {"recover": {"epoch": "e", "offset": 3}, "idem": "k"}
    env = msgpackwire.parse_command(
        msgpack.packb({"id": 9, "op": "subscribe", "channel": "chat:a", **fields})
    )
    assert (env.op, env.id, env.channel, env.data) == ("subscribe", 9, "chat:a", None)
    assert {k: json.loads(v) for k, v in env.fields.items()} == fields
    raw = b"\x92\xca\x3f\xc0\x00\x00\x01"  # kept as sent: a float32
    env = msgpackwire.parse_command(b"\x82\xa2op\xa7publish\xa4data" + raw)
    assert env.data == wiredata.MSGPACK + raw
    with pytest.raises(BadEnvelope, match="binary is accepted only as the whole data"):
        msgpackwire.parse_command(b"\x83\xa2id\x05\xa2op\xa7publish\xa4data\x91\xc4\x01\x00")


@pytest.mark.parametrize(
    ("command", "message", "command_id"),
    [
        ({"op": 1}, '"op" must be a string', None),
        ({"id": 4}, 'missing "op"', 4),
        ({"id": -1, "op": "ping"}, '"id" must be an integer', None),
        ({"id": 2**60, "op": "ping"}, '"id" must be an integer', None),
        ({"id": 1, "op": "x", "channel": 5}, '"channel" must be a string', 1),
        ({"id": 1, "op": "x", "token": b"\x00"}, "token: not a value", 1),
        ({"id": 3, "op": "publish", "data": {"x": float("nan")}}, "NaN", 3),
    ],
)
def test_bad_commands_say_what_is_wrong(
    command: dict[str, Any], message: str, command_id: int | None
) -> None:
    with pytest.raises(BadEnvelope, match=message) as caught:
        msgpackwire.parse_command(msgpack.packb(command, use_bin_type=True))
    assert caught.value.id == command_id


@pytest.mark.parametrize("position", [None, Position("ep", 42)])
@pytest.mark.parametrize("data", [b'{"a":[1,2.5,"x"]}', wiredata.carried(b"\x81\xa1a\x01")])
def test_a_push_has_the_json_pushs_members_in_both_formats(
    data: bytes, position: Position | None
) -> None:
    publication = Publication(data, position=position)
    as_json = json.loads(protocol.encode_publication("c", publication))
    as_msgpack = msgpack.unpackb(msgpackwire.encode_publication("c", publication))
    assert list(as_msgpack.items()) == list(as_json.items())
    join = Publication(b"", Kind.JOIN, origin="c1", user="u")
    assert msgpack.unpackb(msgpackwire.encode_publication("c", join)) == json.loads(
        protocol.encode_publication("c", join)
    )


def test_whole_binary_is_b64data_in_json_and_bytes_again_in_msgpack() -> None:
    data = wiredata.carried(msgpack.packb(b"\x00\xff"))
    push = protocol.encode_publication("c", Publication(data, position=Position("e", 1)))
    assert json.loads(push)["b64data"] == "AP8="
    assert msgpack.unpackb(msgpackwire.from_json(push))["data"] == b"\x00\xff"
    history = protocol.encode_history(1, "e", 1, [push])
    assert msgpack.unpackb(msgpackwire.from_json(history))["publications"][0]["data"] == b"\x00\xff"
    user = protocol.encode_user_pub("u", data)
    assert json.loads(user) == {"type": "pub", "user": "u", "b64data": "AP8="}


def test_json_integers_past_64_bits_become_floats_for_msgpack() -> None:
    assert msgpack.unpackb(wiredata.msgpack_of(b"[18446744073709551616,-1]")) == [2.0**64, -1]


def test_ok_replies_convert_with_and_without_the_fast_path() -> None:
    for reply in (protocol.encode_ok(None), protocol.encode_ok(7), protocol.encode_ok(7, a=1)):
        assert msgpack.unpackb(msgpackwire.from_json(reply)) == json.loads(reply)


@given(_JSON_VALUES)
@settings(max_examples=200)
def test_data_converts_both_ways_to_equal_values(value: Any) -> None:
    from_msgpack = wiredata.carried(msgpack.packb(value))
    assert json.loads(wiredata.json_member(from_msgpack)[len(b'"data":') :]) == value
    from_json = json.dumps(value).encode()
    assert msgpack.unpackb(wiredata.msgpack_of(from_json)) == value
    for data in (from_msgpack, from_json):
        assert wiredata.from_text(wiredata.as_text(data)) == data


def test_a_history_reply_embeds_the_pushes_as_they_are() -> None:
    """``encode_history`` is ``from_json`` of the JSON reply, but with each push's
    MessagePack bytes embedded untouched (a float32 stays one)."""
    float32 = carried(b"\xca\x3f\xc0\x00\x00")
    publications = [
        Publication(float32, position=Position("e1", n))
        for n in range(1, 20)  # > 15: array16
    ]
    pushes = [msgpackwire.encode_publication("c", p) for p in publications]
    for command_id in (None, 7):
        raw = msgpackwire.encode_history(command_id, "e1", 19, pushes)
        assert raw.count(b"\xa4data\xca\x3f\xc0\x00\x00") == 19
        json_pushes = [encode_publication("c", p) for p in publications]
        as_json = protocol.encode_history(command_id, "e1", 19, json_pushes)
        assert msgpack.unpackb(raw) == msgpack.unpackb(msgpackwire.from_json(as_json))
    assert msgpack.unpackb(msgpackwire.encode_history(1, "e", 0, []))["publications"] == []
