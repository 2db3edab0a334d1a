"""shardws.pure.pusher.cache: cache channels' last events and their TTL."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardws.pure.pusher.cache import LastEvents


def test_last_event_within_the_ttl() -> None:
    cache = LastEvents(ttl=10)
    assert cache.get("cache-a", 0) is None
    cache.store("cache-a", b"one", 0)
    cache.store("cache-a", b"two", 5)  # the last one wins, with a fresh TTL
    assert cache.get("cache-a", 14.9) == b"two"
    assert cache.get("cache-a", 15) is None and len(cache) == 0


def test_expire_forgets_only_old_events() -> None:
    cache = LastEvents(ttl=10)
    cache.store("cache-a", b"a", 0)
    cache.store("cache-b", b"b", 3)
    cache.store("cache-a", b"a2", 6)  # rewritten: now the youngest
    assert cache.expire(12) == 0
    assert cache.expire(13) == 1 and cache.get("cache-b", 13) is None
    assert cache.get("cache-a", 13) == b"a2" and len(cache) == 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=40))
def test_never_older_than_the_ttl(writes: list[tuple[str, float]]) -> None:
    cache = LastEvents(ttl=3)
    now, written = 0.0, {}
    for channel, step in writes:
        now += step
        cache.store(channel, f"{channel}{now}".encode(), now)
        written[channel] = now
        cache.expire(now)
        for other, at in written.items():
            expected = f"{other}{at}".encode() if now < at + 3 else None
            assert cache.get(other, now) == expected


def test_forget_drops_the_channels_it_is_told() -> None:
    events = LastEvents(ttl=10)
    events.store("|1|cache-a", b"a", 0.0)
    events.store("|1|cache-b", b"b", 0.0)
    assert events.forget(lambda channel: channel.endswith("a")) == 1
    assert events.get("|1|cache-a", 1.0) is None and events.get("|1|cache-b", 1.0) == b"b"
