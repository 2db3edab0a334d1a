"""shardws.pure.pusher.webhooks and .occupancy: bodies and signatures the official SDK's
``validate_webhook`` accepts, the endpoints' filters, the inbox message, the outbox's
order and bounds, the retry schedule; occupancy decided once per change."""

from __future__ import annotations

import time

import pusher
import pytest

from shardws.config import PusherWebhookConfig, PusherWebhookFilterConfig
from shardws.pure.control import decode_inbox
from shardws.pure.pusher.occupancy import Occupancy
from shardws.pure.pusher.webhooks import (
    MAX_AGE,
    MAX_RETRY,
    Outbox,
    WebhookEvent,
    batch_time_ms,
    decode_message,
    encode_batch,
    encode_message,
    retry_delay,
    signature,
    wanted,
)

SECRET = "webhook-secret-0123456789"
SDK = pusher.Pusher(app_id="1", key="app-key", secret=SECRET)

EVENTS = [
    WebhookEvent("channel_occupied", "news"),
    WebhookEvent("member_added", "presence-room", user_id="7"),
    WebhookEvent(
        "client_event",
        "presence-room",
        user_id="7",
        event="client-typing",
        data='{"on":true}',
        socket_id="1.2",
    ),
    WebhookEvent("cache_miss", "cache-news"),
]


def test_the_sdks_validator_accepts_a_signed_batch() -> None:
    body = encode_batch(EVENTS, int(time.time() * 1000))
    checked = SDK.validate_webhook("app-key", signature(SECRET, body), body.decode())
    assert checked is not None
    assert checked["events"][0] == {"name": "channel_occupied", "channel": "news"}
    assert checked["events"][1] == {
        "name": "member_added",
        "channel": "presence-room",
        "user_id": "7",
    }
    assert checked["events"][2]["data"] == '{"on":true}'
    assert checked["events"][2]["socket_id"] == "1.2"
    # A wrong secret, another key, a body older than the SDK's 300 s: refused.
    assert SDK.validate_webhook("app-key", signature("x" * 20, body), body.decode()) is None
    assert SDK.validate_webhook("other", signature(SECRET, body), body.decode()) is None
    stale = encode_batch(EVENTS, int((time.time() - 301) * 1000))
    assert SDK.validate_webhook("app-key", signature(SECRET, stale), stale.decode()) is None


def test_unknown_event_names_and_filters() -> None:
    with pytest.raises(ValueError):
        WebhookEvent("subscription_count", "news")
    every = PusherWebhookConfig("http://x/", ("channel_occupied", "member_added"))
    assert wanted(every, EVENTS[0]) and wanted(every, EVENTS[1])
    assert not wanted(every, EVENTS[3])  # cache_miss: not among its event types
    only = PusherWebhookFilterConfig(channel_name_starts_with="presence-")
    presence = PusherWebhookConfig("http://x/", ("channel_occupied", "member_added"), only)
    assert not wanted(presence, EVENTS[0]) and wanted(presence, EVENTS[1])
    suffix = PusherWebhookFilterConfig(channel_name_ends_with="-lobby")
    rooms = PusherWebhookConfig("http://x/", ("member_added",), suffix)
    assert not wanted(rooms, EVENTS[1])
    assert wanted(rooms, WebhookEvent("member_added", "presence-x-lobby", user_id="1"))


def test_the_inbox_message_round_trips_and_junk_is_refused() -> None:
    for event in EVENTS:
        message = decode_inbox(encode_message("1", event, 1234, 7))
        assert message["id"] == 0 and message["reply_to"] == 7
        assert decode_message(message) == ("1", 1234, event)
    good = decode_inbox(encode_message("1", EVENTS[2], 1234, 7))
    for bad in (
        {**good, "app": ""},
        {**good, "at_ms": -1},
        {**good, "at_ms": 1.5},
        {**good, "event": []},
        {**good, "event": {"name": "channel_occupied"}},
        {**good, "event": {**good["event"], "name": "nope"}},
        {**good, "event": {**good["event"], "data": 3}},
    ):
        with pytest.raises(ValueError):
            decode_message(bad)


def test_outbox_order_batches_age_and_capacity() -> None:
    box = Outbox(batch_size=2, capacity=3)
    for n, event in enumerate(EVENTS):  # the 4th drops the oldest
        box.put(event, at=100.0 + n)
    assert box.dropped_full == 1 and len(box) == 3
    first = box.take(now=103.0)
    assert [event for _at, event in first] == EVENTS[1:3]
    assert batch_time_ms(first) == 101_000  # the oldest event's time
    box.put(EVENTS[0], at=104.0)
    # Past MAX_AGE the older event is dropped unsent and counted; the newer one goes.
    assert [event for _at, event in box.take(now=103.5 + MAX_AGE)] == [EVENTS[0]]
    assert box.dropped_old == 1 and len(box) == 0
    short = Outbox(batch_size=5, capacity=5, max_age=1.0)
    short.put(EVENTS[0], at=10.0)
    short.put(EVENTS[1], at=11.5)
    assert [event for _at, event in short.take(now=12.0)] == [EVENTS[1]]
    assert short.dropped_old == 1
    with pytest.raises(ValueError):
        Outbox(batch_size=0, capacity=1)
    with pytest.raises(ValueError):
        Outbox(batch_size=1, capacity=1, max_age=MAX_AGE + 1)


def test_occupancy_is_decided_once_per_change_cluster_wide() -> None:
    seen = Occupancy()
    assert seen.occupy("|1|room", 1)  # the first worker: occupied
    assert not seen.occupy("|1|room", 2)  # a second worker: nothing
    assert not seen.occupy("|1|room", 2)  # told twice: nothing
    assert not seen.vacate("|1|room", 1)
    assert not seen.vacate("|1|room", 1)  # told twice: nothing
    assert seen.vacate("|1|room", 2)  # the last one: vacated
    assert "|1|room" not in seen and not seen.vacate("|1|room", 2)
    seen.restore("|1|a", 5)  # a restore decides nothing, and counts as occupied
    assert not seen.occupy("|1|a", 6)
    assert seen.occupy("|1|b", 5)
    assert seen.members() == {5, 6}
    assert sorted(seen.drop_member(5)) == ["|1|b"]  # |1|a still has worker 6
    seen.forget(lambda channel: channel == "|1|a")
    assert len(seen) == 0


def test_retry_delay_grows_then_stops_growing() -> None:
    delays = [retry_delay(attempt) for attempt in range(1, 12)]
    assert delays[0] == 1.0 and delays[1] == 2.0
    assert delays == sorted(delays) and delays[-1] == MAX_RETRY
    with pytest.raises(ValueError):
        retry_delay(0)
