"""Broadcast server on the ``websockets`` library (asyncio implementation), on uvloop.

What a ``websockets`` user writes for pub/sub in one process: one handler coroutine per
connection iterating over incoming messages, a dict of channel -> set of connections,
and ``websockets.broadcast()`` for fan-out, which is the library's documented way to
send one message to many connections: it encodes the string once and writes it to each
connection without awaiting (no backpressure: a slow subscriber's buffer just grows).

Settings: ``max_size`` 64 KiB, ``ping_interval=None`` (the library's keepalive pings
are off: the benchmarks measure fan-out), ``compression=None`` (no permessage-deflate;
shardws does not negotiate it). Everything else is the library default, as a user
would leave it; in particular ``max_queue=16`` bounds how many incoming messages the
library buffers per connection before it stops reading. Paths other than ``/ws`` get
HTTP 404.

Differences from shardws: publications are re-serialized (``data`` is decoded and
re-encoded); invalid UTF-8 closes with 1007 and oversized messages with 1009, both done
by the library. Unknown ops get error 104, other bad commands 107.

    python benchmarks/peers/websockets_server.py --host 127.0.0.1 --port 9002
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from http import HTTPStatus
from typing import Any

import uvloop
from websockets.asyncio.server import Request, Response, ServerConnection, broadcast, serve

MAX_MESSAGE_SIZE = 64 * 1024
# Compact separators: the same bytes on the wire as shardws and Node's JSON.stringify.
_SEPARATORS = (",", ":")

channels: dict[str, set[ServerConnection]] = {}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=_SEPARATORS)


def _ok(command_id: Any) -> str:
    return _dumps({"ok": True} if command_id is None else {"id": command_id, "ok": True})


def _error(command_id: Any, code: int, message: str) -> str:
    reply: dict[str, Any] = {} if command_id is None else {"id": command_id}
    reply["error"] = {"code": code, "message": message}
    return _dumps(reply)


def _unsubscribe(connection: ServerConnection, channel: str) -> None:
    subscribers = channels.get(channel)
    if subscribers is not None:
        subscribers.discard(connection)
        if not subscribers:
            del channels[channel]


def _handle(connection: ServerConnection, raw: str | bytes, subscribed: set[str]) -> str:
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
            # Serialized once; broadcast() encodes it to UTF-8 once for all connections.
            push = _dumps({"type": "pub", "channel": channel, "data": command["data"]})
            broadcast(subscribers, push)
    elif op == "subscribe":
        if not isinstance(channel, str):
            return _error(command_id, 107, "need channel")
        channels.setdefault(channel, set()).add(connection)
        subscribed.add(channel)
    elif op == "unsubscribe":
        if not isinstance(channel, str):
            return _error(command_id, 107, "need channel")
        _unsubscribe(connection, channel)
        subscribed.discard(channel)
    elif op != "ping":
        return _error(command_id, 104, f"unknown op {op!r}")
    return _ok(command_id)


async def handler(connection: ServerConnection) -> None:
    subscribed: set[str] = set()
    try:
        async for message in connection:
            # Awaiting the reply's send keeps this connection's replies in order and lets
            # the library apply backpressure to a client that does not read.
            await connection.send(_handle(connection, message, subscribed))
    finally:
        # Runs on normal close and on ConnectionClosedError alike (the iterator ends or
        # send raises); the library logs the latter.
        for channel in subscribed:
            _unsubscribe(connection, channel)


def only_ws_path(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.split("?", 1)[0] != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None


async def main_async(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(
        handler,
        host,
        port,
        process_request=only_ws_path,
        max_size=MAX_MESSAGE_SIZE,
        ping_interval=None,
        compression=None,
        close_timeout=2,
    ) as server:
        # The bound port, so that --port 0 reports the one the kernel picked.
        bound = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound}/ws", flush=True)
        await stop.wait()
        # Closes every connection with 1001 and waits (bounded by close_timeout).
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    args = parser.parse_args()
    uvloop.run(main_async(args.host, args.port))


if __name__ == "__main__":
    main()
