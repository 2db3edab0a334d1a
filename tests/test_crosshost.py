"""What the bridge and the Redis hub share (``server.crosshost.PeerView``): heartbeats in,
the view out, frames from other hosts checked and counted; in one process, with the real
shared-memory view table. The processes themselves: ``tests/test_cluster.py`` and
``tests/test_hosts.py`` (once per engine)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from shardws.pure.busframe import HEADER, LENGTH, channel_topic
from shardws.pure.cluster import host_number, member_id
from shardws.server.crosshost import PeerView
from shardws.shm.tables import SharedTables

log = logging.getLogger("test.crosshost")


@pytest.fixture
def tables() -> Iterator[SharedTables]:
    tables = SharedTables.create(4)
    try:
        yield tables
    finally:
        tables.close()


def view_of(tables: SharedTables, host_id: str, timeout: float = 3.0) -> PeerView:
    return PeerView(host_id, host_number(host_id), tables.view, timeout, log)


def frame(origin: int, payload: bytes = b"x") -> bytes:
    return (
        channel_topic("news")
        + HEADER.pack(origin, 1, 0, 1, 0)
        + LENGTH.pack(len(payload))
        + payload
    )


def test_heartbeats_make_the_view_and_silence_ends_it(tables: SharedTables) -> None:
    a, b = view_of(tables, "a", timeout=0.2), view_of(tables, "b")
    a.on_heartbeat(b.beat((0, 1)))
    a.on_heartbeat(a.beat((0,)))  # our own, coming back: ignored
    view = a.refresh(time.monotonic(), (0,), {"host_id": "a"})
    assert [host.host_id for host in view.hosts] == ["a", "b"]
    assert view.hosts[1].workers == (0, 1) and view.own_stats() == {"host_id": "a"}
    assert tables.view.read() == view and view.crossing()  # no "crossing": the mesh's view
    later = a.refresh(time.monotonic() + 1.0, (0,), {"crossing": False})
    assert [host.host_id for host in later.hosts] == ["a"] and not later.crossing()
    assert a.peers["b"].ups == 1 and not a.peers["b"].up


def test_a_peer_with_this_hosts_id_is_refused(tables: SharedTables) -> None:
    a = view_of(tables, "a")
    impostor = view_of(tables, "a")  # another process claiming host id "a"
    a.on_heartbeat(impostor.beat((0,)))
    a.on_heartbeat(b"not a heartbeat")
    assert a.conflicts == {"a"} and not a.peers


def test_a_new_process_takes_over_the_peers_of_the_last_view(tables: SharedTables) -> None:
    first = view_of(tables, "a")
    first.on_heartbeat(view_of(tables, "b").beat((0,)))
    first.refresh(time.monotonic(), (0,), {})
    successor = view_of(tables, "a")  # the bridge or hub restarted
    assert successor.up_numbers() == {host_number("b")}


def test_frames_from_other_hosts_are_checked_and_counted(tables: SharedTables) -> None:
    a, b = view_of(tables, "a"), view_of(tables, "b")
    a.on_heartbeat(b.beat((0,)))
    end = len(channel_topic("news"))
    from_b = frame(member_id(b.number, 0))
    assert a.origin_of(from_b, end) == b.number
    assert a.peers["b"].received == 1 and a.peers["b"].received_bytes == len(from_b)
    assert a.origin_of(frame(member_id(a.number, 0)), end) is None  # our own
    assert a.origin_of(from_b[:-1], end) is None  # cut short: malformed
    assert (a.received_own, a.malformed, a.peers["b"].received) == (1, 1, 1)
