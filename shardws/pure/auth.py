"""Tokens and permissions: who a connection is, and which channels it may read.

No I/O happens here: the worker hands in token strings and channel names and gets back an
:class:`Identity`, a reason, or an :class:`AuthFailure`. Keys come from the loaded
:class:`~shardws.config.AuthConfig` (``config.py`` reads the files).

Guarantees:

* A token is accepted only if its signature verifies with the configured key under the
  one configured algorithm (``[auth] algorithm``); ``alg: none``, any other algorithm and
  HS256 signed with an RS/ES public key (key confusion) are rejected.
* Every token must carry a non-empty string ``sub`` and a numeric ``exp``; ``exp`` and
  ``nbf`` are checked against ``now`` with ``[auth] leeway`` seconds of clock skew;
  ``aud``/``iss`` are checked as documented on :class:`~shardws.config.AuthConfig`.
* For any input string, the verifying methods return or raise :class:`AuthFailure`
  (``TokenExpired`` included) -- never another exception.
* ``AuthFailure.reason`` is a fixed phrase, safe to send to the client: it never contains
  the token, a claim value or the key. Nothing here logs.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt

from shardws.config import AuthConfig

__all__ = [
    "ANONYMOUS",
    "MAX_TOKEN_LENGTH",
    "AuthFailure",
    "Authenticator",
    "Identity",
    "TokenExpired",
    "channel_pattern_error",
    "constant_time_equal",
    "make_token",
    "may_subscribe",
    "user_id_error",
    "user_only_members",
]

#: Longest token looked at, characters. Anything longer is refused before decoding, so
#: a hostile client cannot make the server base64-decode and parse megabytes.
MAX_TOKEN_LENGTH = 16384

#: Longest ``sub`` accepted: user ids travel in bus topics and channel names.
MAX_USER_LENGTH = 255

# A pattern is a channel name in which "*" may also appear (protocol.py's channel charset).
_PATTERN_RE = re.compile(r"[A-Za-z0-9_\-.:@#=/+!$~*]{1,255}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class AuthFailure(Exception):
    """A token or a permission was refused. ``reason`` (also ``str(exc)``) is a fixed
    phrase safe to send to the client: never the token, a claim value or a key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(AuthFailure):
    """The token's ``exp`` (plus leeway) has passed: the client should get a new token
    (``refresh``), not retry the same one."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is, from a verified token (or :data:`ANONYMOUS`)."""

    #: The JWT ``sub``; ``""`` for anonymous connections.
    user: str
    #: The JWT ``exp`` in unix seconds; None for anonymous connections (no expiry).
    expires_at: float | None
    #: The ``info`` claim (a JSON object) re-encoded once as compact UTF-8 JSON, to be
    #: embedded as is in presence replies; None when the token has none.
    info: bytes | None
    #: The ``channels`` claim: patterns ("*" matches any run of characters) of the
    #: channels this token may subscribe to; empty = no restriction from the token.
    channels: tuple[str, ...]


ANONYMOUS = Identity("", None, None, ())


class Authenticator:
    """Verifies connection, refresh and channel tokens against one :class:`AuthConfig`.

    Build one per worker (the key is parsed once); its methods are pure functions of
    their arguments and the clock, safe to call from the event loop (one HS256 check
    costs tens of microseconds).
    """

    __slots__ = ("_algorithm", "_anonymous", "_audience", "_issuer", "_key", "_leeway")

    def __init__(self, auth: AuthConfig) -> None:
        """Prepare the verifier. Raises ``ValueError`` if the configured key is unusable
        (a config from :func:`~shardws.config.load_config` never is)."""
        self._algorithm = auth.algorithm
        self._anonymous = auth.anonymous
        self._leeway = auth.leeway
        self._audience = auth.audience or None
        self._issuer = auth.issuer or None
        material = auth.verification_key()
        self._key: Any = None  # None: no key configured, every token is refused
        if material:
            try:
                # Parsed once here instead of on every decode; for HS256 this also
                # refuses a secret that is really a PEM key (key-confusion guard).
                self._key = jwt.get_algorithm_by_name(auth.algorithm).prepare_key(material)
            except (jwt.PyJWTError, ValueError, TypeError) as err:
                # The type only: the library's message could quote the key.
                raise ValueError(
                    f"[auth] key unusable with {auth.algorithm}: {type(err).__name__}"
                ) from None

    def connection(self, token: str | None, now: float | None = None) -> Identity:
        """The identity of a new connection presenting ``token`` (None or ``""``: none).
        A token carrying a ``channel`` claim (a channel token) is refused here.

        Without a token: :data:`ANONYMOUS` if ``[auth] anonymous``, else
        ``AuthFailure("token required")``. With one: the verified identity, or
        :class:`TokenExpired` / :class:`AuthFailure`. A token is verified even when
        anonymous access is allowed: a bad token is never silently downgraded.
        """
        if not token:
            if self._anonymous:
                return ANONYMOUS
            raise AuthFailure("token required")
        return self._identity(self._claims(token, now))

    def refresh(self, identity: Identity, token: str, now: float | None = None) -> Identity:
        """The connection's identity after a ``refresh`` with ``token``: verified like a
        connection token, and its ``sub`` must be ``identity.user`` (so a refresh never
        changes who the connection is; an anonymous connection cannot refresh)."""
        new = self._identity(self._claims(token, now))
        if not identity.user or new.user != identity.user:
            raise AuthFailure("token is for another user")
        return new

    def channel_token(
        self, token: str, identity: Identity, channel: str, now: float | None = None
    ) -> None:
        """Return if ``token`` is a valid channel token for ``identity`` and ``channel``:
        signed like connection tokens, unexpired, ``sub`` == ``identity.user`` and
        ``channel`` == ``channel``; raise :class:`AuthFailure` otherwise. Anonymous
        connections cannot hold channel tokens (``sub`` must be non-empty)."""
        claims = self._claims(token, now)
        if not identity.user or claims["sub"] != identity.user:
            raise AuthFailure("channel token is for another user")
        if claims.get("channel") != channel:
            raise AuthFailure("channel token is for another channel")

    # ------------------------------------------------------------------ internals

    def _claims(self, token: str, now: float | None) -> dict[str, Any]:
        """Verified claims of ``token`` with valid ``sub``, ``exp`` and ``nbf``."""
        if not isinstance(token, str) or not token:
            raise AuthFailure("token required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthFailure("token too long")
        if self._key is None:
            raise AuthFailure("tokens are not accepted by this server")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],  # exactly one: no "none", no alg confusion
                audience=self._audience,
                issuer=self._issuer,
                # Time claims and sub are checked below: against the caller's ``now``,
                # and the same way whatever the PyJWT version.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthFailure("invalid token signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthFailure("token algorithm not allowed") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("invalid token audience") from None
        except jwt.InvalidIssuerError:
            raise AuthFailure("invalid token issuer") from None
        except jwt.MissingRequiredClaimError:  # aud or iss required by the config
            raise AuthFailure("token lacks a required claim (aud or iss)") from None
        except Exception:
            # Anything else the library raises on hostile input (bad base64, bad JSON,
            # wrong segment count, a header of the wrong type, ...) is a malformed token;
            # its message is not passed on because it may quote the input.
            raise AuthFailure("malformed token") from None
        if not isinstance(claims, dict):
            raise AuthFailure("malformed token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthFailure("token has no sub claim")
        if user_id_error(sub) is not None:
            raise AuthFailure("token sub is not a valid user id")
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise AuthFailure("token has no exp claim")
        current = time.time() if now is None else now
        # RFC 7519 4.1.4: reject when the current time is on or after exp (+ leeway).
        if current >= exp + self._leeway:
            raise TokenExpired("token expired")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and current + self._leeway < nbf:
            raise AuthFailure("token not yet valid")
        return claims

    @staticmethod
    def _identity(claims: Mapping[str, Any]) -> Identity:
        """The identity a connection or refresh token grants."""
        if "channel" in claims:
            # Token kinds stay apart: a channel token, handed out to let a user read one
            # channel, must not double as a login.
            raise AuthFailure("a channel token is not a connection token")
        info = claims.get("info")
        encoded: bytes | None = None
        if info is not None:
            if not isinstance(info, dict):
                raise AuthFailure("token info claim must be an object")
            try:
                # allow_nan=False: Python's JSON parser accepts NaN, JSON clients do not.
                encoded = json.dumps(
                    info, separators=(",", ":"), ensure_ascii=False, allow_nan=False
                ).encode()
            except ValueError:
                raise AuthFailure("token info claim is not valid JSON") from None
        channels = claims.get("channels")
        if channels is None:
            channels = []
        if not isinstance(channels, list) or any(
            not isinstance(p, str) or channel_pattern_error(p) for p in channels
        ):
            raise AuthFailure("token channels claim must be a list of channel patterns")
        exp = _numeric_date(claims, "exp")
        return Identity(claims["sub"], exp, encoded, tuple(channels))


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """The claim as unix seconds, None if absent; AuthFailure if not a finite number."""
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python, but "exp": true is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"token {name} claim must be a number")
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        raise AuthFailure(f"token {name} claim must be a number") from None
    if not math.isfinite(result):
        raise AuthFailure(f"token {name} claim must be a number")
    return result


# ---------------------------------------------------------------------- permissions


def user_id_error(user: object) -> str | None:
    """Why ``user`` is not an acceptable user id (a token's ``sub``, the target of a
    user-targeted message), or None if it is: a non-empty string of at most
    ``MAX_USER_LENGTH`` characters without control characters (user ids travel in
    NUL-terminated bus topics)."""
    if not isinstance(user, str) or not user:
        return "user must be a non-empty string"
    if len(user) > MAX_USER_LENGTH:
        return f"user is longer than {MAX_USER_LENGTH} characters"
    if _CONTROL_RE.search(user):
        return "user must not contain control characters"
    try:
        user.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON "\\ud800"
        return "user must be valid Unicode text"
    return None


def user_only_members(channel: str) -> tuple[str, ...] | None:
    """The users a user-only channel is for, or None if ``channel`` is not user-only.

    A channel is user-only when the part after the namespace (after the first ``:``;
    the whole name if there is none) contains ``#``; its users are the comma-separated
    names after that ``#``: ``chat:#alice`` -> ``("alice",)``, ``chat:room#alice,bob`` ->
    ``("alice", "bob")``. Empty names are dropped, so ``chat:#`` is for nobody.
    """
    rest = channel.partition(":")[2] if ":" in channel else channel
    marker = rest.find("#")
    if marker < 0:
        return None
    return tuple(name for name in rest[marker + 1 :].split(",") if name)


def may_subscribe(identity: Identity, channel: str, *, token_checked: bool = False) -> str | None:
    """None if ``identity`` may subscribe to ``channel``, else the reason (for the
    client, error 103). ``channel`` must already be a valid channel name.

    Rules, all of which must pass:

    * user-only channels (see :func:`user_only_members`) only for their users; never for
      anonymous connections;
    * if ``identity.channels`` is non-empty, ``channel`` must match one of its patterns,
      unless ``token_checked`` -- the caller verified a channel token for it (namespaces
      with ``subscribe_token``), which is the more specific grant.

    Namespace rules (configured namespace, ``subscribe_token``) are the caller's.
    """
    members = user_only_members(channel)
    if members is not None and (not identity.user or identity.user not in members):
        return f"channel {channel} is only for its users"
    if (
        identity.channels
        and not token_checked
        and not any(_pattern_regex(p).fullmatch(channel) for p in identity.channels)
    ):
        return f"token does not allow channel {channel}"
    return None


def channel_pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid ``channels`` entry, or None: a channel name in
    which ``*`` (any run of characters, ``:`` and ``#`` included) may appear."""
    if _PATTERN_RE.fullmatch(pattern) is None:
        return "a channel pattern is 1-255 characters of A-Z a-z 0-9 _ - . : @ # = / + ! $ ~ *"
    return None


@lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Only "*" is magic; fnmatch's "?" and "[...]" are not, and "?" / "[" cannot occur in
    # channel names anyway. Cached: the same few patterns recur on every subscribe.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


# ---------------------------------------------------------------------- issuing, comparing


def make_token(
    secret_or_private_key: str,
    sub: str,
    ttl: float,
    *,
    algorithm: str = "HS256",
    info: object = None,
    channels: Sequence[str] = (),
    channel: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT for ``sub`` valid for ``ttl`` seconds (for ``shardws token`` and
    tests). Claims: ``sub``, ``iat``, ``exp`` (integers), plus ``info`` if not None,
    ``channels`` if non-empty and ``channel`` (a channel token) if given.

    ``secret_or_private_key``: the HS256 secret, or the PEM private key for RS256/ES256.
    Raises ``ValueError`` for an empty ``sub``, a ``ttl`` <= 0 or an invalid pattern.
    """
    if not sub:
        raise ValueError("sub must not be empty")
    if not ttl > 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
    for pattern in channels:
        reason = channel_pattern_error(pattern)
        if reason:
            raise ValueError(f"invalid channels pattern {pattern!r}: {reason}")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "iat": int(issued), "exp": int(issued + ttl)}
    if info is not None:
        claims["info"] = info
    if channels:
        claims["channels"] = list(channels)
    if channel is not None:
        claims["channel"] = channel
    return jwt.encode(claims, secret_or_private_key, algorithm=algorithm)


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """``a == b`` in time independent of where they differ (for API keys and secrets).
    Strings are compared as UTF-8; the length may still leak, the content does not."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)
