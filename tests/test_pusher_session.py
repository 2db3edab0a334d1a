"""shardws.pure.pusher.session: Pusher messages in, outcomes out, without sockets.

Channel auth is produced by the official Pusher server SDK, as an app's auth endpoint
would."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import pusher
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardws.config import PusherAppConfig, parse_config
from shardws.core import TokenBucket
from shardws.pure.protocol import CloseCode
from shardws.pure.pusher.channels import ChannelKind
from shardws.pure.pusher.session import (
    ClientEvent,
    Nothing,
    PresenceMember,
    PusherOutcome,
    PusherSessions,
    PusherSignin,
    PusherSubscribe,
    PusherUnsubscribe,
)
from shardws.pure.pusher.signatures import channel_auth, user_auth
from shardws.pure.session import Close, Count, Reply

SECRET = "app-secret-0123456789"
CONFIG = parse_config(
    f"""
[limits]
commands_per_second = 1000
command_burst = 20
abuse_close_after = 3
subscriptions_per_connection = 4
[[pusher.apps]]
id = "1"
key = "app-key"
secret = "{SECRET}"
client_events = true
max_client_events_per_second = 2
max_event_data_bytes = 100
max_event_name_length = 20
max_channel_name_length = 30
max_presence_info_bytes = 40
[[pusher.apps]]
id = "2"
key = "quiet-key"
secret = "{SECRET}"
""",
    "t",
)
APP, QUIET = CONFIG.pusher.apps
SDK = pusher.Pusher(
    app_id="1",
    key="app-key",
    secret=SECRET,
    encryption_master_key_base64=base64.b64encode(b"m" * 32),
)
SOCKET = "11.22"


@dataclass
class State:
    """A Pusher connection's state, as the worker's connections keep it."""

    app: PusherAppConfig
    socket_id: str
    bucket: TokenBucket
    client_event_bucket: TokenBucket
    channels: dict[str, PresenceMember | None] = field(default_factory=dict)
    strikes: int = 0
    user_id: str = ""


class World:
    def __init__(self) -> None:
        self.sessions = PusherSessions(CONFIG.limits)
        self.now = 1000.0

    def state(self, app: PusherAppConfig = APP) -> State:
        return State(
            app,
            SOCKET,
            self.sessions.new_bucket(self.now),
            self.sessions.new_client_event_bucket(app, self.now),
        )

    def send(
        self, state: State, message: dict[str, object] | bytes, dt: float = 0.1
    ) -> PusherOutcome:
        self.now += dt
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        return self.sessions.command(state, payload, False, self.now)


def _error(outcome: PusherOutcome) -> dict[str, object]:
    assert isinstance(outcome, Reply), outcome
    message = json.loads(outcome.payload)
    assert message["event"] in ("pusher:error", "pusher:subscription_error"), message
    data: dict[str, object] = message["data"]
    return {"event": message["event"], **data}


def _subscribe(channel: str, **data: object) -> dict[str, object]:
    return {"event": "pusher:subscribe", "data": {"channel": channel, **data}}


def test_ping_pong() -> None:
    world = World()
    state = world.state()
    reply = world.send(state, {"event": "pusher:ping", "data": {}})
    assert isinstance(reply, Reply) and json.loads(reply.payload)["event"] == "pusher:pong"
    assert world.send(state, {"event": "pusher:pong", "data": {}}) == Nothing()


def test_public_subscribe_and_unsubscribe() -> None:
    world = World()
    state = world.state()
    outcome = world.send(state, _subscribe("chat"))
    assert isinstance(outcome, PusherSubscribe) and outcome.channel == "chat"
    assert outcome.type.kind is ChannelKind.PUBLIC and outcome.member is None
    assert state.channels == {"chat": None}
    assert isinstance(world.send(state, _subscribe("chat")), Nothing)  # already subscribed
    assert world.send(state, {"event": "pusher:unsubscribe", "data": {"channel": "chat"}}) == (
        PusherUnsubscribe("chat", None)
    )
    assert state.channels == {}
    assert world.send(state, {"event": "pusher:unsubscribe", "data": {"channel": "chat"}}) == (
        Nothing()
    )


def test_cache_channels_say_so() -> None:
    world = World()
    outcome = world.send(world.state(), _subscribe("cache-price"))
    assert isinstance(outcome, PusherSubscribe) and outcome.type.cache


@pytest.mark.parametrize("channel", ["private-x", "private-cache-x", "private-encrypted-x"])
def test_private_channels_need_the_apps_signature(channel: str) -> None:
    world = World()
    state = world.state()
    auth = SDK.authenticate(channel=channel, socket_id=SOCKET)["auth"]
    other_socket = SDK.authenticate(channel=channel, socket_id="11.23")["auth"]
    for bad in (None, other_socket, "app-key:" + "0" * 64, auth + "0"):
        data = {} if bad is None else {"auth": bad}
        outcome = world.send(state, _subscribe(channel, **data))
        assert _error(outcome) == {
            "event": "pusher:subscription_error",
            "type": "AuthError",
            "error": "Invalid signature: the connection is unauthorized",
            "status": 401,
        }
        assert isinstance(outcome, Reply) and outcome.count is Count.AUTH_FAILURES
    assert state.channels == {}
    outcome = world.send(state, _subscribe(channel, auth=auth))
    assert isinstance(outcome, PusherSubscribe) and outcome.type.needs_auth
    # Another app's connection cannot use this app's signature.
    quiet = world.state(QUIET)
    assert isinstance(world.send(quiet, _subscribe(channel, auth=auth)), Reply)


def test_presence_members_come_from_signed_channel_data() -> None:
    world = World()
    state = world.state()
    channel = "presence-room"
    signed = SDK.authenticate(
        channel=channel, socket_id=SOCKET, custom_data={"user_id": "7", "user_info": {"n": 1}}
    )
    outcome = world.send(
        state, _subscribe(channel, auth=signed["auth"], channel_data=signed["channel_data"])
    )
    assert isinstance(outcome, PusherSubscribe)
    assert outcome.member == PresenceMember("7", b'{"n":1}')
    assert state.channels[channel] == outcome.member
    left = world.send(state, {"event": "pusher:unsubscribe", "data": {"channel": channel}})
    assert left == PusherUnsubscribe(channel, PresenceMember("7", b'{"n":1}'))
    # A numeric user id (some SDKs send one) becomes its string; no user_info is None.
    numeric = SDK.authenticate(channel=channel, socket_id=SOCKET, custom_data={"user_id": 8})
    outcome = world.send(
        state, _subscribe(channel, auth=numeric["auth"], channel_data=numeric["channel_data"])
    )
    assert isinstance(outcome, PusherSubscribe) and outcome.member == PresenceMember("8", None)


def test_presence_refusals() -> None:
    world = World()
    state = world.state()
    channel = "presence-room"
    signed = SDK.authenticate(channel=channel, socket_id=SOCKET, custom_data={"user_id": "7"})
    # channel_data missing: malformed input, a pusher:error without a code.
    error = _error(world.send(state, _subscribe(channel, auth=signed["auth"])))
    assert error["event"] == "pusher:error" and error["code"] is None
    assert "channel_data" in str(error["message"])
    # channel_data other than the signed one: an auth error.
    forged = json.dumps({"user_id": "admin"})
    error = _error(world.send(state, _subscribe(channel, auth=signed["auth"], channel_data=forged)))
    assert error["type"] == "AuthError"

    def signed_subscribe(custom: object) -> PusherOutcome:
        # Signed by hand: the SDK refuses to sign these, a custom auth endpoint may not.
        data = json.dumps(custom)
        auth = channel_auth("app-key", SECRET, SOCKET, channel, data)
        return world.send(state, _subscribe(channel, auth=auth, channel_data=data))

    for custom in ([1], {"user_id": ""}, {"user_id": "x" * 129}, {"user_id": True}, {}):
        error = _error(signed_subscribe(custom))
        assert error["event"] == "pusher:error" and error["code"] is None, custom
    error = _error(signed_subscribe({"user_id": "7", "user_info": {"bio": "x" * 40}}))
    assert error["event"] == "pusher:subscription_error" and error["type"] == "LimitReached"
    assert error["status"] == 4301
    assert isinstance(signed_subscribe({"user_id": "x" * 128}), PusherSubscribe)
    assert list(state.channels) == [channel]


def test_channel_name_and_count_limits() -> None:
    world = World()
    state = world.state()
    long = "x" * 31  # the app allows 30
    error = _error(world.send(state, _subscribe(long)))
    assert error["event"] == "pusher:subscription_error" and error["type"] == "LimitReached"
    assert error["status"] == 4009 and "30 characters" in str(error["error"])
    error = _error(world.send(state, _subscribe("bad name")))
    assert error["event"] == "pusher:subscription_error" and error["status"] == 4009
    for i in range(4):
        assert isinstance(world.send(state, _subscribe(f"c{i}")), PusherSubscribe)
    error = _error(world.send(state, _subscribe("c4")))
    assert error["type"] == "LimitReached" and error["status"] == 4100
    assert len(state.channels) == 4


def _presence_state(world: World, user_id: str = "7") -> State:
    state = world.state()
    signed = SDK.authenticate(
        channel="presence-r", socket_id=SOCKET, custom_data={"user_id": user_id}
    )
    subscribe = _subscribe("presence-r", auth=signed["auth"], channel_data=signed["channel_data"])
    assert isinstance(world.send(state, subscribe), PusherSubscribe)
    auth = SDK.authenticate(channel="private-x", socket_id=SOCKET)["auth"]
    assert isinstance(world.send(state, _subscribe("private-x", auth=auth)), PusherSubscribe)
    assert isinstance(world.send(state, _subscribe("chat")), PusherSubscribe)
    return state


def _client_event(
    channel: str, event: str = "client-typing", data: object = None
) -> dict[str, object]:
    return {"event": event, "channel": channel, "data": {"a": 1} if data is None else data}


def test_client_events() -> None:
    world = World()
    state = _presence_state(world)
    outcome = world.send(state, _client_event("private-x"), dt=1)
    assert outcome == ClientEvent("private-x", "client-typing", b'{"a":1}', None, SOCKET)
    # On a presence channel the sender's user id goes with the event.
    outcome = world.send(state, _client_event("presence-r"), dt=1)
    assert outcome == ClientEvent("presence-r", "client-typing", b'{"a":1}', "7", SOCKET)


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        (_client_event("chat"), 4009, "only allowed on private and presence"),
        (_client_event("private-encrypted-x"), 4009, "only allowed on private and presence"),
        (_client_event("bad name"), 4009, "only allowed on private and presence"),
        (_client_event("private-other"), 4009, "not a member"),
        (_client_event("private-x", event="client-" + "x" * 14), 4301, "Event name is too long"),
        (_client_event("private-x", data="x" * 99), 4301, "at most 100 bytes"),
    ],
)
def test_client_event_refusals(message: dict[str, object], code: int, text: str) -> None:
    world = World()
    state = _presence_state(world)
    error = _error(world.send(state, message, dt=1))
    assert error["event"] == "pusher:error" and error["code"] == code
    assert text in str(error["message"])


def test_client_events_need_the_apps_switch() -> None:
    world = World()
    state = world.state(QUIET)
    error = _error(world.send(state, _client_event("private-x")))
    assert error == {
        "event": "pusher:error",
        "code": 4301,
        "message": "The app does not have client messaging enabled.",
    }


def test_client_event_rate_limit() -> None:
    world = World()
    state = _presence_state(world)
    outcomes = [world.send(state, _client_event("private-x"), dt=0.01) for _ in range(3)]
    assert [type(o) for o in outcomes] == [ClientEvent, ClientEvent, Reply]
    error = _error(outcomes[2])
    assert error["code"] == 4301 and "rate limit" in str(error["message"])
    assert isinstance(outcomes[2], Reply) and outcomes[2].count is Count.RATE_LIMITED
    # The bucket refills at max_client_events_per_second.
    assert isinstance(world.send(state, _client_event("private-x"), dt=0.5), ClientEvent)


def test_bad_input() -> None:
    world = World()
    state = world.state()
    for payload in (b"nope", b"[]", b'{"event":"pusher:subscribe","data":{}}'):
        outcome = world.send(state, payload)
        error = _error(outcome)
        assert error["event"] == "pusher:error" and error["code"] is None
        assert isinstance(outcome, Reply) and outcome.count is Count.PROTOCOL_ERRORS
    outcome = world.sessions.command(state, b"{}", True, world.now)
    assert "Binary" in str(_error(outcome)["message"])
    close = world.send(state, b'{"event":"\xff"}')
    assert isinstance(close, Close) and close.code == CloseCode.INVALID_TEXT
    # Events the session does not serve are ignored, with a log line.
    ignored = world.send(state, {"event": "pusher:other", "data": {}})
    assert isinstance(ignored, Nothing) and ignored.log is not None and "other" in ignored.log
    assert _error(world.send(state, {"event": "pusher:signin", "data": {}}))["code"] is None


def _signin(signed: dict[str, str]) -> dict[str, object]:
    return {"event": "pusher:signin", "data": signed}


def test_signin_with_the_sdks_signature_then_the_users_channel_only() -> None:
    """``pusher:signin`` signed by the official SDK's ``authenticate_user``: the user is
    recorded, and only its own ``#server-to-user-`` channel may be subscribed."""
    world = World()
    state = world.state()
    denied = _error(world.send(state, _subscribe("#server-to-user-ann")))
    assert (denied["type"], denied["status"]) == ("AuthError", 401)
    signed = SDK.authenticate_user(SOCKET, {"id": "ann", "name": "Ann"})
    outcome = world.send(state, _signin(signed))
    assert outcome == PusherSignin("ann", signed["user_data"]) and state.user_id == "ann"
    assert _error(world.send(state, _signin(signed)))["code"] is None  # once
    subscribe = world.send(state, _subscribe("#server-to-user-ann"))
    assert isinstance(subscribe, PusherSubscribe) and subscribe.type.kind is ChannelKind.USER
    denied = _error(world.send(state, _subscribe("#server-to-user-bob")))
    assert (denied["type"], denied["status"]) == ("AuthError", 401)


@pytest.mark.parametrize(
    "signed",
    [
        {**SDK.authenticate_user(SOCKET, {"id": "ann"}), "auth": "app-key:00"},
        SDK.authenticate_user("1.2", {"id": "ann"}),  # another connection's
        # Signed right (the SDK refuses to sign these), but no acceptable id.
        *(
            {"auth": user_auth("app-key", SECRET, SOCKET, data), "user_data": data}
            for data in ('{"id":""}', json.dumps({"id": "a" * 129}), '{"id":"bad\\u0001"}', "[]")
        ),
    ],
)
def test_a_bad_signin_closes_with_unauthorized(signed: dict[str, str]) -> None:
    world = World()
    state = world.state()
    close = world.send(state, _signin(signed))
    assert isinstance(close, Close) and close.code == CloseCode.UNAUTHORIZED
    assert close.count is Count.AUTH_FAILURES and state.user_id == ""


def test_a_flood_is_refused_then_closed() -> None:
    world = World()
    state = world.state()
    ping = {"event": "pusher:ping", "data": {}}
    for _ in range(20):  # the burst
        assert isinstance(world.send(state, ping, dt=0), Reply)
    outcomes = [world.send(state, ping, dt=0) for _ in range(3)]
    assert [_error(o)["message"] for o in outcomes[:2]] == ["Too many messages"] * 2
    close = outcomes[2]
    assert isinstance(close, Close) and close.code == CloseCode.TOO_MANY_REQUESTS
    assert close.stop_reading and close.count is Count.RATE_LIMITED


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_EVENTS = st.sampled_from(
    ["pusher:ping", "pusher:pong", "pusher:subscribe", "pusher:unsubscribe", "client-x", "x"]
)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.fixed_dictionaries(
            {"event": _EVENTS},
            optional={
                "channel": st.sampled_from(["private-x", "presence-r", "chat"]) | st.text(),
                "data": _JSON
                | st.fixed_dictionaries(
                    {"channel": st.sampled_from(["private-x", "presence-r", "chat", ""])},
                    optional={"auth": _JSON, "channel_data": _JSON},
                ),
            },
        ).map(lambda m: json.dumps(m).encode()),
    ),
    st.booleans(),
)
def test_any_message_gets_one_outcome(payload: bytes, binary: bool) -> None:
    """Hostile input never raises, and only a subscribe adds a channel."""
    world = World()
    state = _presence_state(world)
    before = dict(state.channels)
    outcome = world.sessions.command(state, payload, binary, world.now + 1)
    assert isinstance(
        outcome, Reply | Close | PusherSubscribe | PusherUnsubscribe | ClientEvent | Nothing
    )
    if not isinstance(outcome, PusherSubscribe | PusherUnsubscribe):
        assert state.channels == before
