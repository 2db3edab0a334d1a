"""membership.py: member ids, the shared view and the ids a process works with."""

from __future__ import annotations

import multiprocessing
import time
import zlib

import pytest

from shardws.config import parse_config
from shardws.pure.cluster import (
    DECIDER_HOST,
    Host,
    View,
    host_number,
    host_of,
    member_id,
    slot_of,
    view_number,
)
from shardws.pure.history import owner_of
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables
from shardws.shm.view import Members

CLUSTER = """
[cluster]
host_id = "a"
listen = "tcp://0.0.0.0:9767"
peers = ["b:9767"]
allow_plaintext = true
"""


def test_host_numbers_are_pinned() -> None:
    # Every host computes every other host's number: a change of the function would
    # split a cluster running two versions, so the values are fixed here.
    assert [host_number(h) for h in ("a", "b", "shardws-0.shardws.default.svc")] == [
        42748,
        25017,
        514,
    ]


def test_no_host_id_gets_the_number_of_redis_as_a_publisher() -> None:
    # Its digest would give 65535, DECIDER_HOST (the origin of Redis's own
    # publications on the hub): it gets 65534, as a collision of two ids would.
    assert zlib.crc32(b"host-203444") % 0xFFFF + 1 == DECIDER_HOST
    assert host_number("host-203444") == DECIDER_HOST - 1


def test_member_ids_split_into_host_and_slot() -> None:
    for host_id in ("a", "b", "shardws-0.shardws.default.svc", "x" * 63):
        number = host_number(host_id)
        assert 1 <= number < DECIDER_HOST
        member = member_id(number, 65)
        assert (host_of(member), slot_of(member)) == (number, 65)
        assert member < 2**32  # fits the bus header's origin field
    assert member_id(0, 3) == 3  # a single host: member ids are slots


def test_view_number_is_a_digest_of_the_membership() -> None:
    a, b = Host("a", 1, (0, 1)), Host("b", 2, (0, 1))
    assert view_number([a, b]) == view_number([b, a])
    assert view_number([a, b]) != view_number([a])
    assert view_number([a, b]) != view_number([a, Host("b", 2, (0, 1, 2))])


def test_view_table_round_trip_and_cache() -> None:
    tables = SharedTables.create(4)
    try:
        assert tables.view.read() is None  # no bridge wrote yet
        hosts = (Host("a", 7, (0, 1)), Host("b", 9, (0,)))
        view = View(view_number(hosts), hosts, {"b": {"up": True, "messages_received": 3}})
        tables.view.write(view)
        first = tables.view.read()
        assert first == view
        assert tables.view.read() is first  # unchanged: served from the cache
        assert first is not None and first.workers() == (
            member_id(7, 0),
            member_id(7, 1),
            member_id(9, 0),
        )
        assert first.remote_workers(7) == {member_id(9, 0)}
        with pytest.raises(ValueError, match="does not fit"):
            tables.view.write(View(0, (Host("x", 1, tuple(range(400_000))),), {}))
        assert tables.view.read() == view  # a refused write changes nothing
    finally:
        tables.close()


def _writer(tables: SharedTables, rounds: int) -> None:
    for n in range(rounds):
        workers = tuple(range(n % 50))  # documents of varying length
        tables.view.write(View(n, (Host("a", 1, workers),), {}))


def test_readers_never_see_a_torn_view() -> None:
    tables = SharedTables.create(2)
    try:
        tables.view.write(View(0, (Host("a", 1, ()),), {}))
        writer = multiprocessing.get_context("fork").Process(target=_writer, args=(tables, 20_000))
        writer.start()
        deadline = time.monotonic() + 20
        reads = 0
        while writer.is_alive() and time.monotonic() < deadline:
            view = tables.view.read()  # a torn document would fail to parse or mismatch
            assert view is not None and view.hosts[0].workers == tuple(range(view.number % 50))
            reads += 1
        writer.join(10)
        assert writer.exitcode == 0 and reads > 0
    finally:
        tables.close()


def test_members_single_host_and_cluster() -> None:
    single = parse_config("", "t")
    tables = SharedTables.create(4)
    board = tables.board
    try:
        for slot in (0, 1, board.admin_slot):
            board.table[slot, Column.CONFIGURED] = 1
            board.table[slot, Column.STATE] = ProcessState.READY
            board.table[slot, Column.HEARTBEAT_NS] = time.monotonic_ns()
        members = Members(board, tables.view, single, 0)
        assert (members.host, members.me) == (0, 0)
        assert members.local() == [0, 1, 4] and members.ready_local() == {1, 4}
        assert members.owners() == (0, 1) and members.ready_workers() == {1}

        clustered = Members(board, tables.view, parse_config(CLUSTER, "t"), 1)
        a = host_number("a")
        assert clustered.me == member_id(a, 1) and clustered.view() is None
        assert clustered.owners() == (member_id(a, 0), member_id(a, 1))
        b = host_number("b")
        hosts = (Host("a", a, (0, 1)), Host("b", b, (0, 1, 2)))
        tables.view.write(View(view_number(hosts), hosts, {}))
        owners = clustered.owners()
        assert len(owners) == 5 and {host_of(m) for m in owners} == {a, b}
        assert clustered.ready_workers() == {member_id(a, 0)} | {member_id(b, s) for s in (0, 1, 2)}
        # Host b, with the same view, computes the same owners.
        tables_b = SharedTables.create(4)
        board_b = tables_b.board
        try:
            board_b.table[[0, 1, 2], Column.CONFIGURED] = 1
            tables_b.view.write(View(view_number(hosts), hosts, {}))
            other = Members(
                board_b, tables_b.view, parse_config(CLUSTER.replace('"a"', '"b"'), "t"), 0
            )
            assert other.owners() == owners
            channels = [f"room-{n}" for n in range(50)]
            chosen = {owner_of(c, owners) for c in channels}
            assert {host_of(m) for m in chosen} == {a, b}  # both hosts own channels
        finally:
            tables_b.close()
    finally:
        tables.close()
