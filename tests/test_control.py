"""shardws.pure.control: user-topic and inbox messages, request/reply, channel answers."""

from __future__ import annotations

import asyncio

import pytest
from toolkit import run

from shardws.bus.requests import Requests
from shardws.pure import control


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
