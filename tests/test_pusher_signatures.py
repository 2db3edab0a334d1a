"""shardws.pure.pusher.signatures against the official Pusher server SDK (pusher 3.3):
what it signs is accepted, anything tampered is refused."""

from __future__ import annotations

import base64
import json
import time

import pusher
import pytest
from pusher.http import Request

from shardws.pure.pusher.signatures import (
    channel_auth,
    channel_auth_valid,
    check_request,
    sign,
    string_to_sign,
)

APP_ID, KEY, SECRET = "42", "app-key", "app-secret-0123456789"
# The master key only matters to encrypted channels' shared secrets, not to signatures.
SDK = pusher.Pusher(
    app_id=APP_ID, key=KEY, secret=SECRET, encryption_master_key_base64=base64.b64encode(b"m" * 32)
)
SOCKET = "1234.5678"


def _valid(auth: str, channel: str, data: str | None = None, secret: str = SECRET) -> bool:
    return channel_auth_valid(auth, KEY, secret, SOCKET, channel, data)


@pytest.mark.parametrize(
    "channel", ["private-chat", "private-cache-x", "private-encrypted-y", "private-a;b=c@d,e.f"]
)
def test_private_auth_from_the_sdk(channel: str) -> None:
    auth = SDK.authenticate(channel=channel, socket_id=SOCKET)["auth"]
    assert auth == channel_auth(KEY, SECRET, SOCKET, channel, None)
    assert _valid(auth, channel)
    assert not _valid(auth, channel + "x")  # another channel
    assert not channel_auth_valid(auth, KEY, SECRET, "1234.5679", channel, None)  # socket
    assert not _valid(auth, channel, secret=SECRET + "x")  # another app's secret
    assert not channel_auth_valid(auth, "other-key", SECRET, SOCKET, channel, None)
    assert not _valid(auth[:-1] + ("0" if auth[-1] != "0" else "1"), channel)
    assert not _valid(auth.upper(), channel) and not _valid("", channel)


def test_presence_auth_from_the_sdk_covers_channel_data() -> None:
    channel = "presence-room"
    custom = {"user_id": "7", "user_info": {"name": "Ann", "ε": 1}}
    response = SDK.authenticate(channel=channel, socket_id=SOCKET, custom_data=custom)
    auth, data = response["auth"], response["channel_data"]
    assert _valid(auth, channel, data)
    assert auth == channel_auth(KEY, SECRET, SOCKET, channel, data)
    # The exact string is signed: the same JSON spelled otherwise is not accepted.
    assert not _valid(auth, channel, json.dumps(custom, separators=(",", ":")))
    assert not _valid(auth, channel, data.replace('"7"', '"8"'))
    assert not _valid(auth, channel, None)


def test_hostile_auth_values_do_not_raise() -> None:
    for auth in ("\ud800", "é" * 70, "k:" + "z" * 64, ":"):
        assert not _valid(auth, "private-x")
    assert not _valid("k:x", "presence-x", '{"user_id":"\ud800"}')


def _sdk_request(kind: str, *args: object) -> Request:
    """The request the SDK would send (built by its own code, not sent)."""
    method = getattr(SDK._pusher_client, kind)
    request: Request = method.make_request(*args)
    return request


def _check(request: Request, now: float | None = None, **changes: object) -> str | None:
    params = {**request.query_params, **changes}
    refused = check_request(
        request.method,
        request.path,
        [(k, str(v)) for k, v in params.items() if v is not None],
        request.body,
        KEY,
        SECRET,
        time.time() if now is None else now,
        600.0,
    )
    return None if refused is None else refused.reason


REQUESTS = [
    ("trigger", ["chat", "private-b"], "my-event", {"x": 1}, "1.2"),
    ("trigger_batch", [{"channel": "chat", "name": "e", "data": "d"}]),
    ("channels_info", "presence-", ["user_count"]),
    ("channel_info", "presence-a", ["user_count", "subscription_count"]),
    ("users_info", "presence-a"),
]


@pytest.mark.parametrize("call", REQUESTS, ids=lambda c: str(c[0]))
def test_http_signatures_from_the_sdk(call: tuple[object, ...]) -> None:
    request = _sdk_request(str(call[0]), *call[1:])
    assert _check(request) is None
    params = request.query_params
    # The SDK's own signature is HMAC of exactly the string this module builds.
    text = string_to_sign(request.method, request.path, params.items())
    assert sign(SECRET, text) == params["auth_signature"]
    # Tampering with anything signed is refused.
    assert "Invalid signature" in str(_check(request, auth_signature="0" * 64))
    assert "Unknown auth_key" in str(_check(request, auth_key="other"))
    assert "Invalid signature" in str(_check(request, extra="1"))
    assert "Unsupported auth_version" in str(_check(request, auth_version="2.0"))
    assert "Missing auth_signature" in str(_check(request, auth_signature=None))
    assert "Missing auth_timestamp" in str(_check(request, auth_timestamp=None))
    stamp = int(params["auth_timestamp"])
    assert _check(request, now=stamp + 600) is None and _check(request, now=stamp - 600) is None
    assert "Timestamp expired" in str(_check(request, now=stamp + 601))
    assert "Timestamp expired" in str(_check(request, now=stamp - 601))
    assert "integer" in str(_check(request, auth_timestamp="soon"))
    refused = check_request(
        request.method, request.path + "x", list(params.items()), request.body, KEY, SECRET,
        stamp, 600.0,
    )  # fmt: skip
    assert refused is not None and "Invalid signature" in refused.reason
    other = "GET" if request.method == "POST" else "POST"
    refused = check_request(
        other, request.path, list(params.items()), request.body, KEY, SECRET, stamp, 600.0
    )
    assert refused is not None and "Invalid signature" in refused.reason


def test_the_body_is_covered_by_body_md5() -> None:
    request = _sdk_request("trigger", ["chat"], "e", "data", None)
    stamp = int(request.query_params["auth_timestamp"])
    params = list(request.query_params.items())

    def check(body: bytes, query: list[tuple[str, str]]) -> str | None:
        refused = check_request("POST", request.path, query, body, KEY, SECRET, stamp, 600.0)
        return None if refused is None else refused.reason

    assert check(request.body, params) is None
    assert "body_md5 does not match" in str(check(request.body + b" ", params))
    without = [(k, v) for k, v in params if k != "body_md5"]
    assert "Missing body_md5" in str(check(request.body, without))
    # Without a body, body_md5 may be left out (the Python SDK sends the empty body's).
    get = _sdk_request("users_info", "presence-a")
    query = {k: v for k, v in get.query_params.items() if k not in ("body_md5", "auth_signature")}
    query["auth_signature"] = sign(SECRET, string_to_sign("GET", get.path, query.items()))
    assert check_request("GET", get.path, list(query.items()), b"", KEY, SECRET, stamp, 600) is None


def test_duplicate_parameters_are_refused() -> None:
    request = _sdk_request("channels_info", None, [])
    params = [*request.query_params.items(), ("auth_key", KEY)]
    refused = check_request("GET", request.path, params, b"", KEY, SECRET, time.time(), 600.0)
    assert refused is not None and "more than once" in refused.reason


def test_refusals_never_show_the_secret_or_the_expected_signature() -> None:
    request = _sdk_request("users_info", "presence-a")
    reason = str(_check(request, auth_signature="f" * 64))
    expected = request.query_params["auth_signature"]
    assert SECRET not in reason and expected not in reason


def test_sign_is_hex_hmac_sha256() -> None:
    assert sign("key", "The quick brown fox jumps over the lazy dog") == (
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
