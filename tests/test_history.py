"""history.py: property tests for the ring, offsets, recovery and the rendezvous owner."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardws.config import NamespaceConfig
from shardws.pure.history import Position, Ring, Unrecovered, owner_of
from shardws.pure.protocol import encode_publication
from shardws.pure.sequencer import Seen, Sequencer, Tracker

members = st.sets(st.integers(0, 200), min_size=1, max_size=12)
channels = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=60, unique=True)


@given(members, channels)
def test_owner_is_a_member_and_every_process_agrees(group: set[int], names: list[str]) -> None:
    for name in names:
        owner = owner_of(name, group)
        assert owner in group
        assert owner_of(name, sorted(group, reverse=True)) == owner  # order does not matter


@given(members, channels, st.data())
def test_removing_a_member_moves_only_its_channels(
    group: set[int], names: list[str], data: st.DataObject
) -> None:
    if len(group) < 2:
        return
    gone = data.draw(st.sampled_from(sorted(group)))
    rest = group - {gone}
    for name in names:
        before = owner_of(name, group)
        after = owner_of(name, rest)
        assert after == before or before == gone


def test_channels_spread_over_members() -> None:
    counts = collections.Counter(owner_of(f"chat:{n}", range(4)) for n in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 800  # ~1000 each


def test_owner_of_no_members_is_an_error() -> None:
    with pytest.raises(ValueError):
        owner_of("news", [])


# One step of a random history: publish (with an optional idempotency key, maybe a
# repeat), let time pass, or try to recover from some position.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.one_of(st.none(), st.integers(0, 30))),
        st.tuples(st.just("wait"), st.floats(0, 5)),
        st.tuples(st.just("recover"), st.integers(-2, 60)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(st.integers(1, 10), st.sampled_from([0.0, 3.0]), steps)
def test_ring_matches_a_model(size: int, ttl: float, script: list[tuple[str, object]]) -> None:
    ring = Ring(size, ttl)
    now = 100.0
    model: list[tuple[int, float, str | None]] = []  # every publication ever stored
    for action, value in script:
        if action == "wait":
            now += float(value)  # type: ignore[arg-type]
            continue
        if action == "publish":
            idem = None if value is None else f"k{value}"
            held = [o for o, t, i in model[-size:] if ttl == 0 or t >= now - ttl]
            earlier = ring.duplicate(idem, now)
            expected = next((o for o, _, i in model if i == idem and o in held), None)
            if idem is not None and expected is not None:
                assert earlier == expected  # a retry: same offset, nothing stored
                continue
            assert earlier is None
            offset = ring.next_offset
            assert ring.append(b"p%d" % offset, now, idem) == offset == len(model) + 1
            model.append((offset, now, idem))
            continue
        position = int(value)  # type: ignore[call-overload]
        held = [o for o, t, _ in model[-size:] if ttl == 0 or t >= now - ttl]
        got = ring.recover(ring.epoch, position, now)
        wanted = [o for o in held if o > position]
        gap = 0 <= position <= len(model) and all(
            o in held for o in range(position + 1, len(model) + 1)
        )
        if gap:
            assert got is not None and [e.offset for e in got] == wanted
            assert all(e.data == b"p%d" % e.offset for e in got)
        else:
            assert got is None  # never a silent gap
    assert ring.recover("another-epoch", ring.offset, now) is None


def test_offsets_continue_after_a_snapshot_and_epochs_differ_for_new_rings() -> None:
    ring = Ring(5, 0)
    for n in range(8):
        ring.append(b"%d" % n, float(n), idem=f"i{n}")
    moved = Ring.restore(ring.snapshot())
    assert (moved.epoch, moved.offset, moved.first_offset) == (ring.epoch, 8, 4)
    assert moved.duplicate("i7", 8.0) == 8 and moved.duplicate("i1", 8.0) is None  # evicted key
    assert moved.append(b"next", 9.0) == 9
    recovered = moved.recover(ring.epoch, 5, 9.0)
    assert recovered is not None and [e.offset for e in recovered] == [6, 7, 8, 9]
    assert Ring(5, 0).epoch != ring.epoch


def test_an_unrecoverable_position_says_why() -> None:
    ring = Ring(3, 10.0)
    for n in range(5):  # offsets 1..5 at times 0..4; the ring holds 3, 4, 5
        ring.append(b"%d" % n, float(n), None)
    assert ring.unrecoverable("another-epoch", 5, 4.0) is Unrecovered.EPOCH_CHANGED
    assert ring.unrecoverable(ring.epoch, 6, 4.0) is Unrecovered.AHEAD
    assert ring.unrecoverable(ring.epoch, 1, 4.0) is Unrecovered.LEFT_RING  # 2 was evicted
    assert ring.unrecoverable(ring.epoch, -1, 4.0) is Unrecovered.LEFT_RING
    assert ring.unrecoverable(ring.epoch, 2, 4.0) is None and ring.recover(ring.epoch, 2, 4.0)
    assert ring.unrecoverable(ring.epoch, 5, 4.0) is None  # up to date: nothing missed
    # By age: at t=13.5 offset 3 (stored at 2.0) is older than the 10 s TTL.
    assert ring.unrecoverable(ring.epoch, 2, 13.5) is Unrecovered.LEFT_RING
    assert ring.recover(ring.epoch, 2, 13.5) is None
    # The wire values are part of the protocol (docs/protocol.md).
    assert [reason.value for reason in Unrecovered] == ["epoch_changed", "left_ring", "ahead"]


def test_the_sequencer_answers_recovered_false_with_the_reason() -> None:
    options = NamespaceConfig(history_size=2, history_ttl=0)
    owner = Sequencer(lambda _channel: options)
    first, _ = owner.publish("chat:a", b"1", None)
    for n in range(3):
        owner.publish("chat:a", b"%d" % n, None)  # offsets 2..4; the ring holds 3, 4
    assert owner.position("chat:a", Position(first.epoch, 1)).reason is Unrecovered.LEFT_RING
    assert owner.position("chat:a", Position("gone", 1)).reason is Unrecovered.EPOCH_CHANGED
    assert owner.position("chat:a", Position(first.epoch, 9)).reason is Unrecovered.AHEAD
    kept = owner.position("chat:a", Position(first.epoch, 2))
    assert (kept.recovered, kept.reason, len(kept.publications)) == (True, None, 2)
    assert owner.position("chat:a", None).reason is None


def test_pages_forward_and_backward() -> None:
    ring = Ring(10, 0)
    for n in range(1, 8):
        ring.append(b"%d" % n, 0.0)
    assert [e.offset for e in ring.page(0, 3, 0.0)] == [1, 2, 3]
    assert [e.offset for e in ring.page(5, 10, 0.0)] == [6, 7]
    assert [e.offset for e in ring.page(0, 3, 0.0, reverse=True)] == [7, 6, 5]
    assert [e.offset for e in ring.page(3, 5, 0.0, reverse=True)] == [2, 1]


def test_tracker_classifies_next_old_gap_and_new_epochs() -> None:
    tracker = Tracker()
    # First seen: the position starts here.
    assert tracker.check("c", Position("e1", 5)) is Seen.NEXT
    assert tracker.check("c", Position("e1", 6)) is Seen.NEXT
    assert tracker.check("c", Position("e1", 6)) is Seen.OLD  # delivered already (recovery overlap)
    assert tracker.check("c", Position("e1", 9)) is Seen.GAP  # 7 and 8 missing: repair first
    assert tracker.gap_base("c", "e1") == 6
    tracker.advance("c", Position("e1", 8))  # repaired
    assert tracker.check("c", Position("e1", 9)) is Seen.NEXT
    # The owner lost its history: restart.
    assert tracker.check("c", Position("e2", 1)) is Seen.NEXT
    assert tracker.check("c", Position("e3", 4)) is Seen.GAP  # a new epoch, but 1..3 missed
    assert tracker.gap_base("c", "e3") == 0
    tracker.forget("c")
    assert tracker.position("c") is None


def test_sequencer_publishes_with_positions_and_hands_over() -> None:
    options = NamespaceConfig(history_size=3, history_ttl=0)
    clock = [0.0]
    owner = Sequencer(lambda _channel: options, clock=lambda: clock[0])
    (epoch, offset), publication = owner.publish("chat:a", b'{"x":1}', "k1")
    assert publication is not None
    push = encode_publication("chat:a", publication)  # what a native subscriber receives
    assert (offset, push) == (
        1,
        b'{"type":"pub","channel":"chat:a","offset":1,"epoch":"%s","data":{"x":1}}'
        % epoch.encode(),
    )
    assert owner.publish("chat:a", b"2", "k1") == (Position(epoch, 1), None)  # a retry: nothing new
    owner.publish("chat:a", b"2", None)
    answer = owner.position("chat:a", Position(epoch, 0))
    assert answer.recovered and len(answer.publications) == 2
    other = Sequencer(lambda _channel: options, clock=lambda: clock[0])
    other.adopt(owner.release(lambda _channel: False))
    assert len(owner) == 0 and other.publish("chat:a", b"3", None)[0] == Position(epoch, 3)


def test_sequencer_forgets_rings_idle_for_twice_their_ttl() -> None:
    clock = [0.0]
    kept = NamespaceConfig(history_size=3, history_ttl=0)  # no age limit: never forgotten
    timed = NamespaceConfig(history_size=3, history_ttl=10)
    owner = Sequencer(lambda c: timed if c.startswith("t") else kept, clock=lambda: clock[0])
    first, _ = owner.publish("t:a", b"1", None)
    owner.publish("k:a", b"1", None)
    clock[0] = 15.0
    assert owner.sweep() == 0 and len(owner) == 2  # expired, but used 15 s ago (< 20)
    assert not owner.position("t:a", Position(first.epoch, 0)).publications  # expired
    clock[0] = 36.0  # 21 s after that query
    assert owner.sweep() == 1 and owner.channels() == ["k:a"]
    again, _ = owner.publish("t:a", b"2", None)
    assert again.epoch != first.epoch
    assert owner.position("t:a", Position(first.epoch, 1)).recovered is False
