"""Broadcast server on aiohttp's web server (``WebSocketResponse``), on uvloop.

What an aiohttp user writes for pub/sub in one process: a ``GET /ws`` route whose
handler prepares a ``WebSocketResponse`` and iterates over its messages, a dict of
channel -> set of responses, and fan-out with ``send_str``. ``send_str`` is a coroutine,
so the fan-out awaits it for each subscriber in turn (sequential awaits). That is the
common idiom and the faster one here: ``send_str`` writes to the transport at once and
only suspends when the connection's write buffer is above ``writer_limit``, while
``asyncio.gather`` would create one task per subscriber per publication. The catch is
that one slow subscriber stalls the publisher's fan-out until its buffer drains. The
push is serialized once; ``send_str`` still encodes it to UTF-8 and frames it once per
subscriber, inside aiohttp.

Settings: ``max_msg_size`` 64 KiB, ``heartbeat=None`` (no server pings: the benchmarks
measure fan-out; client pings are still answered, ``autoping``), ``compress=False`` (no
permessage-deflate; shardws does not negotiate it), no access log (it would log only
the handshake). Other paths get aiohttp's 404.

Differences from shardws: publications are re-serialized (``data`` is decoded and
re-encoded); invalid UTF-8 and oversized messages end the connection (aiohttp closes it
with 1007 / 1009). Unknown ops get error 104, other bad commands 107.

    python benchmarks/peers/aiohttp_server.py --host 127.0.0.1 --port 9003
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import uvloop
from aiohttp import WSCloseCode, WSMsgType, web

MAX_MESSAGE_SIZE = 64 * 1024
# Compact separators: the same bytes on the wire as shardws and Node's JSON.stringify.
_SEPARATORS = (",", ":")

CHANNELS = web.AppKey("channels", dict[str, set[web.WebSocketResponse]])
CONNECTIONS = web.AppKey("connections", set[web.WebSocketResponse])


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=_SEPARATORS)


def _ok(command_id: Any) -> str:
    return _dumps({"ok": True} if command_id is None else {"id": command_id, "ok": True})


def _error(command_id: Any, code: int, message: str) -> str:
    reply: dict[str, Any] = {} if command_id is None else {"id": command_id}
    reply["error"] = {"code": code, "message": message}
    return _dumps(reply)


def _unsubscribe(
    channels: dict[str, set[web.WebSocketResponse]], ws: web.WebSocketResponse, channel: str
) -> None:
    subscribers = channels.get(channel)
    if subscribers is not None:
        subscribers.discard(ws)
        if not subscribers:
            del channels[channel]


async def _handle(
    channels: dict[str, set[web.WebSocketResponse]],
    ws: web.WebSocketResponse,
    raw: str | bytes,
    subscribed: set[str],
) -> str:
    """Run one command and return the reply to send to its sender."""
    try:
        command = json.loads(raw)
    except ValueError as exc:
        return _error(None, 107, f"malformed JSON: {exc}")
    if not isinstance(command, dict):
        return _error(None, 107, "command must be a JSON object")
    command_id = command.get("id")
    op = command.get("op")
    channel = command.get("channel")
    if op == "publish":
        if not isinstance(channel, str) or "data" not in command:
            return _error(command_id, 107, "need channel and data")
        subscribers = channels.get(channel)
        if subscribers:
            push = _dumps({"type": "pub", "channel": channel, "data": command["data"]})
            # A snapshot: the awaits below may let other handlers (un)subscribe.
            for subscriber in list(subscribers):
                if subscriber.closed:
                    continue
                try:
                    await subscriber.send_str(push)
                except ConnectionError:
                    pass  # closing under us; its own handler removes it from the channels
    elif op == "subscribe":
        if not isinstance(channel, str):
            return _error(command_id, 107, "need channel")
        channels.setdefault(channel, set()).add(ws)
        subscribed.add(channel)
    elif op == "unsubscribe":
        if not isinstance(channel, str):
            return _error(command_id, 107, "need channel")
        _unsubscribe(channels, ws, channel)
        subscribed.discard(channel)
    elif op != "ping":
        return _error(command_id, 104, f"unknown op {op!r}")
    return _ok(command_id)


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        max_msg_size=MAX_MESSAGE_SIZE, heartbeat=None, autoping=True, compress=False
    )
    await ws.prepare(request)
    channels = request.app[CHANNELS]
    connections = request.app[CONNECTIONS]
    connections.add(ws)
    subscribed: set[str] = set()
    try:
        async for msg in ws:  # ends on CLOSE (answered by aiohttp) and on errors
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                reply = await _handle(channels, ws, msg.data, subscribed)
                try:
                    await ws.send_str(reply)
                except ConnectionError:
                    break
    finally:
        connections.discard(ws)
        for channel in subscribed:
            _unsubscribe(channels, ws, channel)
    return ws


async def _close_all(app: web.Application) -> None:
    # aiohttp waits for open handlers on shutdown; close the WebSockets so it need not.
    connections = app[CONNECTIONS]
    for ws in list(connections):  # a copy: each close ends a handler, which discards it
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def main_async(host: str, port: int) -> None:
    app = web.Application()
    app[CHANNELS] = {}
    app[CONNECTIONS] = set()
    app.router.add_get("/ws", websocket_handler)
    app.on_shutdown.append(_close_all)
    # shutdown_timeout bounds how long cleanup() waits for handlers still running.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The bound port, so that --port 0 reports the one the kernel picked.
    bound = runner.addresses[0][1]
    print(f"listening on ws://{host}:{bound}/ws", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9003)
    args = parser.parse_args()
    uvloop.run(main_async(args.host, args.port))


if __name__ == "__main__":
    main()
