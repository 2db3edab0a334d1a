"""shardws.pure.session: native commands in, outcomes out, without sockets."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import jwt
import pytest

from shardws.config import parse_config
from shardws.core import TokenBucket
from shardws.pure.auth import ANONYMOUS, Authenticator, Identity
from shardws.pure.protocol import CloseCode, ErrorCode
from shardws.pure.session import (
    Close,
    Connected,
    Count,
    Outcome,
    Publish,
    Read,
    Reply,
    Sessions,
    Subscribe,
    Unsubscribe,
)

SECRET = "session-test-secret-0123456789-abcdefgh"
CONFIG = parse_config(
    f"""
[auth]
secret = "{SECRET}"
anonymous = false
[limits]
commands_per_second = 1000
command_burst = 5
abuse_close_after = 3
subscriptions_per_connection = 2
[namespaces.chat]
[namespaces.h]
allowed_delta_types = ["fossil"]
history_size = 10
presence = true
join_leave = true
[namespaces.ro]
publish = false
[namespaces.tok]
subscribe_token = true
[namespaces.small]
max_subscribers = 1
""",
    "test",
)


@dataclass
class State:
    """A connection's session state, as the worker's connections keep it."""

    identity: Identity | None
    bucket: TokenBucket
    channels: set[str] = field(default_factory=set)
    strikes: int = 0
    msgpack: bool = False


class World:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sessions = Sessions(CONFIG, Authenticator(CONFIG.auth), self.count)
        self.now = 1000.0

    def count(self, channel: str) -> int:
        return self.counts.get(channel, 0)

    def state(self, identity: Identity | None = ANONYMOUS) -> State:
        return State(identity, self.sessions.new_bucket(self.now))

    def send(self, state: State, command: dict[str, object] | bytes) -> Outcome:
        self.now += 0.01  # 100/s: far below the limit, the bucket refills
        payload = command if isinstance(command, bytes) else json.dumps(command).encode()
        return self.sessions.command(state, payload, False, self.now)


def error_of(outcome: Outcome) -> tuple[int, str]:
    assert isinstance(outcome, Reply), outcome
    body = json.loads(outcome.payload)
    return body["error"]["code"], body["error"]["message"]


def token(user: str = "alice", **claims: object) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 60, **claims}, SECRET)


@pytest.fixture
def world() -> World:
    return World()


def test_commands_before_connect_are_refused_then_connect_authenticates(world: World) -> None:
    state = world.state(identity=None)
    assert error_of(world.send(state, {"op": "ping", "id": 1})) == (
        ErrorCode.UNAUTHORIZED,
        "connect first",
    )
    outcome = world.send(state, {"op": "connect", "id": 2, "token": token()})
    assert isinstance(outcome, Connected) and outcome.identity.user == "alice"
    assert state.identity is outcome.identity
    reply = json.loads(outcome.reply)
    assert reply["id"] == 2 and reply["user"] == "alice" and isinstance(reply["expires"], int)
    assert error_of(world.send(state, {"op": "connect", "id": 3, "token": token()}))[0] == (
        ErrorCode.BAD_REQUEST
    )


def test_a_bad_connect_token_closes_with_4001_and_counts(world: World) -> None:
    state = world.state(identity=None)
    outcome = world.send(state, {"op": "connect", "id": 1, "token": "garbage"})
    assert isinstance(outcome, Close) and outcome.code == CloseCode.UNAUTHORIZED
    assert outcome.count is Count.AUTH_FAILURES and outcome.log is not None
    assert state.identity is None


def test_subscribe_checks_in_order_and_counts_the_channel(world: World) -> None:
    state = world.state()
    outcome = world.send(state, {"op": "subscribe", "id": 1, "channel": "chat:a"})
    assert isinstance(outcome, Subscribe) and outcome.channel == "chat:a"
    assert outcome.since is None and state.channels == {"chat:a"}
    assert error_of(world.send(state, {"op": "subscribe", "id": 2, "channel": "chat:a"}))[0] == (
        ErrorCode.ALREADY_SUBSCRIBED
    )
    assert error_of(world.send(state, {"op": "subscribe", "id": 3, "channel": "nope:x"}))[0] == (
        ErrorCode.UNKNOWN_CHANNEL
    )
    assert error_of(world.send(state, {"op": "subscribe", "id": 4, "channel": "bad name"}))[0] == (
        ErrorCode.BAD_REQUEST
    )
    recover = {
        "op": "subscribe",
        "id": 5,
        "channel": "chat:b",
        "recover": {"epoch": "e", "offset": 1},
    }
    assert error_of(world.send(state, recover)) == (
        ErrorCode.BAD_REQUEST,
        "recover: this channel keeps no history",
    )
    history = world.send(state, {**recover, "channel": "h:b"})
    assert isinstance(history, Subscribe) and history.since == ("e", 1)
    assert state.channels == {"chat:a", "h:b"}
    assert error_of(world.send(state, {"op": "subscribe", "id": 6, "channel": "chat:c"})) == (
        ErrorCode.LIMIT_EXCEEDED,
        "too many subscriptions",
    )


def test_delta_subscriptions_where_the_namespace_allows_them(world: World) -> None:
    state = world.state()
    asked = {"op": "subscribe", "id": 1, "delta": "fossil"}
    outcome = world.send(state, {**asked, "channel": "h:a"})
    assert isinstance(outcome, Subscribe) and outcome.delta == "fossil"
    plain = world.send(state, {"op": "subscribe", "id": 2, "channel": "h:b"})
    assert isinstance(plain, Subscribe) and plain.delta is None
    code, message = error_of(world.send(state, {**asked, "channel": "chat:a"}))
    assert code == ErrorCode.BAD_REQUEST
    assert "not allowed" in message and "allowed_delta_types" in message
    code, message = error_of(world.send(state, {**asked, "channel": "h:c", "delta": "xdelta"}))
    assert code == ErrorCode.BAD_REQUEST and "fossil" in message
    assert state.channels == {"h:a", "h:b"}


def test_max_subscribers_is_read_from_the_hub(world: World) -> None:
    world.counts["small:x"] = 1
    outcome = world.send(world.state(), {"op": "subscribe", "id": 1, "channel": "small:x"})
    assert error_of(outcome) == (ErrorCode.LIMIT_EXCEEDED, "channel has too many subscribers")
    world.counts["small:x"] = 0
    assert isinstance(
        world.send(world.state(), {"op": "subscribe", "id": 1, "channel": "small:x"}), Subscribe
    )


def test_a_channel_token_namespace_refuses_a_bad_token_and_counts(world: World) -> None:
    outcome = world.send(world.state(), {"op": "subscribe", "id": 1, "channel": "tok:x"})
    assert error_of(outcome)[0] == ErrorCode.PERMISSION_DENIED
    assert isinstance(outcome, Reply) and outcome.count is Count.AUTH_FAILURES


def test_unsubscribe_of_a_channel_not_subscribed_is_a_plain_ok(world: World) -> None:
    state = world.state()
    plain = world.send(state, {"op": "unsubscribe", "id": 1, "channel": "chat:a"})
    assert isinstance(plain, Reply) and json.loads(plain.payload) == {"id": 1, "ok": True}
    world.send(state, {"op": "subscribe", "id": 2, "channel": "chat:a"})
    outcome = world.send(state, {"op": "unsubscribe", "id": 3, "channel": "chat:a"})
    assert isinstance(outcome, Unsubscribe) and outcome.channel == "chat:a"
    assert state.channels == set()


def test_publish_permissions_data_and_idem(world: World) -> None:
    state = world.state(Identity("bob", None, None, ()))
    outcome = world.send(state, {"op": "publish", "id": 1, "channel": "chat:a", "data": {"x": 1}})
    assert isinstance(outcome, Publish) and json.loads(outcome.data) == {"x": 1}
    assert outcome.idem is None
    assert (
        error_of(world.send(state, {"op": "publish", "id": 2, "channel": "ro:a", "data": 1}))[0]
        == ErrorCode.PERMISSION_DENIED
    )
    assert (
        error_of(
            world.send(state, {"op": "publish", "id": 3, "channel": "chat:#alice", "data": 1})
        )[0]
        == ErrorCode.PERMISSION_DENIED
    )
    assert error_of(world.send(state, {"op": "publish", "id": 4, "channel": "chat:a"})) == (
        ErrorCode.BAD_REQUEST,
        "data is required",
    )
    keyed = world.send(state, {"op": "publish", "id": 5, "channel": "h:a", "data": 1, "idem": "k1"})
    assert isinstance(keyed, Publish) and keyed.idem == "k1"


def test_reads_need_history_or_presence(world: World) -> None:
    state = world.state()
    history = world.send(state, {"op": "history", "id": 1, "channel": "h:a", "limit": 5})
    assert isinstance(history, Read) and history.args["limit"] == 5
    assert error_of(world.send(state, {"op": "history", "id": 2, "channel": "chat:a"}))[0] == (
        ErrorCode.NOT_AVAILABLE
    )
    presence = world.send(state, {"op": "presence_stats", "id": 3, "channel": "h:a"})
    assert isinstance(presence, Read) and presence.op == "presence_stats"
    assert error_of(world.send(state, {"op": "presence", "id": 4, "channel": "chat:a"})) == (
        ErrorCode.NOT_AVAILABLE,
        "presence is off for this namespace",
    )


def test_malformed_input_gets_an_error_or_1007(world: World) -> None:
    state = world.state()
    bad = world.send(state, b"{not json")
    assert error_of(bad)[0] == ErrorCode.BAD_REQUEST
    assert isinstance(bad, Reply) and bad.count is Count.PROTOCOL_ERRORS
    unknown = world.send(state, {"op": "dance", "id": 9})
    assert error_of(unknown) == (ErrorCode.UNKNOWN_OP, "unknown op 'dance'")
    invalid = world.send(state, b'{"op":"ping","id":1,"x":"\xc3\x28"}')
    assert isinstance(invalid, Close) and invalid.code == CloseCode.INVALID_TEXT
    binary = world.sessions.command(state, b"\x00", True, world.now)
    assert error_of(binary)[0] == ErrorCode.BINARY_NOT_SUPPORTED


def test_a_flood_is_refused_then_closed(world: World) -> None:
    state = world.state()
    outcomes = [world.sessions.command(state, b'{"op":"ping","id":1}', False, world.now)]
    outcomes += [
        world.sessions.command(state, b'{"op":"ping","id":1}', False, world.now) for _ in range(7)
    ]
    replies = [o for o in outcomes if isinstance(o, Reply) and o.count is None]
    assert len(replies) == 5  # the burst
    limited = outcomes[5:]
    assert [error_of(o)[0] for o in limited[:2]] == [ErrorCode.TOO_MANY_REQUESTS] * 2
    assert all(o.count is Count.RATE_LIMITED for o in limited)  # type: ignore[union-attr]
    assert isinstance(limited[2], Close) and limited[2].code == CloseCode.TOO_MANY_REQUESTS
    assert limited[2].stop_reading
    world.now += 1.0  # refilled: an accepted command resets the strikes
    assert isinstance(
        world.sessions.command(state, b'{"op":"ping","id":1}', False, world.now), Reply
    )
    assert state.strikes == 0
