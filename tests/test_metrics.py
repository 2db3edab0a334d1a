"""metrics.py: scoreboard membership, readiness and the latency histogram."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from shardws.server.metrics import prometheus_text
from shardws.shm.scoreboard import (
    LATENCY_BUCKETS,
    Column,
    LatencyHistogram,
    ProcessState,
    Scoreboard,
)


def test_members_follow_the_configured_mark_across_resets() -> None:
    board = Scoreboard.create(8)
    try:
        for slot in (0, 1, 2, board.admin_slot):
            board.table[slot, Column.CONFIGURED] = 1
        board.table[1, Column.RESTARTS] = 3
        board.reset_row(1)  # a dead worker stays a member, its restarts are kept
        assert board.members() == [0, 1, 2, 8]
        assert board.workers() == [0, 1, 2]
        assert board.table[1, Column.RESTARTS] == 3
        board.retire_row(2)  # a reload removed it
        assert board.workers() == [0, 1]
    finally:
        board.close()


def test_ready_slots_need_ready_state_and_a_fresh_heartbeat() -> None:
    board = Scoreboard.create(4)
    try:
        now = time.monotonic_ns()
        board.table[0, [Column.STATE, Column.HEARTBEAT_NS]] = [ProcessState.READY, now]
        board.table[1, [Column.STATE, Column.HEARTBEAT_NS]] = [ProcessState.BOOTING, now]
        stale = now - 20 * 10**9
        board.table[2, [Column.STATE, Column.HEARTBEAT_NS]] = [ProcessState.READY, stale]
        board.table[4, [Column.STATE, Column.HEARTBEAT_NS]] = [ProcessState.READY, now]
        assert board.ready_slots(10.0) == {0, 4}
    finally:
        board.close()


def test_latency_histogram_exposed_cumulative_per_worker() -> None:
    board = Scoreboard.create(2)
    try:
        board.table[0, Column.CONFIGURED] = 1
        histogram = LatencyHistogram()
        histogram.observe(0.00005)  # first bucket
        histogram.observe(0.003, n=4)  # le=0.005
        histogram.observe(7.0)  # +Inf only
        histogram.store(board.row(0))
        families = {
            f.name: f for f in text_string_to_metric_families(prometheus_text(board, 10.0).decode())
        }
        samples = {
            (s.name, s.labels.get("le")): s.value
            for s in families["websocket_message_latency_seconds"].samples
            if s.labels["worker"] == "0"
        }
        bucket = "websocket_message_latency_seconds_bucket"
        assert samples[(bucket, repr(LATENCY_BUCKETS[0]))] == 1
        assert samples[(bucket, "0.0025")] == 1
        assert samples[(bucket, "0.005")] == 5
        assert samples[(bucket, "1.0")] == 5
        assert samples[(bucket, "+Inf")] == 6
        assert samples[("websocket_message_latency_seconds_count", None)] == 6
        assert abs(samples[("websocket_message_latency_seconds_sum", None)] - 7.01205) < 1e-4
    finally:
        board.close()
