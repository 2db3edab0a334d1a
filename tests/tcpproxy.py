"""A TCP proxy a test controls: the network path between a client and a server.

Runs in the test's event loop. ``cut()`` drops every connection at once (RST) and
accepts-then-drops new ones until ``restore()``, counting each attempt with its time, so
a test can measure how clients reconnect. ``stall()`` silently stops forwarding on the
existing connections (no FIN, no RST: a dead path that only pings can find), in both
directions or only towards the client, while new connections work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepts: list[float] = []  # monotonic time of every accepted connection
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._stall_upstream = True
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts.append(time.monotonic())
        if self.refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            self._stalled.discard(writer)
            for w in pair:
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self._is_stalled(writer):
                    continue  # the path is dead: bytes vanish, nobody is told
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def _is_stalled(self, writer: asyncio.StreamWriter) -> bool:
        for client_side, server_side in self._pairs:
            if client_side in self._stalled and (
                writer is client_side or (writer is server_side and self._stall_upstream)
            ):
                return True
        return False

    def cut(self) -> None:
        """Reset every connection now and every new one until ``restore``."""
        self.refusing = True
        for pair in list(self._pairs):
            for writer in pair:
                _reset(writer)

    def restore(self) -> None:
        self.refusing = False

    def stall(self, upstream: bool = True) -> None:
        """Stop forwarding on the connections open now, silently: towards the client,
        and towards the server too unless ``upstream`` is False (then commands still
        arrive but replies and pushes vanish: the case of a publish the server took
        whose reply was lost)."""
        self._stall_upstream = upstream
        self._stalled.update(pair[0] for pair in self._pairs)

    def connections(self) -> int:
        return len(self._pairs)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for _ in range(100):  # the piping tasks end once their sockets are gone
            if not self._pairs:
                break
            await asyncio.sleep(0.01)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a path that broke, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
