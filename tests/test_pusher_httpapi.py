"""shardws.pure.pusher.httpapi: the Pusher HTTP API's decisions, driven by the official
Pusher server SDK (pusher 3.3) through a backend that hands each request to
:func:`decide` instead of a socket, and answers with this module's encoders."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, ClassVar
from urllib.parse import quote

import pusher
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus, PusherForbidden
from pusher.http import Request, process_response

from shardws.config import parse_config
from shardws.pure.pusher.httpapi import (
    ApiError,
    ApiRequest,
    ChannelCounts,
    Event,
    GetChannel,
    GetUsers,
    ListChannels,
    TerminateUser,
    Trigger,
    TriggerBatch,
    decide,
    encode_batch,
    encode_channel,
    encode_channels,
    encode_trigger,
    encode_users,
    max_body_bytes,
)
from shardws.pure.pusher.signatures import sign, string_to_sign

SECRET, OTHER_SECRET = "app-secret-0123456789", "other-secret-0123456789"
CONFIG = parse_config(
    f"""
[[pusher.apps]]
id = "1"
key = "app-key"
secret = "{SECRET}"
max_channels_per_trigger = 3
max_events_per_batch = 2
max_event_data_bytes = 50
max_channel_name_length = 40
[[pusher.apps]]
id = "2"
key = "other-key"
secret = "{OTHER_SECRET}"
[[pusher.apps]]
id = "3"
key = "off-key"
secret = "{SECRET}"
enabled = false
""",
    "t",
).pusher
APP, OTHER, OFF = CONFIG.apps

#: What the fake cluster answers: counts by channel, users of presence channels.
COUNTS = {
    "chat": ChannelCounts(3),
    "presence-room": ChannelCounts(4, 2),
    "presence-empty": ChannelCounts(0, 0),
}
USERS = {"presence-room": ["7", "8"]}


class PureBackend:
    """A pusher SDK backend: ``decide`` instead of HTTP, the encoders for the answer."""

    decisions: ClassVar[list[ApiRequest | ApiError]] = []

    def __init__(self, client: Any, **options: Any) -> None:
        self.client = client

    def send_request(self, request: Request) -> Any:
        decision = decide(request.method, request.signed_path, request.body, CONFIG, time.time())
        self.decisions.append(decision)
        if isinstance(decision, ApiError):
            return process_response(decision.status, decision.body.decode())
        return process_response(200, _answer(decision).decode())


def _answer(decision: ApiRequest) -> bytes:
    if isinstance(decision, Trigger):
        return encode_trigger(decision.event, COUNTS)
    if isinstance(decision, TriggerBatch):
        return encode_batch(decision.events, COUNTS)
    if isinstance(decision, ListChannels):
        return encode_channels(decision, COUNTS)
    if isinstance(decision, GetChannel):
        return encode_channel(decision, COUNTS.get(decision.channel, ChannelCounts(0, 0)))
    if isinstance(decision, TerminateUser):
        return b"{}"
    return encode_users(USERS.get(decision.channel, []))


def _sdk(app_id: str = "1", key: str = "app-key", secret: str = SECRET) -> pusher.Pusher:
    return pusher.Pusher(app_id=app_id, key=key, secret=secret, backend=PureBackend)


@pytest.fixture(autouse=True)
def _fresh_decisions() -> None:
    PureBackend.decisions = []


def _last() -> ApiRequest | ApiError:
    return PureBackend.decisions[-1]


def test_trigger() -> None:
    data = '{"b": 1,  "a": "é"}'
    assert _sdk().trigger(["chat", "private-x"], "my-event", data) == {}
    decision = _last()
    assert isinstance(decision, Trigger) and decision.app is APP
    assert decision.event == Event("my-event", ("chat", "private-x"), data, None, frozenset())
    _sdk().trigger("presence-room", "e", {"n": 1}, socket_id="123.456")
    decision = _last()
    assert isinstance(decision, Trigger)
    assert decision.event.data == '{"n": 1}' and decision.event.exclude == "123.456"


def test_send_to_user_and_terminate_user_connections() -> None:
    """The SDK's ``send_to_user`` triggers on ``#server-to-user-{id}``; its
    ``terminate_user_connections`` posts ``/users/{id}/terminate_connections`` with no
    app id (the signed ``auth_key`` names the app); ``/apps/{id}/...`` works too."""
    _sdk().send_to_user("ann", "note", {"n": 1})
    decision = _last()
    assert isinstance(decision, Trigger) and decision.event.channels == ("#server-to-user-ann",)
    assert _sdk("2", "other-key", OTHER_SECRET).terminate_user_connections("ann") == {}
    assert _last() == TerminateUser(OTHER, "ann")
    client = _sdk()._pusher_client
    request = Request(client, "POST", "/apps/1/users/bob/terminate_connections", {})
    assert client.http.send_request(request) == {}
    assert _last() == TerminateUser(APP, "bob")
    # A wrong secret for a real key; a key no app has; another method; a bad user id.
    forged = Request(
        _sdk(secret=OTHER_SECRET)._pusher_client, "POST", "/users/ann/terminate_connections", {}
    )
    refused = decide("POST", forged.signed_path, forged.body, CONFIG, time.time())
    assert isinstance(refused, ApiError) and refused.status == 401
    unknown = decide("POST", "/users/ann/terminate_connections?auth_key=nope", b"", CONFIG, 0)
    assert isinstance(unknown, ApiError) and unknown.status == 404
    target = "/users/ann/terminate_connections?auth_key=app-key"
    wrong_method = decide("GET", target, b"", CONFIG, 0)
    assert isinstance(wrong_method, ApiError) and wrong_method.status == 405
    bad_user = Request(client, "POST", "/apps/1/users/a%01b/terminate_connections", {})
    assert decide("POST", bad_user.signed_path, bad_user.body, CONFIG, time.time()) == ApiError(
        400, "The user id must be 1-128 characters, none a control one."
    )


def test_trigger_batch() -> None:
    batch = [
        {"channel": "chat", "name": "a", "data": "one"},
        {"channel": "presence-room", "name": "b", "data": {"x": 2}, "socket_id": "1.2"},
    ]
    assert _sdk().trigger_batch(batch) == {}
    decision = _last()
    assert isinstance(decision, TriggerBatch) and decision.app is APP
    assert [e.channels for e in decision.events] == [("chat",), ("presence-room",)]
    assert decision.events[1].exclude == "1.2" and decision.events[1].data == '{"x": 2}'


def test_channel_queries() -> None:
    sdk = _sdk()
    assert sdk.channels_info() == {"channels": {"chat": {}, "presence-room": {}}}
    assert sdk.channels_info("presence-", ["user_count"]) == {
        "channels": {"presence-room": {"user_count": 2}}
    }
    assert sdk.channels_info(attributes=["subscription_count"]) == {
        "channels": {"chat": {"subscription_count": 3}, "presence-room": {"subscription_count": 4}}
    }
    assert sdk.channel_info("presence-room", ["user_count", "subscription_count"]) == {
        "occupied": True,
        "user_count": 2,
        "subscription_count": 4,
    }
    assert sdk.channel_info("nobody") == {"occupied": False}
    assert sdk.channel_info("a;b=c@d,e.f") == {"occupied": False}  # Pusher's odd characters
    decision = _last()
    assert isinstance(decision, GetChannel) and decision.channel == "a;b=c@d,e.f"
    assert sdk.users_info("presence-room") == {"users": [{"id": "7"}, {"id": "8"}]}
    assert isinstance(_last(), GetUsers)


def test_apps_are_isolated() -> None:
    """An app's SDK reaches its own app only: another app's id with this app's secret,
    or this app's id with another key, is refused."""
    _sdk("2", "other-key", OTHER_SECRET).trigger("chat", "e", "d")
    decision = _last()
    assert isinstance(decision, Trigger) and decision.app is OTHER
    with pytest.raises(PusherBadAuth):
        _sdk("2", "app-key", SECRET).trigger("chat", "e", "d")
    with pytest.raises(PusherBadAuth):
        _sdk("1", "app-key", OTHER_SECRET).trigger("chat", "e", "d")
    with pytest.raises(PusherBadAuth, match="Unknown auth_key"):
        _sdk("1", "other-key", OTHER_SECRET).trigger("chat", "e", "d")


def test_sdk_visible_refusals() -> None:
    with pytest.raises(PusherBadStatus, match="404"):
        _sdk("9").trigger("chat", "e", "d")
    with pytest.raises(PusherForbidden):
        _sdk("3", "off-key").trigger("chat", "e", "d")
    with pytest.raises(PusherBadRequest, match="more than 3 channels"):
        _sdk().trigger(["a", "b", "c", "d"], "e", "d")
    with pytest.raises(PusherBadRequest, match="more than 2 messages"):
        _sdk().trigger_batch([{"channel": "a", "name": "e", "data": "d"}] * 3)
    with pytest.raises(PusherBadStatus, match="413"):
        _sdk().trigger("chat", "e", "x" * 51)
    _sdk().trigger("chat", "e", "é" * 25)  # 50 bytes of UTF-8: at the limit
    with pytest.raises(PusherBadStatus, match="413"):
        _sdk().trigger_batch([{"channel": "a", "name": "e", "data": "é" * 26}])
    with pytest.raises(PusherBadRequest, match="presence"):
        _sdk().users_info("chat")
    with pytest.raises(PusherBadRequest, match="presence"):
        _sdk().channel_info("chat", ["user_count"])
    with pytest.raises(PusherBadRequest, match="filter_by_prefix"):
        _sdk().channels_info(attributes=["user_count"])
    with pytest.raises(PusherBadRequest, match="longer than the allowed 40"):
        _sdk().trigger("x" * 41, "e", "d")
    errors = [d for d in PureBackend.decisions if isinstance(d, ApiError)]
    assert all(json.loads(e.body) == {"error": e.message, "code": e.status} for e in errors)


def _signed(method: str, path: str, body: bytes = b"", extra: dict[str, str] | None = None) -> str:
    """A request target signed like the SDKs sign (for bodies the SDK would not send)."""
    params = {
        "auth_key": "app-key",
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        **({"body_md5": hashlib.md5(body).hexdigest()} if body else {}),
        **(extra or {}),
    }
    params["auth_signature"] = sign(SECRET, string_to_sign(method, path, params.items()))
    return path + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def _decide(method: str, path: str, body: object = None, **extra: str) -> ApiRequest | ApiError:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return decide(method, _signed(method, path, raw, extra), raw, CONFIG, time.time())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("POST", "/apps/1/events", b"not json", 400, "not JSON"),
        ("POST", "/apps/1/events", [1], 400, "not a JSON object"),
        ("POST", "/apps/1/events", {"name": "e", "data": "d"}, 400, "channel or channels"),
        ("POST", "/apps/1/events", {"name": "e", "channel": "c"}, 400, "data must be a string"),
        ("POST", "/apps/1/events", {"name": "e", "channel": "c", "data": {}}, 400, "string"),
        ("POST", "/apps/1/events", {"channel": "c", "data": "d"}, 400, "name"),
        ("POST", "/apps/1/events", {"name": "e", "channels": [], "data": "d"}, 400, "list"),
        ("POST", "/apps/1/events", {"name": "e", "channels": [3], "data": "d"}, 400, "string"),
        ("POST", "/apps/1/events", {"name": "e" * 201, "channel": "c", "data": "d"}, 400, "long"),
        (
            "POST",
            "/apps/1/events",
            {"name": "e", "channels": ["a", "private-encrypted-b"], "data": "d"},
            400,
            "encrypted",
        ),
        (
            "POST",
            "/apps/1/events",
            {"name": "e", "channel": "c", "data": "d", "socket_id": "x"},
            400,
            "socket_id",
        ),
        (
            "POST",
            "/apps/1/events",
            {"name": "e", "channel": "c", "data": "d", "info": "nope"},
            400,
            "unknown attribute",
        ),
        ("POST", "/apps/1/batch_events", {"batch": []}, 400, "non-empty"),
        ("POST", "/apps/1/batch_events", {"batch": [1]}, 400, "not an object"),
        ("GET", "/apps/1/channels", None, 400, "unknown attribute"),
        ("GET", "/apps/1/events", None, 405, "not allowed"),
        ("POST", "/apps/1/channels", None, 405, "not allowed"),
        ("GET", "/apps/1/nothing", None, 404, "Not found"),
        ("GET", "/elsewhere", None, 404, "Not found"),
        ("GET", "/apps/1/channels/a/b/c", None, 404, "Not found"),
        ("GET", "/apps/1/channels/bad%20name", None, 400, "only A-Z"),
    ],
)
def test_bad_requests(method: str, path: str, body: object, status: int, text: str) -> None:
    extra = {"info": "bogus"} if path == "/apps/1/channels" else {}
    decision = _decide(method, path, body, **extra)
    assert isinstance(decision, ApiError), decision
    assert decision.status == status and text in decision.message, decision


def test_trigger_info_answers() -> None:
    body = {"name": "e", "channels": ["chat", "presence-room"], "data": "d"}
    decision = _decide("POST", "/apps/1/events", {**body, "info": "subscription_count,user_count"})
    assert isinstance(decision, Trigger)
    assert decision.event.info == {"subscription_count", "user_count"}
    assert json.loads(encode_trigger(decision.event, COUNTS)) == {
        "channels": {
            "chat": {"subscription_count": 3},
            "presence-room": {"subscription_count": 4, "user_count": 2},
        }
    }
    batch = {
        "batch": [
            {"name": "e", "channel": "chat", "data": "d", "info": "subscription_count"},
            {"name": "e", "channel": "presence-room", "data": "d"},
        ]
    }
    decision = _decide("POST", "/apps/1/batch_events", batch)
    assert isinstance(decision, TriggerBatch)
    assert json.loads(encode_batch(decision.events, COUNTS)) == {
        "batch": [{"subscription_count": 3}, {}]
    }


def test_oversized_body_is_refused_before_anything_else() -> None:
    body = b"x" * (max_body_bytes(APP) + 1)
    decision = decide("POST", "/apps/1/events?auth_key=wrong", body, CONFIG, time.time())
    assert isinstance(decision, ApiError) and decision.status == 413


def test_nothing_passes_without_a_valid_signature() -> None:
    body = json.dumps({"name": "e", "channel": "c", "data": "d"}).encode()
    target = _signed("POST", "/apps/1/events", body)
    assert isinstance(decide("POST", target, body, CONFIG, time.time()), Trigger)
    for tampered in (
        target.replace("auth_signature=", "auth_signature=0"),
        target.replace("/apps/1/events", "/apps/1/batch_events"),
        target + "&extra=1",
        target.replace("auth_version=1.0", "auth_version=1.1"),
    ):
        decision = decide("POST", tampered, body, CONFIG, time.time())
        assert isinstance(decision, ApiError) and decision.status == 401, tampered
    stale = decide("POST", target, body, CONFIG, time.time() + 601)
    assert isinstance(stale, ApiError) and stale.status == 401 and "Timestamp" in stale.message
    changed = body.replace(b'"d"', b'"e"')
    decision = decide("POST", target, changed, CONFIG, time.time())
    assert isinstance(decision, ApiError) and decision.status == 401
    broken = decide("POST", "/apps/1/events?a&b", body, CONFIG, time.time())
    assert isinstance(broken, ApiError) and broken.status == 400


@given(
    st.sampled_from(["GET", "POST", "PUT", "get"]),
    st.sampled_from(["/apps/1/events", "/apps/1/channels/x", "/apps/2/batch_events", "/"])
    | st.text(max_size=60),
    st.text(max_size=60),
    st.binary(max_size=100),
)
def test_decide_never_raises(method: str, path: str, query: str, body: bytes) -> None:
    decision = decide(method, path + "?" + query, body, CONFIG, time.time())
    # Unsigned, nothing gets through.
    assert isinstance(decision, ApiError) and 400 <= decision.status < 500


@given(st.text(max_size=40), st.binary(max_size=200))
def test_signed_garbage_is_a_400_never_an_exception(name: str, body: bytes) -> None:
    """Past the signature, any body and channel name is answered, never raised on."""
    for method, path in (("POST", "/apps/1/events"), ("POST", "/apps/1/batch_events")):
        decision = decide(method, _signed(method, path, body), body, CONFIG, time.time())
        assert isinstance(decision, ApiError | Trigger | TriggerBatch)
    decision = _decide("GET", "/apps/1/channels/" + quote(name, safe=""))
    assert isinstance(decision, GetChannel | ApiError)
