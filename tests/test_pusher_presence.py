"""shardws.pure.pusher.presence: once-per-user member events and the member limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardws.pure.pusher.channels import member_of, socket_id
from shardws.pure.pusher.presence import Full, Joined, Roster
from shardws.pure.pusher.session import PresenceMember


def _m(user: str, info: bytes | None = None) -> PresenceMember:
    return PresenceMember(user, info)


def test_member_events_once_per_user() -> None:
    roster = Roster(max_members=10)
    assert roster.join("1.1", _m("ann", b'{"v":1}')) == Joined(first=True)
    assert roster.join("1.2", _m("ann", b'{"v":2}')) == Joined(first=False)
    assert roster.join("2.1", _m("bob")) == Joined(first=True)
    assert (roster.user_count, roster.subscription_count) == (2, 3)
    assert roster.members() == [("ann", b'{"v":2}'), ("bob", None)]
    assert roster.leave("1.1") is None  # ann still has 1.2
    assert roster.leave("1.2") == "ann"
    assert roster.leave("1.2") is None and roster.leave("9.9") is None
    assert roster.members() == [("bob", None)]
    assert roster.knows("2.1") and not roster.knows("1.1")
    assert roster.has_user("bob") and not roster.has_user("ann")


def test_rejoin_of_a_socket() -> None:
    roster = Roster(max_members=10)
    roster.join("1.1", _m("ann", b"1"))
    assert roster.join("1.1", _m("ann", b"2")) == Joined(first=False)
    assert roster.subscription_count == 1 and roster.members() == [("ann", b"2")]
    with pytest.raises(ValueError):
        roster.join("1.1", _m("bob"))
    assert roster.leave("1.1") == "ann"


def test_member_limit_counts_users() -> None:
    roster = Roster(max_members=2)
    roster.join("1.1", _m("ann"))
    roster.join("1.2", _m("bob"))
    assert roster.join("1.3", _m("cid")) == Full(2)
    assert roster.subscription_count == 2  # the refusal changed nothing
    assert roster.join("1.4", _m("ann")) == Joined(first=False)  # a known user: always in
    roster.leave("1.2")
    assert roster.join("1.3", _m("cid")) == Joined(first=True)


def test_a_gone_process_takes_its_subscriptions_along() -> None:
    roster = Roster(max_members=10)
    a, b = socket_id(7, 5, 1), socket_id(7, 5, 2)
    c = socket_id(8, 5, 1)
    assert member_of(a) == member_of(b) == 7 and member_of(c) == 8
    assert member_of("nonsense") is None
    roster.join(a, _m("ann"))
    roster.join(b, _m("bob"))
    roster.join(c, _m("bob"))
    assert roster.leave_member(7) == ["ann"]  # bob is still on member 8
    assert roster.members() == [("bob", None)]
    assert roster.leave_member(8) == ["bob"] and roster.user_count == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.sampled_from("abc")), max_size=60))
def test_arrivals_and_departures_balance(steps: list[tuple[bool, int, str]]) -> None:
    """Whatever the order, each user's added/removed events alternate, start with added,
    and the roster's users are exactly those added and not yet removed."""
    roster = Roster(max_members=2)
    joined: dict[str, str] = {}  # socket -> user
    present: set[str] = set()
    for join, n, user in steps:
        socket = f"1.{n}"
        if join and socket not in joined:
            result = roster.join(socket, _m(user))
            if isinstance(result, Full):
                assert user not in present and len(present) == 2
                continue
            joined[socket] = user
            assert result.first == (user not in present)
            present.add(user)
        elif not join:
            left = roster.leave(socket)
            owner = joined.pop(socket, None)
            if left is not None:
                assert left == owner and owner not in joined.values()
                present.discard(left)
            else:
                assert owner is None or owner in joined.values()
        assert {u for u, _ in roster.members()} == present
        assert roster.user_count == len(present) <= 2


def test_a_restarted_process_keeps_its_new_subscriptions() -> None:
    """Member 7 restarted: its old incarnation's subscriptions go, its new ones stay."""
    roster = Roster(max_members=10)
    old, new = socket_id(7, 100, 1), socket_id(7, 200, 1)
    roster.join(old, _m("ann"))
    roster.join(socket_id(7, 100, 2), _m("bob"))
    roster.join(new, _m("bob"))
    assert roster.processes() == {(7, 100), (7, 200)}
    assert roster.leave_member(7, keep=200) == ["ann"]  # bob stays through `new`
    assert roster.processes() == {(7, 200)}
    assert roster.members() == [("bob", None)] and roster.subscription_count == 1


def test_restored_subscriptions_are_members_again_without_an_announcement() -> None:
    roster = Roster(max_members=1)
    assert roster.join("1.1", _m("ann")) == Joined(first=True)
    roster.restore("2.1", _m("bob"))  # past the limit: bob is in the channel already
    roster.restore("2.1", _m("bob"))  # twice: still one subscription
    assert roster.user_count == 2 and roster.subscription_count == 2
    assert roster.leave("2.1") == "bob"  # and leaves like any member
    with pytest.raises(ValueError):
        roster.restore("1.1", _m("cid"))
