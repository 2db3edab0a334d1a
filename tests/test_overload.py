"""``pure.overload``: when a worker refuses new connections because its loop runs late."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardws.pure.overload import Overload


def test_on_time_accepts() -> None:
    overload = Overload(1.0)
    overload.observe(0.01)
    assert not overload.refusing and not overload.refuses(overdue=-0.4)


def test_a_late_tick_starts_refusing_and_a_tick_under_half_stops_it() -> None:
    overload = Overload(1.0)
    overload.observe(1.5)
    assert overload.refusing and overload.refuses(overdue=-0.5)
    overload.observe(0.7)  # between half and the limit: no flapping, still refusing
    assert overload.refuses(overdue=-0.5)
    overload.observe(0.4)
    assert not overload.refusing and not overload.refuses(overdue=-0.5)
    assert overload.lag == 0.4


def test_an_iteration_that_lasts_refuses_before_any_tick_can_say_so() -> None:
    overload = Overload(1.0)
    assert not overload.refuses(overdue=0.9)
    assert overload.refuses(overdue=1.1)
    assert not overload.refusing  # only a tick changes the state


def test_zero_turns_admission_off() -> None:
    overload = Overload(0.0)
    overload.observe(100.0)
    assert not overload.refusing and not overload.refuses(overdue=100.0)
    assert overload.lag == 100.0  # still measured, for /metrics


@given(st.floats(0.01, 10), st.lists(st.floats(0, 20), max_size=50))
def test_the_state_follows_the_last_decisive_tick(limit: float, lags: list[float]) -> None:
    overload = Overload(limit)
    expected = False
    for lag in lags:
        overload.observe(lag)
        if lag > limit:
            expected = True
        elif lag < limit / 2:
            expected = False
        assert overload.refusing == expected
