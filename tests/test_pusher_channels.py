"""shardws.pure.pusher.channels: Pusher channel names and kinds, socket ids."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pusher.util import channel_name_re, socket_id_re, validate_channel

from shardws.pure.protocol import is_valid_channel
from shardws.pure.pusher.channels import (
    MAX_CHANNEL_NAME_LENGTH,
    ChannelKind,
    SocketIds,
    channel_error,
    internal_name,
    is_internal,
    is_socket_id,
    kind_of,
    pusher_name,
    socket_id,
)


@pytest.mark.parametrize(
    ("channel", "kind", "cache"),
    [
        ("chat", ChannelKind.PUBLIC, False),
        ("cache-chat", ChannelKind.PUBLIC, True),
        ("private-chat", ChannelKind.PRIVATE, False),
        ("private-cache-chat", ChannelKind.PRIVATE, True),
        ("presence-room", ChannelKind.PRESENCE, False),
        ("presence-cache-room", ChannelKind.PRESENCE, True),
        ("private-encrypted-x", ChannelKind.ENCRYPTED, False),
        ("private-encrypted-cache-x", ChannelKind.ENCRYPTED, True),
        # Prefixes count only at the start.
        ("chat-private-x", ChannelKind.PUBLIC, False),
        ("privatex", ChannelKind.PUBLIC, False),
    ],
)
def test_kinds_by_prefix(channel: str, kind: ChannelKind, cache: bool) -> None:
    channel_type = kind_of(channel)
    assert (channel_type.kind, channel_type.cache) == (kind, cache)
    assert channel_type.needs_auth == (kind is not ChannelKind.PUBLIC)
    assert channel_type.allows_client_events == (
        kind in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)
    )


def test_channel_names() -> None:
    assert channel_error("private-a_b-c=d@e,f.g;h") is None
    assert channel_error("x" * MAX_CHANNEL_NAME_LENGTH) is None
    assert "longer than the allowed 200" in str(channel_error("x" * 201))
    assert "longer than the allowed 10" in str(channel_error("x" * 11, max_length=10))
    for bad in ("a b", "a:b", "a/b", "a#b", "é", "a\n", "a\x00b"):
        assert "only A-Z" in str(channel_error(bad)), bad
    for bad in ("", None, 3, ["a"]):
        assert channel_error(bad) == "channel must be a non-empty string"


@given(st.text(max_size=210))
def test_names_agree_with_the_official_sdk(name: str) -> None:
    """Exactly the names pusher-http-python's validate_channel accepts (outside its
    #server-to-user- channels, which are not subscribable)."""
    try:
        validate_channel(name)
        sdk_ok = not name.startswith("#")
    except ValueError:
        sdk_ok = False
    assert (channel_error(name) is None) == sdk_ok


def test_charset_is_the_sdks() -> None:
    assert channel_name_re.pattern == r"\A[-a-zA-Z0-9_=@,.;]+\Z"


def test_socket_ids_are_pusher_shaped_and_unique() -> None:
    seen = set()
    for member in (0, 1, 65537, (1 << 32) - 1):
        for incarnation in (0, 1, 1_764_000_000_000):
            ids = SocketIds(member, incarnation)
            for _ in range(3):
                value = ids.next()
                assert socket_id_re.match(value) and is_socket_id(value)
                assert re.fullmatch(r"\d+\.\d+", value)
                seen.add(value)
    assert len(seen) == 4 * 3 * 3
    assert socket_id(1, 2, 3) == f"{2 << 32 | 1}.3"
    for args in ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (1 << 32, 0, 0)):
        with pytest.raises(ValueError):
            socket_id(*args)
    for bad in ("1.", ".1", "1", "a.1", "1.2.3", 1.2, None, "1.2\n"):
        assert not is_socket_id(bad)


_APP_IDS = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
_NAMES = st.from_regex(r"[A-Za-z0-9_\-=@,.;]{1,200}", fullmatch=True)


@given(_APP_IDS, _NAMES, _APP_IDS, _NAMES)
def test_internal_names_are_injective_and_never_native(
    app: str, name: str, other_app: str, other_name: str
) -> None:
    internal = internal_name(app, name)
    assert is_internal(internal) and pusher_name(internal) == name
    assert not is_valid_channel(internal)  # no native client or /api/publish can reach it
    assert (internal == internal_name(other_app, other_name)) == (
        (app, name) == (other_app, other_name)
    )


@given(st.from_regex(r"[A-Za-z0-9_\-.:@#=/+!$~,]{1,255}", fullmatch=True))
def test_native_names_are_never_internal(name: str) -> None:
    assert not is_internal(name)
