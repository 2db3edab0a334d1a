"""Minimal raw picows broadcast server: the baseline shardws has to beat.

This is what a user who picks picows (the fastest Python WebSocket library) writes for
pub/sub in one process: a dict of channel -> set of transports, ``json.loads`` of each
command, ``json.dumps`` of the push once per publish, and a plain Python loop of
``transport.send(WSMsgType.TEXT, payload)`` over the subscribers. No Cython of its own,
no write coalescing, no validation beyond what ``json.loads`` does.

Settings: uvloop; picows' own event-loop transport (``use_aiofastnet=False``) so the
comparison is picows' framing, not a different socket layer; ``enable_auto_ping=False``
(the benchmarks measure fan-out, not keepalive); ``max_frame_size`` 64 KiB; a 1 KiB
initial read buffer, since commands are small. picows never negotiates per-message
compression.

Differences from shardws a user would accept: publications are re-serialized (``data``
is decoded and re-encoded, so whitespace and number formatting may change), text frames
are not checked for valid UTF-8 beyond ``json.loads``, and fragmented messages are not
reassembled (picows delivers frames; a fragment gets close 1003). Unknown ops get error
104 and other bad commands 107, as in shardws.

    python benchmarks/peers/raw_picows.py --host 127.0.0.1 --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

MAX_MESSAGE_SIZE = 64 * 1024
# Compact separators: the same bytes on the wire as shardws and Node's JSON.stringify.
_SEPARATORS = (",", ":")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=_SEPARATORS).encode()


class Hub:
    """Channel registry shared by all connections of the process."""

    def __init__(self) -> None:
        self.channels: dict[str, set[WSTransport]] = {}
        self.transports: set[WSTransport] = set()


class BroadcastListener(WSListener):
    """One connection: parses commands and fans publications out."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.subscribed: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.hub.transports.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.transports.discard(transport)
        for channel in self.subscribed:
            subscribers = self.hub.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(transport)
                if not subscribers:
                    del self.hub.channels[channel]
        self.subscribed.clear()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            # picows leaves the closing handshake to the listener: echo the code (1000 if
            # the client sent none, since 1005 must not go on the wire) and hang up.
            code = frame.get_close_code()
            transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
            transport.disconnect()
            return
        if msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return  # PING is answered by picows (enable_auto_pong); PONG needs nothing
        if not frame.fin:
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA, b"fragmented messages")
            transport.disconnect()
            return
        self.handle(transport, frame.get_payload_as_bytes())

    def handle(self, transport: WSTransport, raw: bytes) -> None:
        try:
            command = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError on bad UTF-8
            transport.send(WSMsgType.TEXT, _error(None, 107, f"malformed JSON: {exc}"))
            return
        if not isinstance(command, dict):
            transport.send(WSMsgType.TEXT, _error(None, 107, "command must be a JSON object"))
            return
        command_id = command.get("id")
        op = command.get("op")
        channel = command.get("channel")
        if op == "publish":
            if not isinstance(channel, str) or "data" not in command:
                transport.send(WSMsgType.TEXT, _error(command_id, 107, "need channel and data"))
                return
            subscribers = self.hub.channels.get(channel)
            if subscribers:
                # Serialized once; every subscriber gets the same bytes object.
                payload = _dumps({"type": "pub", "channel": channel, "data": command["data"]})
                for subscriber in subscribers:
                    subscriber.send(WSMsgType.TEXT, payload)
        elif op == "subscribe":
            if not isinstance(channel, str):
                transport.send(WSMsgType.TEXT, _error(command_id, 107, "need channel"))
                return
            self.hub.channels.setdefault(channel, set()).add(transport)
            self.subscribed.add(channel)
        elif op == "unsubscribe":
            if not isinstance(channel, str):
                transport.send(WSMsgType.TEXT, _error(command_id, 107, "need channel"))
                return
            subscribers = self.hub.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(transport)
                if not subscribers:
                    del self.hub.channels[channel]
            self.subscribed.discard(channel)
        elif op != "ping":
            transport.send(WSMsgType.TEXT, _error(command_id, 104, f"unknown op {op!r}"))
            return
        transport.send(WSMsgType.TEXT, _ok(command_id))


def _ok(command_id: Any) -> bytes:
    return _dumps({"ok": True} if command_id is None else {"id": command_id, "ok": True})


def _error(command_id: Any, code: int, message: str) -> bytes:
    reply: dict[str, Any] = {} if command_id is None else {"id": command_id}
    reply["error"] = {"code": code, "message": message}
    return _dumps(reply)


async def serve(host: str, port: int) -> None:
    hub = Hub()

    def route(request: WSUpgradeRequest) -> BroadcastListener | None:
        # None makes picows answer 404; the query string, if any, is ignored.
        if request.path.split(b"?", 1)[0] != b"/ws":
            return None
        return BroadcastListener(hub)

    server = await ws_create_server(
        route,
        host,
        port,
        enable_auto_ping=False,
        max_frame_size=MAX_MESSAGE_SIZE,
        read_buffer_init_size=1024,
        use_aiofastnet=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The bound port, so that --port 0 reports the one the kernel picked.
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on ws://{host}:{bound}/ws", flush=True)
    await stop.wait()

    server.close()
    for transport in list(hub.transports):
        transport.send_close(WSCloseCode.GOING_AWAY)
        transport.disconnect()
    # Bounded: clients that do not finish the handshake in time are simply dropped.
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except TimeoutError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
