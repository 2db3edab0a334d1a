"""``pure.redisslots``: Redis Cluster's slot of a name agrees with redis-py's own
(``redis.crc.key_slot``) and with the values Redis documents; the hub's channel names
put a channel's pub/sub on the slot of its keys; the slot map answers who serves a slot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot

from shardws.pure.busframe import channel_topic, inbox_topic, user_topic
from shardws.pure.redisslots import SLOTS, SlotMap, key_slot, redis_channel, topic_of


def test_documented_slots() -> None:
    # From the Redis Cluster specification and CLUSTER KEYSLOT's documentation.
    assert key_slot(b"123456789") == 0x31C3 % SLOTS
    assert key_slot(b"somekey") == 11058
    assert key_slot(b"foo{hash_tag}") == key_slot(b"hash_tag") == 2515
    assert key_slot(b"{}foo") == redis_key_slot(b"{}foo")  # an empty tag: the whole name


@given(st.binary(max_size=40))
def test_agrees_with_redis_py(name: bytes) -> None:
    assert key_slot(name) == redis_key_slot(name)


#: What a channel's name may hold (``protocol.channel_error``; Pusher's names too): no
#: brace, so the hash tag is the whole name.
CHANNEL_CHARS = "ABCXYZabcxyz0189_-.:@#=/+!$~,;"


@given(st.text(alphabet=CHANNEL_CHARS, min_size=1, max_size=30))
def test_a_channel_and_its_keys_share_a_slot(channel: str) -> None:
    prefix = b"svc:"
    topic = channel_topic(channel)
    name = redis_channel(prefix, topic)
    assert topic_of(len(prefix), name) == topic
    keys = [prefix + b"{" + channel.encode() + b"}:" + suffix for suffix in (b"s", b"o", b"p")]
    assert {key_slot(key) for key in keys} == {key_slot(name)}


def test_every_topic_kind_round_trips() -> None:
    for topic in (user_topic("alice"), inbox_topic(65537), b"m\0"):
        assert topic_of(2, redis_channel(b"p:", topic)) == topic


def test_slot_map() -> None:
    answer = [
        [5461, 10922, [b"127.0.0.1", 7001, b"id2"], [b"127.0.0.1", 7004, b"id5"]],
        [0, 5460, [b"127.0.0.1", 7000, b"id1"]],
        [10923, 16383, [b"::1", 7002, b"id3"]],
        [16000, 16000, [b"?", 7009, b"id9"]],  # an address the answerer does not know
    ]
    slots = SlotMap.from_cluster_slots(answer)
    assert slots.owner(0) == slots.owner(5460) == "127.0.0.1:7000"
    assert slots.owner(5461) == "127.0.0.1:7001"
    assert slots.owner(16383) == "[::1]:7002"
    assert slots.masters == {"127.0.0.1:7000", "127.0.0.1:7001", "[::1]:7002"}
    assert slots.covered == SLOTS
    assert slots == SlotMap.from_cluster_slots(list(reversed(answer)))
    partial = SlotMap([(0, 99, "a:1"), (200, 299, "b:1")])
    assert [partial.owner(s) for s in (0, 100, 250, 300)] == ["a:1", None, "b:1", None]
    assert partial.covered == 200 and SlotMap().owner(5) is None
    assert partial.owner_of(b"{foo}") == partial.owner(key_slot(b"foo"))
