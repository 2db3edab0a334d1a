"""A small protocol client for tests, on the ``websockets`` library."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from typing import Any

import msgpack
import websockets
from serverproc import timeout

from shardws.pure.msgpackwire import SUBPROTOCOL


class Client:
    """One connection: ``call`` sends a command and returns its reply; pushes received
    meanwhile are kept in order for ``next_push``. With ``msgpack`` it speaks the
    ``shardws.msgpack`` subprotocol (binary MessagePack messages both ways)."""

    def __init__(self, ws: Any, hello: dict[str, Any], msgpack: bool = False) -> None:
        self.ws = ws
        self.msgpack = msgpack
        self.hello = hello
        self.worker: int = hello["worker"]
        self.client_id: str = hello["client"]
        self.pushes: collections.deque[dict[str, Any]] = collections.deque()
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, url: str, *, msgpack: bool = False, **kwargs: Any) -> Client:
        if msgpack:
            kwargs["subprotocols"] = [SUBPROTOCOL]
        ws = await websockets.connect(url, max_size=None, ping_interval=None, **kwargs)
        hello = _decode(await asyncio.wait_for(ws.recv(), timeout(5)))
        assert hello["type"] == "connected", hello
        return cls(ws, hello, msgpack)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if not isinstance(message, str | bytes):
            message = msgpack.packb(message) if self.msgpack else json.dumps(message)
        await self.ws.send(message)

    async def recv(self, limit: float = 5) -> dict[str, Any]:
        return _decode(await asyncio.wait_for(self.ws.recv(), timeout(limit)))

    async def reply(self, command_id: int | None, limit: float = 5) -> dict[str, Any]:
        """The next reply with ``id`` == command_id (or the next reply if None)."""
        while True:
            message = await self.recv(limit)
            if "type" in message:
                self.pushes.append(message)
            elif command_id is None or message.get("id") == command_id:
                return message

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        await self.send({"id": command_id, "op": op, **fields})
        return await self.reply(command_id)

    async def next_push(self, limit: float = 5) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.popleft()
        return await self.recv(limit)

    async def close(self) -> None:
        await self.ws.close()


def _decode(message: str | bytes) -> Any:
    # Text is JSON; a binary message is MessagePack (the shardws.msgpack subprotocol).
    return msgpack.unpackb(message) if isinstance(message, bytes) else json.loads(message)


async def clients_on_workers(
    url: str, workers: int, per_worker: int = 1, attempts: int = 200, msgpack: bool = False
) -> list[Client]:
    """Connect until every worker has ``per_worker`` clients (the kernel's SO_REUSEPORT
    hash decides; bounded by ``attempts``). Surplus connections are closed."""
    chosen: dict[int, list[Client]] = {w: [] for w in range(workers)}
    surplus = []
    for _ in range(attempts):
        client = await Client.connect(url, msgpack=msgpack)
        if len(chosen[client.worker]) < per_worker:
            chosen[client.worker].append(client)
        else:
            surplus.append(client)
        if all(len(c) == per_worker for c in chosen.values()):
            break
    for client in surplus:
        await client.close()
    missing = [w for w, c in chosen.items() if len(c) < per_worker]
    assert not missing, f"no connection landed on workers {missing} in {attempts} attempts"
    return [c for w in range(workers) for c in chosen[w]]
