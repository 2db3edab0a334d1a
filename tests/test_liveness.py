"""``pure.liveness``: the supervisor's verdict on a process from its stamps and its CPU."""

from __future__ import annotations

import pytest

from shardws.pure.liveness import BURN_CAP, Verdict, verdict

INF = float("inf")
T = 10.0


def test_a_fresh_heartbeat_is_alive_whatever_else() -> None:
    assert verdict(0.4, INF, INF, None, T) is Verdict.ALIVE


def test_a_late_loop_whose_counters_move_is_working() -> None:
    assert verdict(24.4, 0.3, 0.3, 0.0, T) is Verdict.WORKING
    assert not Verdict.WORKING.stuck


def test_a_thread_that_runs_while_nothing_moves_means_a_loop_spinning_for_nothing() -> None:
    assert verdict(12.0, 12.0, 0.4, 5.0, T) is Verdict.SPINNING
    assert verdict(12.0, INF, 0.4, None, T) is Verdict.SPINNING  # no CPU figure needed


def test_nothing_ran_and_no_cpu_means_stopped() -> None:
    assert verdict(12.0, 12.0, 12.0, 0.0, T) is Verdict.STOPPED
    assert verdict(12.0, INF, INF, 0.0, T) is Verdict.STOPPED  # no progress thread at all


def test_cpu_without_any_stamp_is_one_long_call_given_time_then_burning() -> None:
    assert verdict(12.0, 12.0, 12.0, 0.8, T) is Verdict.BUSY
    assert not Verdict.BUSY.stuck
    late = BURN_CAP * T + 1
    assert verdict(late, late, late, 0.8, T) is Verdict.BURNING


def test_not_measured_yet_is_given_time() -> None:
    assert verdict(12.0, 12.0, 12.0, None, T) is Verdict.BUSY


@pytest.mark.parametrize("found", list(Verdict))
def test_stuck_is_exactly_what_the_supervisor_kills(found: Verdict) -> None:
    assert found.stuck == (found in (Verdict.SPINNING, Verdict.STOPPED, Verdict.BURNING))
