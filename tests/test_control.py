"""shardws.pure.control: user-topic and inbox messages, request/reply, channel answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from toolkit import run

from shardws.bus.requests import Requests
from shardws.pure import control
from shardws.pure.history import Entry, Position, RingState, Unrecovered
from shardws.pure.publication import Publication


def test_user_messages_round_trip() -> None:
    assert control.decode_user_message(control.encode_user_push(b'{"type":"pub"}')) == (
        b'{"type":"pub"}'
    )
    message = control.decode_user_message(control.encode_disconnect(4009, "bye é"))
    assert message == control.Disconnect(4009, "bye é")
    for bad in (b"", b"x", b"d\x0f", b"d\x0f\xa1\xff"):
        with pytest.raises(ValueError):
            control.decode_user_message(bad)


def test_inbox_messages() -> None:
    request = control.decode_inbox(control.encode_request("channels", 3, 2, {"prefix": "a"}))
    assert request == {"op": "channels", "id": 3, "reply_to": 2, "prefix": "a"}
    reply = control.decode_inbox(control.encode_reply(3, {"x": 1}))
    assert reply == {"id": 3, "reply": {"x": 1}}
    for bad in (b"", b"[]", b'{"id":"1"}', b'{"id":1}', b'{"id":1,"op":"x"}', b"\xff"):
        with pytest.raises(ValueError):
            control.decode_inbox(bad)


def test_requests_collect_answers_until_the_deadline() -> None:
    async def scenario() -> None:
        sent: list[tuple[int, bytes]] = []
        requests = Requests(9, lambda member, payload: sent.append((member, payload)))
        task = asyncio.create_task(requests.ask({0, 1, 2}, "channels", {}, 0.3))
        await asyncio.sleep(0)
        assert [member for member, _ in sent] == [0, 1, 2]
        request_id = control.decode_inbox(sent[0][1])["id"]
        requests.on_reply(0, {"id": request_id, "reply": {"n": 0}})
        requests.on_reply(5, {"id": request_id, "reply": {"n": 5}})  # not asked: ignored
        requests.on_reply(1, {"id": request_id + 1, "reply": {}})  # another request
        answers, missing = await task
        assert answers == {0: {"n": 0}} and missing == {1, 2}
        requests.on_reply(1, {"id": request_id, "reply": {}})  # late: ignored

        task = asyncio.create_task(requests.ask({0}, "channels", {}, 5))
        await asyncio.sleep(0)
        request_id = control.decode_inbox(sent[-1][1])["id"]
        requests.on_reply(0, {"id": request_id, "reply": {}})
        assert await asyncio.wait_for(task, 1) == ({0: {}}, set())  # no waiting for the timeout
        assert await requests.ask(set(), "channels", {}, 5) == ({}, set())

    run(scenario())


def test_channels_answer_and_merge_stay_exact_when_truncated() -> None:
    assert control.channels_answer({"b": 1, "a": 2}, 10) == {
        "channels": {"a": 2, "b": 1},
        "truncated": False,
    }
    first = control.channels_answer({"a": 1, "b": 1, "c": 1, "d": 1}, 2)
    assert first == {"channels": {"a": 1, "b": 1}, "truncated": True}
    second = control.channels_answer({"a": 5, "c": 2}, 2)
    # "c" is past the first worker's cut: it might have had "c" too, so it is dropped.
    assert control.merge_channels([first, second], 10) == ({"a": 6, "b": 1}, True)
    assert control.merge_channels([second], 1) == ({"a": 5}, True)
    assert control.merge_channels([second, {"channels": {"c": 1}}], 5) == (
        {"a": 5, "c": 3},
        False,
    )
    assert control.channels_arguments({"prefix": "x", "limit": 10**9}) == (
        "x",
        control.MAX_CHANNELS,
    )
    with pytest.raises(ValueError):
        control.channels_arguments({"limit": 0})


# --------------------------------------------------------------------------- owner operations


def at(epoch: str, offset: int, data: bytes) -> Publication:
    """A stored publication at (epoch, offset)."""
    return Publication(data, position=Position(epoch, offset))


RING = RingState(
    4, 2.5, "0123456789abcdef", 7, (Entry(6, 10.0, b'{"n":6}', None), Entry(7, 11.5, b"7", "k"))
)

#: One request of each owner operation and a reply to it (non-ASCII text included).
OWNER_EXCHANGES: list[tuple[control.OwnerRequest[Any], control.OwnerReply]] = [
    (
        control.HistoryPublishRequest("h:a", '{"x":"é"}'.encode(), "key-1"),
        control.HistoryPublishReply(Position("e", 7)),
    ),
    (control.HistoryPublishRequest("h:a", b"1"), control.HistoryPublishReply(Position("e", 1))),
    (control.HistoryPositionRequest("h:a"), control.HistoryPositionReply(Position("e", 3))),
    (
        control.HistoryPositionRequest("h:a", Position("e", 1)),
        control.HistoryPositionReply(
            Position("e", 3),
            True,
            (Publication('{"n":"é"}'.encode(), position=Position("e", 2)), at("e", 3, b"3")),
        ),
    ),
    (
        control.HistoryPositionRequest("h:a", Position("old", 1)),
        control.HistoryPositionReply(Position("e", 3), False),
    ),
    (
        control.HistoryPositionRequest("h:a", Position("old", 1)),
        control.HistoryPositionReply(Position("e", 3), False, reason=Unrecovered.EPOCH_CHANGED),
    ),
    (
        control.HistoryPositionRequest("h:a", Position("e", 1)),
        control.HistoryPositionReply(Position("e", 3), False, reason=Unrecovered.LEFT_RING),
    ),
    (
        control.HistoryPositionsRequest(("h:a", "h:b")),
        control.HistoryPositionsReply({"h:a": Position("e", 3), "h:b": Position("f", 0)}),
    ),
    (control.HistoryPositionsRequest(()), control.HistoryPositionsReply({})),
    (
        control.HistoryPageRequest("h:a", since=5, limit=10, reverse=True),
        control.HistoryPageReply(Position("e", 9), (at("e", 4, b"4"), at("e", 3, b"3"))),
    ),
    (control.HistoryHandoverRequest({"h:a": RING}), control.HistoryHandoverReply()),
    (
        control.PresenceListRequest("h:a"),
        control.PresenceListReply(
            (control.PresenceMember("ann", "c1", '{"é":1}'), control.PresenceMember("", "c2", None))
        ),
    ),
    (control.PresenceStatsRequest("h:a"), control.PresenceStatsReply(3, ("ann", "bob"))),
    (
        control.PusherJoinRequest("|1|presence-a", "5.1", "ann", '{"n":"é"}'.encode(), 100),
        control.PusherJoinReply((("ann", '{"n":"é"}'.encode()), ("bob", None))),
    ),
    (
        control.PusherJoinRequest("|1|presence-a", "5.2", "cy", None, 2),
        control.PusherJoinReply((), full=2),
    ),
    (
        control.PusherJoinRequest("|1|presence-a", "5.3", "cy", None, 2, restore=True),
        control.PusherJoinReply((("cy", None),)),
    ),
    (control.PusherLeaveRequest("|1|presence-a", "5.1"), control.PusherLeaveReply()),
    (control.PusherLeaveRequest("|1|presence-a", "5.1", "7"), control.PusherLeaveReply()),
    (
        control.PusherUsersRequest("|app|presence-a"),
        control.PusherUsersReply(("ann", "bob"), 3),
    ),
    (
        control.PusherCachePutRequest("|1|cache-a", '{"event":"é"}'.encode(), 1800.0),
        control.PusherCachePutReply(),
    ),
    (
        control.PusherCacheGetRequest("|1|cache-a"),
        control.PusherCacheGetReply('{"event":"é"}'.encode()),
    ),
    (control.PusherCacheGetRequest("|1|cache-a"), control.PusherCacheGetReply(None)),
    (
        control.PusherOccupancyRequest("|1|room", 65537, True, restore=True),
        control.PusherOccupancyReply(),
    ),
    (control.PusherOccupancyRequest("|1|room", 3, False), control.PusherOccupancyReply()),
    (control.PusherOccupiedRequest(65536), control.PusherOccupiedReply(("|1|a", "|2|b"))),
]


@pytest.mark.parametrize(
    ("request_", "reply"), OWNER_EXCHANGES, ids=lambda value: type(value).__name__
)
def test_owner_operations_round_trip(
    request_: control.OwnerRequest[Any], reply: control.OwnerReply
) -> None:
    payload = control.encode_owner_request(request_, 5, 2)
    message = control.decode_inbox(payload)
    assert (message["op"], message["id"], message["reply_to"]) == (request_.op, 5, 2)
    assert control.decode_owner_request(message["op"], message) == request_
    assert isinstance(reply, request_.reply_type)
    answer = control.decode_inbox(control.encode_reply(5, reply.fields()))
    assert request_.decode_reply(answer["reply"]) == reply
    refusal = control.OwnerRefusal("not the owner of this channel")
    answer = control.decode_inbox(control.encode_reply(5, refusal.fields()))
    assert request_.decode_reply(answer["reply"]) == refusal


def test_owner_op_names_are_the_documented_ones() -> None:
    assert set(control.OWNER_REQUESTS) == {
        "history.publish",
        "history.position",
        "history.positions",
        "history.page",
        "history.handover",
        "presence.list",
        "presence.stats",
        "pusher.join",
        "pusher.leave",
        "pusher.users",
        "pusher.cache_put",
        "pusher.cache_get",
        "pusher.occupancy",
        "pusher.occupied",
    }
    assert {type(request) for request, _ in OWNER_EXCHANGES} == set(control.OWNER_REQUESTS.values())


ENTRY = [6, 10.0, "{}", None]
RING_FIELDS = {"size": 4, "ttl": 0, "epoch": "e", "offset": 7, "entries": [ENTRY]}

BAD_OWNER_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("nope", {"channel": "h:a"}),
    ("hpub", {"channel": "h:a", "data": "1"}),  # the old name
    ("history.publish", {"data": "1"}),
    ("history.publish", {"channel": "bad channel!", "data": "1"}),
    ("history.publish", {"channel": 5, "data": "1"}),
    ("history.publish", {"channel": "h:a", "data": 1}),
    ("history.publish", {"channel": "h:a", "data": "1", "idem": 2}),
    ("history.position", {"channel": "h:a", "since": ["e"]}),
    ("history.position", {"channel": "h:a", "since": [1, "e"]}),
    ("history.position", {"channel": "h:a", "since": ["e", True]}),
    ("history.position", {"channel": "h:a", "since": {"epoch": "e", "offset": 1}}),
    ("history.positions", {"channels": "h:a"}),
    ("history.positions", {"channels": ["h:a", 3]}),
    ("history.page", {"channel": "h:a", "since": "0"}),
    ("history.page", {"channel": "h:a", "limit": 1.5}),
    ("history.page", {"channel": "h:a", "reverse": 1}),
    ("history.handover", {}),
    ("history.handover", {"rings": []}),
    ("history.handover", {"rings": {"h:a": []}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "size": 0}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "ttl": "0"}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "epoch": None}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "offset": "7"}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "entries": {}}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "entries": [ENTRY[:3]]}}}),
    ("history.handover", {"rings": {"h:a": {**RING_FIELDS, "entries": [[6, 1.0, b"", None]]}}}),
    ("presence.list", {}),
    ("presence.stats", {"channel": "bad channel!"}),
    ("pusher.cache_put", {"channel": "|1|cache-a", "event": "{}", "ttl": 0}),
    ("pusher.cache_put", {"channel": "|1|cache-a", "event": "{}", "ttl": True}),
    ("pusher.cache_put", {"channel": "|1|cache-a", "event": None, "ttl": 1}),
    ("pusher.cache_get", {"channel": "cache-a"}),
    (
        "pusher.join",
        {"channel": "|1|p", "socket_id": "1.2", "user_id": "a", "max_members": 1, "restore": 1},
    ),
    # A Pusher op takes internal names only: never a native channel.
    ("pusher.users", {"channel": "presence-a"}),
    ("pusher.users", {"channel": "|1presence-a"}),
    ("pusher.users", {"channel": "|1|bad channel"}),
    ("pusher.leave", {"channel": "|1|presence-a", "socket_id": "abc"}),
    ("pusher.join", {"channel": "|1|presence-a", "socket_id": "1.2", "user_id": "a"}),
    (
        "pusher.join",
        {"channel": "|1|p", "socket_id": "1.2", "user_id": "", "user_info": None, "max_members": 1},
    ),
    (
        "pusher.join",
        {"channel": "|1|p", "socket_id": "1.2", "user_id": "a", "user_info": {}, "max_members": 1},
    ),
    (
        "pusher.join",
        {
            "channel": "|1|p",
            "socket_id": "1.2",
            "user_id": "a",
            "user_info": None,
            "max_members": 0,
        },
    ),
]


@pytest.mark.parametrize(("op", "fields"), BAD_OWNER_REQUESTS)
def test_bad_owner_requests_are_value_errors(op: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        control.decode_owner_request(op, fields)


def test_owner_request_errors_name_what_is_wrong() -> None:
    def error(op: str, fields: dict[str, Any]) -> str:
        with pytest.raises(ValueError) as caught:
            control.decode_owner_request(op, fields)
        return str(caught.value)

    assert error("nope", {}) == "unknown op 'nope'"
    assert error("history.publish", {"channel": "bad channel!", "data": "1"}) == "bad channel"
    assert error("history.publish", {"channel": "h:a"}) == "bad publication"
    assert error("history.page", {"channel": "h:a", "limit": "9"}) == (
        "since and limit must be integers"
    )
    assert error("history.positions", {"channels": {}}) == "channels must be a list"
    assert "size" in error("history.handover", {"rings": {"h:a": {**RING_FIELDS, "size": -1}}})


BAD_OWNER_REPLIES: list[tuple[control.OwnerRequest[Any], dict[str, Any]]] = [
    (control.HistoryPublishRequest("h:a", b"1"), {}),
    (control.HistoryPublishRequest("h:a", b"1"), {"epoch": "e", "offset": "1"}),
    (control.HistoryPublishRequest("h:a", b"1"), {"epoch": 1, "offset": 1}),
    (control.HistoryPublishRequest("h:a", b"1"), {"error": None}),
    (control.HistoryPositionRequest("h:a"), {"epoch": "e", "offset": 1, "recovered": 1}),
    (
        control.HistoryPositionRequest("h:a"),
        {"epoch": "e", "offset": 1, "recovered": True, "publications": [[1, b"x"]]},
    ),
    (
        control.HistoryPositionRequest("h:a"),
        {"epoch": "e", "offset": 1, "recovered": True},  # no publications
    ),
    (
        control.HistoryPositionRequest("h:a"),
        {"epoch": "e", "offset": 1, "recovered": False, "publications": [], "reason": "lost"},
    ),
    (control.HistoryPositionsRequest(()), {"positions": []}),
    (control.HistoryPositionsRequest(()), {"positions": {"h:a": ["e"]}}),
    (control.HistoryPageRequest("h:a"), {"epoch": "e", "offset": 1, "publications": "x"}),
    (control.HistoryHandoverRequest({}), {"ok": 1}),
    (control.PresenceListRequest("h:a"), {"members": [["ann", "c1"]]}),
    (control.PresenceListRequest("h:a"), {"members": [["ann", "c1", 5]]}),
    (control.PresenceListRequest("h:a"), {"members": {}}),
    (control.PresenceStatsRequest("h:a"), {"clients": 1, "users": [1]}),
    (control.PresenceStatsRequest("h:a"), {"clients": "1", "users": []}),
    (control.PusherJoinRequest("|1|p", "1.2", "a", None, 1), {"members": [["a"]], "full": 0}),
    (control.PusherJoinRequest("|1|p", "1.2", "a", None, 1), {"members": [["a", {}]], "full": 0}),
    (control.PusherJoinRequest("|1|p", "1.2", "a", None, 1), {"members": []}),
    (control.PusherUsersRequest("|1|p"), {"users": [1], "subscriptions": 1}),
    (control.PusherCacheGetRequest("|1|p"), {"event": {}}),
    (control.PusherOccupiedRequest(1), {"channels": [1]}),
]


@pytest.mark.parametrize(("request_", "fields"), BAD_OWNER_REPLIES)
def test_bad_owner_replies_are_value_errors(
    request_: control.OwnerRequest[Any], fields: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        request_.decode_reply(fields)


def test_requests_call_decodes_answers_and_drops_bad_ones() -> None:
    async def scenario() -> None:
        sent: list[tuple[int, bytes]] = []
        requests = Requests(9, lambda member, payload: sent.append((member, payload)))
        request = control.PresenceStatsRequest("h:a")
        task = asyncio.create_task(requests.call({0, 1, 2, 3}, request, 5))
        await asyncio.sleep(0)
        message = control.decode_inbox(sent[0][1])
        assert control.decode_owner_request(message["op"], message) == request
        requests.on_reply(0, {"id": message["id"], "reply": {"clients": 2, "users": ["a"]}})
        requests.on_reply(1, {"id": message["id"], "reply": {"error": "busy"}})
        requests.on_reply(2, {"id": message["id"], "reply": {"clients": "x"}})  # a bug: missing
        requests.on_reply(3, {"id": message["id"], "reply": {"clients": 0, "users": []}})
        replies, missing = await task
        assert replies == {
            0: control.PresenceStatsReply(2, ("a",)),
            1: control.OwnerRefusal("busy"),
            3: control.PresenceStatsReply(0, ()),
        }
        assert missing == {2}

    asyncio.run(scenario())
