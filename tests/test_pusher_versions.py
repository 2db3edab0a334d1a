"""shardws.pure.pusher.versions: what differs between the protocol versions served.

Each rule is Pusher's protocol CHANGELOG (docs/pusher.md, "Protocol versions"); the
end-to-end proof with raw connections and pysher is ``tests/test_pusher_versions_server.py``.
"""

from __future__ import annotations

from shardws.pure.pusher import versions


def test_four_to_seven_are_served() -> None:
    assert list(versions.SUPPORTED) == [4, 5, 6, 7]
    assert versions.SUPPORTED_TEXT == "4-7"


def test_activity_timeout_is_in_the_handshake_of_protocol_7_only() -> None:
    # CHANGELOG, version 7 (2013-11): "The server now sends the activity timeout".
    assert [versions.handshake_has_activity_timeout(p) for p in versions.SUPPORTED] == [
        False,
        False,
        False,
        True,
    ]


def test_pusher_ping_is_sent_from_protocol_5_on() -> None:
    # CHANGELOG, version 5 (2012-01): "Pusher expects the client to respond to ping
    # messages"; a version 4 client gets a WebSocket Ping frame instead.
    assert [versions.pings_with_event(p) for p in versions.SUPPORTED] == [False, True, True, True]
