"""Pusher signatures: channel auth and HTTP API requests (no I/O).

Both are lowercase hex HMAC-SHA256 with the app secret ("Authentication and
authorization signatures" and "HTTP API reference" of the Pusher docs; pusher-http-python
``signature.sign``, ``Request._generate_auth``, ``AuthenticationClient.authenticate``):

* channel auth: ``auth = key + ":" + hmac(secret, socket_id + ":" + channel)``, with
  ``":" + channel_data`` appended for presence channels;
* HTTP API: ``auth_signature = hmac(secret, METHOD + "\\n" + path + "\\n" + query)``
  where ``query`` is every parameter but ``auth_signature``, keys lowercased, sorted by
  key, joined as ``key=value`` with ``&`` and not URL-escaped.

Guarantees: every comparison of a signature is constant-time in its content
(``hmac.compare_digest``); nothing here raises on hostile input; a refusal's reason
quotes only what the client sent, never the secret or the expected signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass


def sign(secret: str, text: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``text`` with ``secret`` (both UTF-8)."""
    # surrogatepass: a lone surrogate (JSON allows "\ud800") must not raise; no real
    # signer produced it, so the signature simply will not match.
    data = text.encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def channel_auth(key: str, secret: str, socket_id: str, channel: str, data: str | None) -> str:
    """The ``auth`` value that lets ``socket_id`` subscribe to ``channel`` (``data``: the
    presence ``channel_data`` string, None otherwise)."""
    text = f"{socket_id}:{channel}" if data is None else f"{socket_id}:{channel}:{data}"
    return f"{key}:{sign(secret, text)}"


def channel_auth_valid(
    auth: str, key: str, secret: str, socket_id: str, channel: str, data: str | None
) -> bool:
    """Whether ``auth`` is the app's signature for this subscription."""
    expected = channel_auth(key, secret, socket_id, channel, data)
    # Compared as bytes: compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(auth.encode("utf-8", "surrogatepass"), expected.encode())


#: The one ``auth_version`` of Pusher's HTTP API.
AUTH_VERSION = "1.0"


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """A ``pusher:signin``'s ``auth``: ``key:hmac(secret, socket_id + "::user::" +
    user_data)`` (the server SDKs' ``authenticate_user``)."""
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def user_auth_valid(auth: str, key: str, secret: str, socket_id: str, user_data: str) -> bool:
    """Whether ``auth`` signs ``user_data`` for ``socket_id`` (constant time)."""
    expected = user_auth(key, secret, socket_id, user_data)
    return hmac.compare_digest(auth.encode("utf-8", "surrogatepass"), expected.encode())


def string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """What an HTTP API request's ``auth_signature`` signs: ``params`` are the decoded
    query parameters (``auth_signature`` is left out here)."""
    pairs = sorted((k.lower(), v) for k, v in params if k.lower() != "auth_signature")
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method.upper()}\n{path}\n{query}"


@dataclass(frozen=True, slots=True)
class SignatureRefused:
    """Why a request's signature is refused (HTTP 401); safe to send back."""

    reason: str


def check_request(
    method: str,
    path: str,
    params: list[tuple[str, str]],
    body: bytes,
    key: str,
    secret: str,
    now: float,
    window: float,
) -> SignatureRefused | None:
    """None if the request is signed by the app (key ``key``, secret ``secret``) within
    ``window`` seconds of ``now`` (unix seconds), else why not.

    ``path`` is the request path as sent (the SDKs sign what they send), ``params`` the
    decoded query parameters; a parameter given twice is refused, since a signer and a
    reader could pick different values. ``body_md5`` must be the MD5 of ``body`` when
    the body is not empty, and when given at all.
    """
    values: dict[str, str] = {}
    for name, value in params:
        if name.lower() in values:
            return SignatureRefused(f"Parameter {name} given more than once")
        values[name.lower()] = value
    for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature"):
        if name not in values:
            return SignatureRefused(f"Missing {name}")
    if not hmac.compare_digest(values["auth_key"].encode(), key.encode()):
        return SignatureRefused("Unknown auth_key")
    if values["auth_version"] != AUTH_VERSION:
        return SignatureRefused(f"Unsupported auth_version (only {AUTH_VERSION})")
    try:
        timestamp = int(values["auth_timestamp"])
    except ValueError:
        return SignatureRefused("auth_timestamp must be an integer (unix seconds)")
    if abs(now - timestamp) > window:
        return SignatureRefused(
            f"Timestamp expired: Given timestamp ({timestamp}) not within"
            f" {window:g}s of server time ({int(now)})"
        )
    md5 = values.get("body_md5")
    if body and md5 is None:
        return SignatureRefused("Missing body_md5")
    if md5 is not None and not hmac.compare_digest(
        md5.encode(), hashlib.md5(body).hexdigest().encode()
    ):
        return SignatureRefused("body_md5 does not match the body")
    text = string_to_sign(method, path, params)
    if not hmac.compare_digest(values["auth_signature"].encode(), sign(secret, text).encode()):
        # Pusher's wording: it names the string to sign (the client's own data), never
        # the expected signature.
        return SignatureRefused(
            f"Invalid signature: you should have sent HmacSHA256Hex({text!r}, your_secret_key)"
        )
    return None
