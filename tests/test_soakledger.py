"""The soak's accounting without a cluster: counters summed across process restarts,
losses attributed to faults, and the check of what a recovering subscriber holds
(``benchmarks/soakledger.py``, ``benchmarks/soakclients.check_subscription``)."""

from __future__ import annotations

from benchmarks.soakclients import Received, check_subscription
from benchmarks.soakledger import (
    SLOW_CONSUMER,
    UNEXPLAINED,
    CounterLedger,
    Fault,
    Increase,
    attribute,
    parse_metrics,
)


def metrics(bus_lost: float, drops: float, worker: str = "0") -> str:
    return (
        "# TYPE websocket_dropped_messages counter\n"
        f'websocket_dropped_messages_total{{reason="bus_lost",worker="{worker}"}} {bus_lost}\n'
        f'websocket_dropped_messages_total{{reason="slow_consumer",worker="{worker}"}} {drops}\n'
        "shardws_backend_publications_total 7.0\n"
        "process_open_fds 12\n"
    )


def test_prometheus_samples_are_parsed_with_their_labels() -> None:
    samples = parse_metrics(metrics(3, 4))
    lost = ("websocket_dropped_messages_total", (("reason", "bus_lost"), ("worker", "0")))
    assert samples[lost] == 3.0
    assert samples[("shardws_backend_publications_total", ())] == 7.0
    assert len(samples) == 4  # comments skipped


def test_counters_are_summed_across_resets_and_new_processes() -> None:
    ledger = CounterLedger()
    ledger.observe("a", 0.0, metrics(5, 0), {"0": 100})  # the baseline: nothing counted
    ledger.observe("a", 1.0, metrics(8, 0), {"0": 100})  # +3
    ledger.observe("a", 2.0, metrics(2, 0), {"0": 100})  # fell: a reset, +2
    ledger.observe("a", 3.0, metrics(9, 0), {"0": 101})  # a new pid: all 9 are new
    assert ledger.total("dropped/bus_lost") == 3 + 2 + 9
    assert ledger.resets == 1
    assert [(i.since, i.at, i.amount) for i in ledger.increases] == [
        (0.0, 1.0, 3),
        (1.0, 2.0, 2),
        (2.0, 3.0, 9),
    ]
    ledger.observe("b", 3.0, metrics(50, 0), {"0": 7})  # another host's baseline
    assert ledger.total("dropped/bus_lost", "b") == 0


def test_losses_are_attributed_to_the_fault_whose_window_covers_them() -> None:
    faults = [Fault("kill_worker", "a", 10.0, 11.0), Fault("partition", "a", 20.0, 25.0)]
    increases = [
        Increase("a", "dropped/bus_lost", 11.5, 12.5, 4),  # kill_worker's window
        Increase("a", "dropped/bus_lost", 24.0, 25.0, 1),  # both windows: the latest
        Increase("a", "history_unrecoverable", 50.0, 51.0, 2),  # after every window
        Increase("a", "dropped/slow_consumer", 50.0, 51.0, 9),  # always the slow consumer
    ]
    assert attribute(increases, faults, window=15.0) == {
        "dropped/bus_lost: kill_worker": 4,
        "dropped/bus_lost: partition": 1,
        f"history_unrecoverable: {UNEXPLAINED}": 2,
        f"dropped/slow_consumer: {SLOW_CONSUMER}": 9,
    }


def pubs(epoch: str, offsets: range, at: float = 1.0) -> list[tuple[str, float, str, int, str]]:
    return [("pub", at, epoch, n, f"k{epoch}{n}") for n in offsets]


def test_a_subscription_in_order_with_reported_gaps_passes() -> None:
    events = [
        *pubs("e1", range(4, 7)),
        ("gap", 2.0, "e1", 9, "left_ring"),  # 7..9 lost, told
        *pubs("e1", range(10, 12)),
        ("gap", 3.0, "e2", 0, "epoch_changed"),  # the rest of e1 lost, told
        *pubs("e2", range(1, 3)),
        *pubs("e1", range(12, 13)),  # back to e1 after a partition: continued
    ]
    check = check_subscription(Received(("e1", 3), 0.5, events))
    assert check.problems == []
    assert check.lost(("e1", 8)) and check.lost(("e1", 40)) and not check.lost(("e1", 5))
    assert check.expects(("e1", 4)) and not check.expects(("e1", 3))
    assert [reason for _, reason in check.gap_times] == ["left_ring", "epoch_changed"]


def test_holes_repeats_and_silent_epoch_changes_are_problems() -> None:
    events = [
        *pubs("e1", range(1, 3)),
        *pubs("e1", range(4, 5)),  # 3 missing, nobody told
        *pubs("e1", range(4, 5)),  # 4 twice
        *pubs("e2", range(1, 2)),  # another epoch, no gap
    ]
    problems = check_subscription(Received(("e1", 0), 0.5, events)).problems
    assert len(problems) == 5, problems
    assert any("2 -> 4" in p for p in problems)
    assert any("delivered twice" in p for p in problems)
    assert any("without a gap" in p and "e2" in p for p in problems)


def test_bus_losses_are_told_apart_by_fault_receiver_and_origin() -> None:
    from datetime import datetime

    from benchmarks.soakledger import bus_losses_by_origin

    start = datetime(2026, 12, 5, 20, 0, 0).timestamp()
    logs = {
        "a": "2026-12-05 20:00:10,500 WARNING worker-1 shardws.bus: bus: 3 message(s) lost"
        " from member 77 on b'chist:s0\\x00'\n"
        "2026-12-05 20:00:10,600 INFO worker-1 shardws.worker: unrelated\n"
        "2026-12-05 20:00:50,000 WARNING admin shardws.bus: bus: 2 message(s) lost"
        " from member 5 on b'i64\\x00'\n",
        "b": "2026-12-05 20:00:11,000 WARNING worker-0 shardws.bus: bus: 4 message(s) lost"
        " from member 77 on b'chist:s0\\x00'\n",
    }

    def explain(at: float) -> str | None:
        return "roll" if 10 <= at <= 20 else None

    def origin_of(member: int) -> str:
        return {77: "b/worker 0", 5: "a/worker 5"}[member]

    assert bus_losses_by_origin(logs, start, explain, origin_of) == {
        "roll: a/worker-1 <- b/worker 0 (channel, cross host)": 3,
        "roll: b/worker-0 <- b/worker 0 (channel, same host)": 4,
        UNEXPLAINED + ": a/admin <- a/worker 5 (inbox, same host)": 2,
    }
