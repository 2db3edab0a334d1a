"""iplimits.py: per-IP counts summed over worker columns, reset of a dead worker."""

from __future__ import annotations

import os

from shardws.shm.iplimits import BUCKETS, IPTable, bucket


def test_counts_sum_over_workers_and_reset() -> None:
    table = IPTable.create(3)
    try:
        table.add(0, "10.0.0.1", 1)
        table.add(1, "10.0.0.1", 1)
        table.add(2, "10.0.0.1", 1)
        table.add(2, "10.0.0.2", 1)
        assert table.count("10.0.0.1") == 3
        table.add(1, "10.0.0.1", -1)
        assert table.count("10.0.0.1") == 2
        table.reset_worker(2)  # worker 2 died: its connections no longer count
        assert table.count("10.0.0.1") == 1
        assert table.count("10.0.0.2") == 0
    finally:
        table.close()


def test_buckets_are_stable_and_spread() -> None:
    assert bucket("192.0.2.7") == bucket("192.0.2.7")
    assert 0 <= bucket("::1") < BUCKETS
    rows = {bucket(f"10.{i // 256}.{i % 256}.1") for i in range(2000)}
    assert len(rows) > 1990  # few collisions among 2000 addresses


def test_children_see_the_parent_table() -> None:
    table = IPTable.create(2)
    try:
        pid = os.fork()
        if pid == 0:
            table.add(1, "198.51.100.1", 5)
            os._exit(0)
        os.waitpid(pid, 0)
        assert table.count("198.51.100.1") == 5
    finally:
        table.close()
