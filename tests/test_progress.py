"""``server.progress``: proof of progress stamped while the work counters move, and only
then."""

from __future__ import annotations

import os
import time

import numpy as np
from toolkit import wait_until

from shardws.server.progress import ProgressWatch, cpu_seconds
from shardws.shm.scoreboard import N_COLUMNS, Column

INTERVAL = 0.02


def test_stamps_while_the_counters_move_and_stops_when_they_do_not() -> None:
    row = np.zeros(N_COLUMNS, dtype=np.int64)
    counters = [0]
    watch = ProgressWatch(row, lambda: tuple(counters), INTERVAL)
    watch.start()
    try:
        time.sleep(INTERVAL * 5)
        assert row[Column.PROGRESS_NS] == 0  # nothing moved: no stamp
        counters[0] += 1
        wait_until(lambda: row[Column.PROGRESS_NS] > 0, 5, interval=INTERVAL / 2)
        stamped = int(row[Column.PROGRESS_NS])
        time.sleep(INTERVAL * 5)  # stuck: the same counters at every wake-up
        assert row[Column.PROGRESS_NS] == stamped
        counters[0] += 1
        wait_until(lambda: row[Column.PROGRESS_NS] > stamped, 5, interval=INTERVAL / 2)
    finally:
        watch.stop()


def test_a_busy_loop_that_does_no_work_gets_no_stamp() -> None:
    """The main thread spinning (holding the GIL between switch intervals) with the
    counters still: the watch runs, finds nothing moved, stamps nothing."""
    row = np.zeros(N_COLUMNS, dtype=np.int64)
    seen = []

    def signature() -> int:
        seen.append(1)
        return 0

    watch = ProgressWatch(row, signature, INTERVAL)
    watch.start()
    try:
        end = time.monotonic() + INTERVAL * 10
        while time.monotonic() < end:
            pass
        assert len(seen) > 2  # the watch did get to look
        assert row[Column.PROGRESS_NS] == 0
        assert row[Column.LOOK_NS] > 0  # and said so: it runs, so the loop spins in Python
    finally:
        watch.stop()


def test_cpu_seconds_counts_this_process_and_nothing_for_a_gone_one() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    after = cpu_seconds(os.getpid())
    assert after is not None and after > before
    assert cpu_seconds(2**22 + 1) is None  # above pid_max's default: no such process
