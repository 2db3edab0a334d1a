"""Pusher protocols 4 to 7 served end to end (``pure.pusher.versions``; docs/pusher.md,
"Protocol versions"): a real ``shardws serve`` with two workers, the Python clients from
PyPI that send protocol 6 -- pysher 1.0.8 and pusherclient 0.3.0 -- at their defaults,
and raw WebSocket clients for protocols 4 and 5, which no client runnable here sends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
from pathlib import Path
from typing import Any

import pusher
import pytest
import rawws
import websockets
from pusherjs import presence_channel_owned_by, worker_of
from serverproc import ServerProcess, timeout
from test_pusher_server import APPS, SECRET, sdk
from threadedpusher import (
    Recorder,
    event_data,
    pusher_client_signed_subscribe,
    pusherclient_client,
    pysher_client,
    pysher_on_workers,
)
from toolkit import run, wait_until

SERVER = {"workers": 2, "extra": APPS}

ALICE = {"user_id": "alice", "user_info": {"name": "Alice"}}
BOB = {"user_id": "bob", "user_info": {"name": "Bob"}}


def _handshake(client: Recorder) -> dict[str, Any]:
    _, data = client.expect("pusher:connection_established")
    established = event_data(data)
    assert isinstance(established, dict)
    return established


# -- pysher at its default protocol (6), two workers ----------------------------------------


def test_pysher_at_its_default_protocol_on_two_workers(server: ServerProcess) -> None:
    with pysher_on_workers(server.ws_port, (0, 1), [ALICE, BOB], secret=SECRET) as (
        alice,
        bob,
    ):
        assert "&protocol=6" in alice.client.url  # pysher's default, not forced
        # Protocol 6: the handshake has the socket id only (activity_timeout is 7's).
        assert _handshake(alice) == {"socket_id": alice.socket_id}
        assert (alice.worker, bob.worker) == (0, 1)

        # Public: an HTTP API event reaches both, as Pusher's JSON-encoded string.
        for client in (alice, bob):
            client.subscribe("news")
        sdk(server).trigger("news", "greeting", {"hello": "world"})
        for client in (alice, bob):
            _, data = client.expect("greeting", "news")
            assert event_data(data) == {"hello": "world"}

        # Private, signed by pysher with the secret; client events across the workers,
        # never echoed to the sender.
        chat_a = alice.subscribe("private-chat")
        chat_b = bob.subscribe("private-chat")
        chat_a.trigger("client-hello", {"n": 1})
        _, data = bob.expect("client-hello", "private-chat")
        assert data == {"n": 1}
        chat_b.trigger("client-marker", {"n": 2})
        alice.expect("client-marker", "private-chat")
        assert alice.received("client-hello", "private-chat") == []

        # Presence: the roster, member_added across the workers, a presence client event.
        room = presence_channel_owned_by(1, "pysher-room")
        room_a = alice.subscribe(room)
        _, first = alice.expect("pusher_internal:subscription_succeeded", room)
        assert event_data(first)["presence"]["ids"] == ["alice"]
        bob.subscribe(room)
        _, joined = bob.expect("pusher_internal:subscription_succeeded", room)
        presence = event_data(joined)["presence"]
        assert sorted(presence["ids"]) == ["alice", "bob"] and presence["count"] == 2
        assert presence["hash"]["alice"] == {"name": "Alice"}
        _, added = alice.expect("pusher_internal:member_added", room)
        assert event_data(added) == {"user_id": "bob", "user_info": {"name": "Bob"}}
        room_a.trigger("client-wave", {"from": "alice"})
        _, wave = bob.expect("client-wave", room)
        assert wave == {"from": "alice"}

        # A wrong signature is refused, the connection stays served.
        bob.client.subscribe("private-forged", auth="app-key:" + "0" * 64)
        _, refused = bob.expect("pusher:subscription_error", "private-forged")
        assert event_data(refused)["status"] == 401

        bob.client.unsubscribe(room)
        _, removed = alice.expect("pusher_internal:member_removed", room)
        assert event_data(removed) == {"user_id": "bob"}


def test_pysher_never_reconnects_after_4001(server: ServerProcess) -> None:
    client = pysher_client(server.ws_port, key="no-such-key")  # 4000-4099: never retry
    try:
        _, error = client.expect("pusher:error")
        assert error["code"] == 4001
        # pysher's handler for 4000-4099 disconnects: its thread ends, no second attempt.
        wait_until(lambda: not client.client.connection.is_alive(), timeout=10)
        assert client.received("pusher:connection_established") == []
    finally:
        client.close()


def test_pysher_reconnects_at_once_after_a_drain(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        client = pysher_client(proc.ws_port, auto_sub=True)  # resubscribe on reconnect
        try:
            first = client.socket_id
            client.subscribe("drained")
            proc.wait_log(r"all \d+ process\(es\) ready")  # a SIGHUP during the boot is ignored
            proc.signal(signal.SIGHUP)  # a reload: every worker drains and is replaced
            _, error = client.expect("pusher:error", limit=30)
            assert error["code"] == 4200  # pysher: "SHOULD be re-established immediately"
            proc.wait_log("reload complete", 1, 60)

            def resubscribed() -> bool:
                # Since its last connection_established, subscribed again and no error.
                seen = client.history()
                last = max(i for i, m in enumerate(seen) if m[1].endswith("established"))
                later = [m[1] for m in seen[last:]]
                return (
                    client.client.connection.state == "connected"
                    and "pusher_internal:subscription_succeeded" in later
                    and "pusher:error" not in later
                )

            wait_until(resubscribed, timeout=30, message=lambda: str(client.history()))
            assert client.client.connection.socket_id != first
            mark = len(client.history())
            sdk(proc).trigger("drained", "after-drain", {"ok": True})
            _, data = client.expect("after-drain", "drained", after=mark)
            assert event_data(data) == {"ok": True}
        finally:
            client.close()


# -- pusherclient 0.3.0 (protocol 6) --------------------------------------------------------


def test_pusherclient_connects_subscribes_and_sends_client_events(
    server: ServerProcess,
) -> None:
    client = pusherclient_client(server.ws_port)
    listener = pysher_client(server.ws_port, secret=SECRET, user_data=BOB)
    try:
        assert "&protocol=6" in client.client.url
        assert _handshake(client) == {"socket_id": client.socket_id}
        client.subscribe("pc-news")
        sdk(server).trigger("pc-news", "greeting", {"via": "sdk"})
        _, data = client.expect("greeting", "pc-news")
        assert event_data(data) == {"via": "sdk"}

        # pusherclient signs with hmac.new(secret, str) -- Python 2 code that raises
        # TypeError on Python 3 before anything is sent -- so its private and presence
        # subscriptions are signed with the official SDK and sent on its connection.
        signer = pusher.Pusher(app_id="1", key="app-key", secret=SECRET)
        chat = pusher_client_signed_subscribe(
            client, "private-pc", signer.authenticate("private-pc", client.socket_id)
        )
        client.expect("pusher_internal:subscription_succeeded", "private-pc")
        listener.subscribe("private-pc")
        chat.trigger("client-ping", {"from": "pusherclient"})
        _, sent = listener.expect("client-ping", "private-pc")
        assert sent == {"from": "pusherclient"}

        room = "presence-pc-room"
        listener.subscribe(room)
        user = {"user_id": "carol", "user_info": {"name": "Carol"}}
        auth = signer.authenticate(room, client.socket_id, user)
        pusher_client_signed_subscribe(client, room, auth)
        _, roster = client.expect("pusher_internal:subscription_succeeded", room)
        assert sorted(event_data(roster)["presence"]["ids"]) == ["bob", "carol"]
        _, added = listener.expect("pusher_internal:member_added", room)
        assert event_data(added)["user_id"] == "carol"
    finally:
        client.close()
        listener.close()


def test_pusherclient_gets_the_close_code_and_stops(server: ServerProcess) -> None:
    client = pusherclient_client(server.ws_port, key="no-such-key")
    try:
        _, error = client.expect("pusher:error")
        assert error["code"] == 4001
        wait_until(lambda: not client.client.connection.is_alive(), timeout=10)
    finally:
        client.close()


# -- every version's handshake, and 4 and 5 with raw clients ---------------------------------


async def _raw(server: ServerProcess, protocol: int) -> Any:
    return await websockets.connect(
        f"ws://127.0.0.1:{server.ws_port}/app/app-key?protocol={protocol}",
        ping_interval=None,  # answers the server's Ping frames, sends none of its own
        max_size=None,
    )


async def _next(ws: Any, limit: float = 5) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout(limit)))
    assert isinstance(message, dict)
    return message


@pytest.mark.parametrize("protocol", [4, 5, 6, 7])
def test_each_version_is_served_its_handshake_and_channels(
    server: ServerProcess, protocol: int
) -> None:
    async def scenario() -> None:
        ws = await _raw(server, protocol)
        try:
            hello = await _next(ws)
            assert hello["event"] == "pusher:connection_established"
            data = json.loads(hello["data"])
            if protocol == 7:
                assert data == {"socket_id": data["socket_id"], "activity_timeout": 120}
            else:  # activity_timeout arrived with protocol 7
                assert data == {"socket_id": data["socket_id"]}
            worker_of(data["socket_id"])
            # Protocol 4 added subscription_succeeded for public and private channels.
            # The data goes as an object (pusher-js) and as a JSON-encoded string, the
            # form the protocol page's earlier text shows for pusher:subscribe.
            private = f"private-v{protocol}"
            auth = sdk(server).authenticate(private, data["socket_id"])["auth"]
            subscriptions: list[tuple[str, Any]] = [
                (f"public-v{protocol}", {"channel": f"public-v{protocol}"}),
                (private, {"channel": private, "auth": auth}),
                (f"encoded-v{protocol}", json.dumps({"channel": f"encoded-v{protocol}"})),
            ]
            for channel, subscribe in subscriptions:
                await ws.send(json.dumps({"event": "pusher:subscribe", "data": subscribe}))
                succeeded = await _next(ws)
                assert succeeded["event"] == "pusher_internal:subscription_succeeded"
                assert succeeded["channel"] == channel
            await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
            assert (await _next(ws))["event"] == "pusher:pong"
        finally:
            await ws.close()

    run(scenario())


QUIET = APPS.replace("max_client_events_per_second = 2", "activity_timeout = 1")


@pytest.mark.parametrize("protocol", [5, 6])
def test_protocols_5_and_6_get_pusher_ping_then_error_and_close_4201(
    tmp_path: Path, protocol: int
) -> None:
    with ServerProcess(tmp_path, workers=1, extra=QUIET, server="ping_interval = 1").start() as p:

        async def scenario() -> None:
            ws = await _raw(p, protocol)
            assert (await _next(ws))["event"] == "pusher:connection_established"
            assert (await _next(ws, 10))["event"] == "pusher:ping"  # bound to answer from 5
            error = await _next(ws, 10)  # versions below 6 need the pusher:error
            assert error["event"] == "pusher:error" and error["data"]["code"] == 4201
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), timeout(10))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4201

        run(scenario())


def test_protocol_4_gets_a_websocket_ping_frame_then_error_and_close_4201(
    tmp_path: Path,
) -> None:
    """A raw socket that answers nothing: the server's liveness check on a protocol 4
    connection is a Ping frame (opcode 9), never a ``pusher:ping`` text; unanswered, it
    ends with ``pusher:error`` 4201 and a close frame 4201."""
    with ServerProcess(tmp_path, workers=1, extra=QUIET, server="ping_interval = 1").start() as p:
        sock, head, rest = rawws.handshake(p.ws_port, "/app/app-key?protocol=4")
        try:
            assert head.startswith(b"HTTP/1.1 101"), head
            frames = rawws.FrameReader(sock, rest)
            sock.settimeout(timeout(10))
            first, payload = frames.next()
            assert first == 0x81 and b"connection_established" in payload
            first, _ = frames.next()
            assert first == 0x89  # FIN + Ping
            first, payload = frames.next()
            assert first == 0x81
            assert json.loads(payload) == {
                "event": "pusher:error",
                "data": {"code": 4201, "message": "Pong reply not received: no activity"},
            }
            first, payload = frames.next()
            assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 4201
        finally:
            sock.close()


def test_protocol_4_stays_connected_while_its_websocket_answers_pings(tmp_path: Path) -> None:
    """The same quiet protocol 4 client, but its WebSocket layer answers Ping frames (as
    every RFC 6455 client does): the Pong counts as activity, so it is never closed."""
    with ServerProcess(tmp_path, workers=1, extra=QUIET, server="ping_interval = 1").start() as p:

        async def scenario() -> None:
            ws = await _raw(p, 4)
            try:
                assert (await _next(ws))["event"] == "pusher:connection_established"
                # Quiet for three times what closes a client that answers nothing
                # (activity_timeout 1 s + 1 s to answer): no message comes, nothing closes.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), timeout(6))
                await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "x"}}))
                assert (await _next(ws))["event"] == "pusher_internal:subscription_succeeded"
            finally:
                await ws.close()

        run(scenario())
