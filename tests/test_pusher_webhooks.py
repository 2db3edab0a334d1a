"""shardws.pure.pusher.webhooks: bodies and signatures the official SDK's
``validate_webhook`` accepts, the outbox's order and bounds, the retry schedule."""

from __future__ import annotations

import time

import pusher
import pytest

from shardws.pure.pusher.webhooks import (
    MAX_AGE,
    MAX_RETRY,
    Outbox,
    WebhookEvent,
    encode_batch,
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
    assert wanted(frozenset(), EVENTS[0])
    assert wanted(frozenset({"channel_occupied"}), EVENTS[0])
    assert not wanted(frozenset({"member_added"}), EVENTS[0])


def test_outbox_order_batches_age_and_capacity() -> None:
    box = Outbox(batch_size=2, capacity=3)
    for n, event in enumerate(EVENTS):  # the 4th drops the oldest
        box.put(event, at=100.0 + n)
    assert box.dropped_full == 1 and len(box) == 3
    first = box.take(now=103.0)
    assert [event for _at, event in first] == EVENTS[1:3]
    box.give_back(first)  # a failed delivery: retried before anything newer
    assert [event for _at, event in box.take(now=103.0)] == EVENTS[1:3]
    box.put(EVENTS[0], at=104.0)
    # Past MAX_AGE the older event is dropped unsent and counted; the newer one goes.
    assert [event for _at, event in box.take(now=103.5 + MAX_AGE)] == [EVENTS[0]]
    assert box.dropped_old == 1 and len(box) == 0
    with pytest.raises(ValueError):
        Outbox(batch_size=0, capacity=1)


def test_retry_delay_grows_then_stops_growing() -> None:
    delays = [retry_delay(attempt) for attempt in range(1, 12)]
    assert delays[0] == 1.0 and delays[1] == 2.0
    assert delays == sorted(delays) and delays[-1] == MAX_RETRY
    with pytest.raises(ValueError):
        retry_delay(0)
