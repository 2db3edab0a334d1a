"""shardws.pure.pusher.closecodes: every native close reason has its Pusher close."""

from __future__ import annotations

import pytest

from shardws.pure.protocol import CloseCode
from shardws.pure.pusher.closecodes import (
    MESSAGES,
    NATIVE,
    Action,
    PusherCode,
    action_of,
    for_native,
)


def test_every_native_code_is_mapped() -> None:
    assert set(NATIVE) == set(CloseCode)
    assert set(MESSAGES) == set(PusherCode)


@pytest.mark.parametrize(
    ("native", "action"),
    [
        # drain and shutdown: reconnect now
        (CloseCode.GOING_AWAY, Action.RETRY),
        (CloseCode.SERVER_RESTART, Action.RETRY),
        (CloseCode.INSUFFICIENT_STATE, Action.RETRY),
        (CloseCode.IDLE_TIMEOUT, Action.RETRY),
        # overload and slow consumers: back off
        (CloseCode.SLOW_CONSUMER, Action.BACKOFF),
        (CloseCode.TOO_MANY_CONNECTIONS, Action.BACKOFF),
        (CloseCode.INTERNAL_ERROR, Action.BACKOFF),
        (CloseCode.NOT_LIVE, Action.BACKOFF),
        # protocol abuse and refusals: never reconnect
        (CloseCode.PROTOCOL_ERROR, Action.REFUSED),
        (CloseCode.INVALID_TEXT, Action.REFUSED),
        (CloseCode.MESSAGE_TOO_BIG, Action.REFUSED),
        (CloseCode.TOO_MANY_REQUESTS, Action.REFUSED),
        (CloseCode.UNAUTHORIZED, Action.REFUSED),
        (CloseCode.DISCONNECTED, Action.REFUSED),
        (CloseCode.NORMAL, Action.NONE),
    ],
)
def test_ranges(native: CloseCode, action: Action) -> None:
    close = for_native(native)
    assert action_of(close.code) is action
    assert close.sends_error == (close.code >= 4000)


def test_no_close_asks_pusher_js_to_switch_to_tls() -> None:
    """4000 makes pusher-js retry over wss://: shardws never sends it."""
    assert all(close.code != PusherCode.TLS_ONLY for close in NATIVE.values())


def test_pusher_js_actions() -> None:
    """The ranges of pusher-js's getCloseAction (src/core/connection/protocol/protocol.ts)."""
    assert action_of(1002) is action_of(1004) is Action.BACKOFF
    assert action_of(1000) is action_of(1006) is Action.NONE
    assert action_of(4000) is Action.TLS_ONLY
    assert action_of(4001) is action_of(4099) is Action.REFUSED
    assert action_of(4100) is action_of(4199) is Action.BACKOFF
    assert action_of(4200) is action_of(4299) is Action.RETRY
    assert action_of(4300) is action_of(4999) is Action.REFUSED


def test_messages() -> None:
    close = for_native(CloseCode.SLOW_CONSUMER)
    assert (close.code, close.message) == (4100, "Over capacity: slow consumer")
    assert for_native(CloseCode.IDLE_TIMEOUT).code == 4201
    assert for_native(CloseCode.NORMAL).message == ""
    unknown = for_native(4999)
    assert unknown.code == 4200 and "4999" in unknown.message
