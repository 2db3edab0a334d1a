"""shardws.pure.auth: token verification, refresh, channel tokens, permissions, `shardws token`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from serverproc import run_cli

from shardws.config import AuthConfig, parse_config
from shardws.pure.auth import (
    ANONYMOUS,
    MAX_TOKEN_LENGTH,
    Authenticator,
    AuthFailure,
    Identity,
    TokenExpired,
    constant_time_equal,
    make_token,
    may_subscribe,
    user_only_members,
)

SECRET = "test-secret-0123456789-abcdefghijklmnop"  # >= 32 bytes
NOW = 1_700_000_000.0


def hs(**overrides: Any) -> Authenticator:
    return Authenticator(AuthConfig(secret=SECRET, **overrides))


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(NOW) + 60, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(auth: Authenticator, text: str | None, reason: str | None = None) -> AuthFailure:
    with pytest.raises(AuthFailure) as info:
        auth.connection(text, now=NOW)
    err = info.value
    if reason is not None:
        assert err.reason == reason
    assert str(err) == err.reason
    # The reason goes to the client: never the token or the key.
    for secret in (SECRET, text or "\x00"):
        assert secret not in str(err) and secret not in repr(err)
    return err


# ------------------------------------------------------------------ connection tokens


def test_valid_hs256_token_gives_identity() -> None:
    text = token(claims(info={"name": "Alice", "n": [1, 2.5]}, channels=["news:*", "x"]))
    identity = hs().connection(text, now=NOW)
    assert identity == Identity("alice", NOW + 60, b'{"name":"Alice","n":[1,2.5]}', ("news:*", "x"))


def test_minimal_token_has_no_info_and_no_channels() -> None:
    identity = hs().connection(token(claims()), now=NOW)
    assert identity == Identity("alice", NOW + 60, None, ())


def test_info_is_reencoded_compact_utf8() -> None:
    identity = hs().connection(token(claims(info={"név": "Ádám", "a": {"b": None}})), now=NOW)
    assert identity.info == '{"név":"Ádám","a":{"b":null}}'.encode()


def test_anonymous_allowed() -> None:
    auth = hs()
    assert auth.connection(None, now=NOW) is ANONYMOUS
    assert auth.connection("", now=NOW) is ANONYMOUS
    assert Identity("", None, None, ()) == ANONYMOUS


def test_anonymous_refused() -> None:
    auth = hs(anonymous=False)
    refused(auth, None, "token required")
    refused(auth, "", "token required")
    assert auth.connection(token(claims()), now=NOW).user == "alice"


def test_bad_token_is_refused_even_when_anonymous_is_allowed() -> None:
    refused(hs(), "garbage", "malformed token")


def test_expiry_and_leeway() -> None:
    auth = hs(leeway=5.0)
    text = token(claims())  # exp = NOW + 60
    assert auth.connection(text, now=NOW + 64.9).user == "alice"  # within the leeway
    with pytest.raises(TokenExpired) as info:
        auth.connection(text, now=NOW + 65)
    assert info.value.reason == "token expired"
    assert isinstance(info.value, AuthFailure)
    with pytest.raises(TokenExpired):
        hs(leeway=0.0).connection(text, now=NOW + 60)  # RFC 7519: on or after exp


def test_not_before() -> None:
    auth = hs(leeway=5.0)
    text = token(claims(nbf=int(NOW) + 10))
    refused(auth, text, "token not yet valid")
    assert auth.connection(text, now=NOW + 5).user == "alice"


def test_bad_signature() -> None:
    refused(
        hs(), token(claims(), key="another-secret-0123456789-abcdefghij"), "invalid token signature"
    )
    head, _payload, sig = token(claims()).split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    refused(hs(), f"{head}.{forged}.{sig}", "invalid token signature")


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    refused(hs(), unsigned, "token algorithm not allowed")
    header = b64(b'{"alg":"none","typ":"JWT"}')
    body = b64(json.dumps(claims()).encode())
    for text in (f"{header}.{body}.", f"{header}.{body}"):
        refused(hs(), text)


def test_other_hmac_algorithm_is_refused() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET * 2))  # 64+ bytes: PyJWT's HS512 minimum
    refused(auth, token(claims(), key=SECRET * 2, algorithm="HS512"), "token algorithm not allowed")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"sub": None}, "token has no sub claim"),
        ({"sub": ""}, "token has no sub claim"),
        ({"sub": 42}, "token has no sub claim"),
        ({"sub": "a\nb"}, "token sub is not a valid user id"),
        ({"sub": "x" * 256}, "token sub is not a valid user id"),
        ({"exp": None}, "token has no exp claim"),
        ({"exp": "soon"}, "token exp claim must be a number"),
        ({"exp": True}, "token exp claim must be a number"),
        ({"exp": 10**400}, "token exp claim must be a number"),
        ({"exp": float("inf")}, "token exp claim must be a number"),
        ({"nbf": "now"}, "token nbf claim must be a number"),
        ({"info": "text"}, "token info claim must be an object"),
        ({"info": [1]}, "token info claim must be an object"),
        ({"info": {"x": float("nan")}}, "token info claim is not valid JSON"),
        ({"channels": "news"}, "token channels claim must be a list of channel patterns"),
        ({"channels": [1]}, "token channels claim must be a list of channel patterns"),
        ({"channels": ["bad pattern"]}, "token channels claim must be a list of channel patterns"),
        ({"channels": [""]}, "token channels claim must be a list of channel patterns"),
    ],
)
def test_bad_claims(bad: dict[str, Any], reason: str) -> None:
    body = {k: v for k, v in {**claims(), **bad}.items() if v is not None}
    refused(hs(), token(body), reason)


def test_audience_and_issuer() -> None:
    auth = hs(audience="shardws", issuer="https://id.example.com")
    good = claims(aud="shardws", iss="https://id.example.com")
    assert auth.connection(token(good), now=NOW).user == "alice"
    refused(auth, token({**good, "aud": "other"}), "invalid token audience")
    refused(auth, token({**good, "iss": "https://evil"}), "invalid token issuer")
    no_aud = {k: v for k, v in good.items() if k != "aud"}
    refused(auth, token(no_aud), "token lacks a required claim (aud or iss)")
    no_iss = {k: v for k, v in good.items() if k != "iss"}
    refused(auth, token(no_iss), "token lacks a required claim (aud or iss)")
    # Without a configured audience, a token addressed to someone else is refused too.
    refused(hs(), token(claims(aud="another-service")), "invalid token audience")


def test_no_key_configured_refuses_tokens() -> None:
    auth = Authenticator(AuthConfig())
    assert auth.connection(None, now=NOW) is ANONYMOUS
    refused(auth, token(claims()), "tokens are not accepted by this server")


def test_too_long_token() -> None:
    refused(hs(), "a" * (MAX_TOKEN_LENGTH + 1), "token too long")


def test_deeply_nested_header_is_malformed_not_a_crash() -> None:
    text = b64(b"[" * 5000 + b"]" * 5000) + "." + b64(b"{}") + ".x"
    refused(hs(), text, "malformed token")


# ------------------------------------------------------------------ RS256 / ES256


def _pem_public(private: Any) -> str:
    public: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def _pem_private(private: Any) -> str:
    data: bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data.decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _asymmetric(algorithm: str, private: Any, tmp_path: Path) -> Authenticator:
    """An Authenticator built the way the server builds it: from a loaded config."""
    path = tmp_path / "public.pem"
    path.write_text(_pem_public(private))
    cfg = parse_config(
        f'[auth]\nalgorithm = "{algorithm}"\npublic_key_file = "{path}"\nanonymous = false\n',
        "t.toml",
    )
    return Authenticator(cfg.auth)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_tokens(algorithm: str, rsa_key: Any, ec_key: Any, tmp_path: Path) -> None:
    private = rsa_key if algorithm == "RS256" else ec_key
    other = ec_key if algorithm == "RS256" else rsa_key
    auth = _asymmetric(algorithm, private, tmp_path)
    text = make_token(_pem_private(private), "bob", 60, algorithm=algorithm, now=NOW)
    assert auth.connection(text, now=NOW).user == "bob"
    # Signed by another key of the same kind: bad signature.
    same_kind = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    refused(auth, make_token(_pem_private(same_kind), "bob", 60, algorithm=algorithm, now=NOW))
    # Another algorithm, even with a valid signature of its own: refused.
    other_alg = "ES256" if algorithm == "RS256" else "RS256"
    refused(
        auth,
        make_token(_pem_private(other), "bob", 60, algorithm=other_alg, now=NOW),
        "token algorithm not allowed",
    )
    refused(auth, token(claims(), key=SECRET), "token algorithm not allowed")


def test_hs256_signed_with_the_public_key_is_refused(rsa_key: Any, tmp_path: Path) -> None:
    # Key confusion: an attacker HMACs a token with the (public) RSA key as the secret.
    auth = _asymmetric("RS256", rsa_key, tmp_path)
    public = _pem_public(rsa_key).encode()
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())
    refused(auth, f"{signing_input}.{signature}", "token algorithm not allowed")


def test_pem_key_as_hmac_secret_is_refused(rsa_key: Any) -> None:
    with pytest.raises(ValueError, match="key unusable with HS256"):
        Authenticator(AuthConfig(secret=_pem_public(rsa_key)))


# ------------------------------------------------------------------ refresh


def test_refresh_same_user() -> None:
    auth = hs()
    identity = auth.connection(token(claims()), now=NOW)
    later = auth.refresh(identity, token(claims(exp=int(NOW) + 600, info={"v": 2})), now=NOW + 50)
    assert later == Identity("alice", NOW + 600, b'{"v":2}', ())


def test_refresh_with_another_user_fails() -> None:
    auth = hs()
    identity = auth.connection(token(claims()), now=NOW)
    with pytest.raises(AuthFailure, match="token is for another user"):
        auth.refresh(identity, token(claims(sub="mallory")), now=NOW)
    with pytest.raises(AuthFailure, match="token is for another user"):
        auth.refresh(ANONYMOUS, token(claims()), now=NOW)


def test_refresh_with_expired_or_bad_token() -> None:
    auth = hs()
    identity = auth.connection(token(claims()), now=NOW)
    with pytest.raises(TokenExpired):
        auth.refresh(identity, token(claims(exp=int(NOW) - 100)), now=NOW)
    with pytest.raises(AuthFailure, match="token required"):
        auth.refresh(identity, "", now=NOW)
    with pytest.raises(AuthFailure, match="malformed token"):
        auth.refresh(identity, "x.y.z", now=NOW)


# ------------------------------------------------------------------ channel tokens


def test_channel_token() -> None:
    auth = hs()
    alice = auth.connection(token(claims()), now=NOW)
    good = token(claims(channel="vip:lounge"))
    assert auth.channel_token(good, alice, "vip:lounge", now=NOW) is None
    with pytest.raises(AuthFailure, match="channel token is for another channel"):
        auth.channel_token(good, alice, "vip:other", now=NOW)
    with pytest.raises(AuthFailure, match="channel token is for another channel"):
        auth.channel_token(token(claims()), alice, "vip:lounge", now=NOW)  # no channel claim
    bob = Identity("bob", None, None, ())
    with pytest.raises(AuthFailure, match="channel token is for another user"):
        auth.channel_token(good, bob, "vip:lounge", now=NOW)
    with pytest.raises(AuthFailure, match="channel token is for another user"):
        auth.channel_token(good, ANONYMOUS, "vip:lounge", now=NOW)
    with pytest.raises(TokenExpired):
        auth.channel_token(good, alice, "vip:lounge", now=NOW + 3600)
    with pytest.raises(AuthFailure, match="invalid token signature"):
        auth.channel_token(
            token(claims(channel="vip:lounge"), key="x" * 40), alice, "vip:lounge", now=NOW
        )


def test_channel_token_is_not_a_connection_token() -> None:
    text = token(claims(channel="vip:lounge"))
    refused(hs(), text, "a channel token is not a connection token")
    alice = hs().connection(token(claims()), now=NOW)
    with pytest.raises(AuthFailure, match="not a connection token"):
        hs().refresh(alice, text, now=NOW)


# ------------------------------------------------------------------ permissions


def user(name: str, *channels: str) -> Identity:
    return Identity(name, None, None, channels)


@pytest.mark.parametrize(
    ("channel", "members"),
    [
        ("chat:#alice", ("alice",)),
        ("chat:room#alice,bob", ("alice", "bob")),
        ("#alice", ("alice",)),
        ("chat:#", ()),
        ("chat:#alice,", ("alice",)),
        ("chat:room", None),
        ("news", None),
    ],
)
def test_user_only_members(channel: str, members: tuple[str, ...] | None) -> None:
    assert user_only_members(channel) == members


def test_user_only_channels() -> None:
    assert may_subscribe(user("alice"), "chat:#alice") is None
    assert may_subscribe(user("bob"), "chat:#alice") == "channel chat:#alice is only for its users"
    assert may_subscribe(ANONYMOUS, "chat:#alice") is not None
    assert may_subscribe(ANONYMOUS, "chat:#") is not None
    assert may_subscribe(user("alice"), "chat:room#alice,bob") is None
    assert may_subscribe(user("bob"), "chat:room#alice,bob") is None
    assert may_subscribe(user("carol"), "chat:room#alice,bob") is not None
    assert may_subscribe(user("ali"), "chat:#alice") is not None  # no prefix matching
    assert may_subscribe(user("alice"), "#alice") is None  # default namespace
    # A user-only channel stays user-only even with a channel token or a "*" pattern.
    assert may_subscribe(user("bob", "*"), "chat:#alice") is not None
    assert may_subscribe(user("bob"), "chat:#alice", token_checked=True) is not None


def test_channel_patterns() -> None:
    news = user("alice", "news:*", "sport.scores")
    assert may_subscribe(news, "news:world") is None
    assert may_subscribe(news, "news:") is None
    assert may_subscribe(news, "sport.scores") is None
    assert may_subscribe(news, "sportxscores") == "token does not allow channel sportxscores"
    assert may_subscribe(news, "chat:room") is not None
    assert may_subscribe(news, "xnews:world") is not None  # anchored at the start
    assert may_subscribe(user("alice", "*"), "anything:at#alice") is None
    assert may_subscribe(user("alice", "a*b*c"), "a__b__c") is None
    assert may_subscribe(user("alice", "a*b*c"), "a__c") is not None
    # No patterns: no restriction from the token. A verified channel token overrides them.
    assert may_subscribe(user("alice"), "chat:room") is None
    assert may_subscribe(ANONYMOUS, "chat:room") is None
    assert may_subscribe(news, "vip:lounge", token_checked=True) is None


# ------------------------------------------------------------------ helpers


def test_make_token_claims() -> None:
    text = make_token(SECRET, "alice", 30, info={"a": 1}, channels=["x:*"], channel="c", now=NOW)
    body = jwt.decode(text, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert body == {
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW) + 30,
        "info": {"a": 1},
        "channels": ["x:*"],
        "channel": "c",
    }
    with pytest.raises(ValueError, match="sub"):
        make_token(SECRET, "", 30)
    with pytest.raises(ValueError, match="ttl"):
        make_token(SECRET, "a", 0)
    with pytest.raises(ValueError, match="pattern"):
        make_token(SECRET, "a", 10, channels=["has space"])


def test_constant_time_equal() -> None:
    assert constant_time_equal("key", "key")
    assert constant_time_equal(b"key", "key")
    assert constant_time_equal("ключ", "ключ".encode())  # non-ASCII str works
    assert not constant_time_equal("key", "kez")
    assert not constant_time_equal("key", "key2")
    assert not constant_time_equal(b"", "x")


# ------------------------------------------------------------------ hostile input


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_strings_only_raise_auth_failure(text: str) -> None:
    try:
        hs(anonymous=False).connection(text, now=NOW)
    except AuthFailure as err:
        assert str(err) in _REASONS  # fixed phrases only: nothing of the input is echoed


_REASONS = {
    "token required",
    "token too long",
    "malformed token",
    "invalid token signature",
    "token algorithm not allowed",
}

_segment = st.one_of(
    st.binary(max_size=200).map(b64),
    st.dictionaries(
        st.sampled_from(["alg", "typ", "sub", "exp", "nbf", "info", "channels", "channel"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
            max_leaves=10,
        ),
    ).map(lambda d: b64(json.dumps(d).encode())),
    st.text(max_size=50),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=4))
def test_structured_garbage_only_raises_auth_failure(parts: list[str]) -> None:
    auth = hs()
    identity = user("alice")
    text = ".".join(parts)
    for attempt in (
        lambda: auth.connection(text, now=NOW),
        lambda: auth.refresh(identity, text, now=NOW),
        lambda: auth.channel_token(text, identity, "chat:x", now=NOW),
    ):
        try:
            attempt()
        except AuthFailure as err:
            assert SECRET not in str(err)
            assert len(text) < 3 or text not in str(err)


# ------------------------------------------------------------------ shardws token


shardws = run_cli


def test_token_cli_round_trips(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    path = tmp_path / "auth.toml"
    path.write_text(f'[auth]\nanonymous = false\nsecret_file = "{secret_file}"\n')
    result = shardws(
        "token", "--sub", "alice", "--ttl", "3600", "--info", '{"name": "Alice"}',
        "--channels", "news:*", "chat:#alice", "-c", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    assert SECRET not in result.stdout + result.stderr
    auth = Authenticator(parse_config(path.read_text(), str(path)).auth)
    identity = auth.connection(text)
    assert identity.user == "alice"
    assert identity.info == b'{"name":"Alice"}'
    assert identity.channels == ("news:*", "chat:#alice")
    assert identity.expires_at is not None
    # A channel token, checked against that identity.
    result = shardws("token", "--sub", "alice", "--channel", "vip:x", "-c", str(path))
    assert result.returncode == 0, result.stderr
    auth.channel_token(result.stdout.strip(), identity, "vip:x")


def test_token_cli_errors(tmp_path: Path) -> None:
    no_secret = tmp_path / "none.toml"
    no_secret.write_text("[auth]\nanonymous = true\n")
    result = shardws("token", "--sub", "a", "-c", str(no_secret))
    assert result.returncode == 2 and "[auth] secret (or secret_file) is not set" in result.stderr

    key = tmp_path / "pub.pem"
    key.write_text(_pem_public(ec.generate_private_key(ec.SECP256R1())))
    es = tmp_path / "es.toml"
    es.write_text(f'[auth]\nalgorithm = "ES256"\npublic_key_file = "{key}"\n')
    result = shardws("token", "--sub", "a", "-c", str(es))
    assert result.returncode == 2 and "private key elsewhere" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text(f'[auth]\nsecret = "{SECRET}"\n')
    for args, message in (
        (("--info", "[1]"), "--info: expected a JSON object"),
        (("--info", "{bad"), "--info: not valid JSON"),
        (("--ttl", "0"), "ttl must be > 0"),
        (("--channel", "no spaces"), "--channel 'no spaces'"),
        (("--channels", "a b"), "invalid channels pattern"),
    ):
        result = shardws("token", "--sub", "a", *args, "-c", str(good))
        assert result.returncode == 2, args
        assert message in result.stderr
        assert SECRET not in result.stderr
    assert shardws("token", "-c", str(good)).returncode == 2  # --sub is required
