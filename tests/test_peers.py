"""The benchmark peers (``benchmarks/peers``) speak the protocol subset the load generator uses.

Each peer is started as a real subprocess on a kernel-picked loopback port and driven by
``websockets`` clients. Only ``node_ws`` may be skipped, and only when Node.js or npm is
missing or ``npm ci`` fails (the missing-tool rule of ``tests/external.py``: under CI it
fails instead); the Python peers always run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from external import unavailable
from toolkit import run

# benchmarks/ is not part of the installed package: pytest's pythonpath = ["."] finds it.
from benchmarks.peers.launch import (
    PEERS,
    PeerProcess,
    PeerUnavailable,
    start_peer,
    stop_peer,
)

LIMIT = 10  # seconds (scaled) for any one scenario; a healthy run takes well under one


@pytest.fixture(scope="module", params=PEERS)
def peer(request: pytest.FixtureRequest) -> Iterator[PeerProcess]:
    name: str = request.param
    try:
        proc = start_peer(name, 0)
    except PeerUnavailable as exc:
        if name != "node_ws":
            raise
        unavailable(f"node_ws peer unavailable: {exc}")
    yield proc
    code = stop_peer(proc)
    assert code == 0, f"{name} exited with {code} on SIGTERM"


async def connect(url: str) -> Any:
    # No client pings and no compression, like the load generator.
    return await websockets.connect(url, ping_interval=None, compression=None)


async def recv_json(ws: Any) -> Any:
    return json.loads(await ws.recv())


async def call(ws: Any, command: dict[str, Any] | str) -> Any:
    """Send a command (a dict, or raw text sent as is) and return the next message."""
    await ws.send(command if isinstance(command, str) else json.dumps(command))
    return await recv_json(ws)


async def assert_nothing_pending(ws: Any, command_id: int) -> None:
    """A ping's reply is the next message: nothing else was queued for this connection."""
    assert await call(ws, {"id": command_id, "op": "ping"}) == {"id": command_id, "ok": True}


def test_publish_reaches_exactly_the_subscribers(peer: PeerProcess) -> None:
    data = {"text": "héllo", "n": [1, 2.5, None, True, False], "nested": {"k": "v"}}
    push = {"type": "pub", "channel": "news", "data": data}

    async def scenario() -> None:
        a, b, c = [await connect(peer.url) for _ in range(3)]
        try:
            assert await call(a, {"id": 1, "op": "subscribe", "channel": "news"}) == {
                "id": 1,
                "ok": True,
            }
            assert await call(b, {"id": 7, "op": "subscribe", "channel": "news"}) == {
                "id": 7,
                "ok": True,
            }
            # c is not subscribed: it gets its ok reply and no push.
            reply = await call(c, {"id": 2, "op": "publish", "channel": "news", "data": data})
            assert reply == {"id": 2, "ok": True}
            assert await recv_json(a) == push
            assert await recv_json(b) == push
            for ws in (a, b, c):
                await assert_nothing_pending(ws, 99)

            # A subscribed publisher gets the push too, before its ok reply.
            await a.send(json.dumps({"id": 3, "op": "publish", "channel": "news", "data": 5}))
            assert await recv_json(a) == {"type": "pub", "channel": "news", "data": 5}
            assert await recv_json(a) == {"id": 3, "ok": True}
            assert await recv_json(b) == {"type": "pub", "channel": "news", "data": 5}

            # Other channels do not leak.
            reply = await call(c, {"id": 4, "op": "publish", "channel": "other", "data": 1})
            assert reply == {"id": 4, "ok": True}
            for ws in (a, b, c):
                await assert_nothing_pending(ws, 100)
        finally:
            for ws in (a, b, c):
                await ws.close()

    run(scenario(), LIMIT)


def test_unsubscribe_and_disconnect_leave_the_channel(peer: PeerProcess) -> None:
    async def scenario() -> None:
        a, b, c = [await connect(peer.url) for _ in range(3)]
        try:
            for ws in (a, b):
                reply = await call(ws, {"id": 1, "op": "subscribe", "channel": "room"})
                assert reply == {"id": 1, "ok": True}
            assert await call(a, {"id": 2, "op": "unsubscribe", "channel": "room"}) == {
                "id": 2,
                "ok": True,
            }
            await b.close()  # the peer must drop b from "room" and keep serving
            await asyncio.sleep(0.05)
            reply = await call(c, {"id": 3, "op": "publish", "channel": "room", "data": "x"})
            assert reply == {"id": 3, "ok": True}
            await assert_nothing_pending(a, 4)
            # Resubscribing works after the channel emptied.
            assert await call(a, {"id": 5, "op": "subscribe", "channel": "room"}) == {
                "id": 5,
                "ok": True,
            }
            assert await call(c, {"id": 6, "op": "publish", "channel": "room", "data": "y"}) == {
                "id": 6,
                "ok": True,
            }
            assert await recv_json(a) == {"type": "pub", "channel": "room", "data": "y"}
        finally:
            for ws in (a, b, c):
                await ws.close()

    run(scenario(), LIMIT)


def test_malformed_json_gets_an_error_and_the_connection_stays(peer: PeerProcess) -> None:
    async def scenario() -> None:
        ws = await connect(peer.url)
        try:
            for bad in ('{"id":1,"op":', "not json", "{}}"):
                reply = await call(ws, bad)
                assert set(reply) == {"error"}, reply
                assert reply["error"]["code"] == 107
                assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
            assert await call(ws, {"id": 8, "op": "ping"}) == {"id": 8, "ok": True}
        finally:
            await ws.close()

    run(scenario(), LIMIT)
