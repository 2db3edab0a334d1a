"""``pure.sweep``: the keepalive pass spread over steps, every connection once a pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardws.pure.sweep import RotatingSweep


def test_a_pass_is_spread_over_its_steps_and_sees_each_item_once() -> None:
    items = list(range(100))
    sweep: RotatingSweep[int] = RotatingSweep(16)
    slices = []
    for step in range(7):  # ceil(100 / 16) = 7 a slice: 15 slices would be 105
        chunk, new_pass = sweep.take(lambda: items)
        assert new_pass == (step == 0)
        slices.append(chunk)
    assert [len(c) for c in slices] == [7] * 7
    rest = []
    while True:
        chunk, new_pass = sweep.take(lambda: items)
        if new_pass:
            break
        rest.append(chunk)
    seen = [i for c in slices + rest for i in c]
    assert seen == items  # once each, in order
    assert max(len(c) for c in rest) == 7 and len(slices + rest) <= 16


def test_items_added_during_a_pass_wait_for_the_next() -> None:
    items = [1, 2, 3, 4]
    sweep: RotatingSweep[int] = RotatingSweep(2)
    assert sweep.take(lambda: items) == ([1, 2], True)
    items.append(5)
    assert sweep.take(lambda: items) == ([3, 4], False)
    assert sweep.take(lambda: items) == ([1, 2, 3], True)
    assert sweep.take(lambda: items) == ([4, 5], False)


def test_no_items_is_a_short_pass() -> None:
    sweep: RotatingSweep[int] = RotatingSweep(4)
    assert sweep.take(list) == ([], True)
    assert sweep.take(list) == ([], True)


def test_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="steps"):
        RotatingSweep(0)


@given(st.integers(0, 500), st.integers(1, 40))
def test_every_item_once_per_pass_in_at_most_steps_slices(n: int, steps: int) -> None:
    items = list(range(n))
    sweep: RotatingSweep[int] = RotatingSweep(steps)
    chunk, new_pass = sweep.take(lambda: items)
    assert new_pass
    seen, slices = list(chunk), 1
    for _ in range(steps + 1):
        chunk, new_pass = sweep.take(lambda: items)
        if new_pass:
            break
        seen += chunk
        slices += 1
    assert seen == items and slices <= steps
