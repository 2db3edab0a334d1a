"""Slow consumers: pending output is capped; the namespace policy disconnects or drops,
and the other subscribers get every message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import picows
from serverproc import ServerProcess
from toolkit import run, timeout
from wsclient import Client

MESSAGES = 300
SIZE = 50_000  # 300 x 50 KB = 15 MB: far more than the loopback socket buffers hold


class _Paused(picows.WSListener):
    """A subscriber that stops reading right after its subscription is confirmed."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.close_code: int | None = None
        self.subscribed = asyncio.Event()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            self.texts.append(payload)
            if payload.startswith(b'{"id":1,'):
                self.subscribed.set()
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.disconnect()


async def _scenario(url: str, channel: str) -> tuple[_Paused, picows.WSTransport, list[int]]:
    transport, slow = await picows.ws_connect(_Paused, url, max_frame_size=1 << 20)
    transport.send(
        picows.WSMsgType.TEXT,
        json.dumps({"id": 1, "op": "subscribe", "channel": channel}).encode(),
    )
    await asyncio.wait_for(slow.subscribed.wait(), timeout(5))
    transport.underlying_transport.pause_reading()
    fast = await Client.connect(url)
    await fast.call("subscribe", channel=channel)
    publisher = await Client.connect(url)
    pad = "x" * SIZE

    async def read_all() -> list[int]:  # the fast subscriber keeps reading throughout
        return [(await fast.next_push(limit=20))["data"]["n"] for _ in range(MESSAGES)]

    reader = asyncio.create_task(read_all())
    for n in range(MESSAGES):  # closed loop: paced at a rate a reading client keeps up with
        await publisher.call("publish", channel=channel, data={"n": n, "p": pad})
    got = await reader
    await fast.close()
    await publisher.close()
    return slow, transport, got


def test_slow_consumer_is_disconnected(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1, server="").start() as proc:

        async def main() -> None:
            slow, transport, got = await _scenario(proc.url, "news")
            assert got == list(range(MESSAGES))
            transport.underlying_transport.resume_reading()
            await asyncio.wait_for(transport.wait_disconnected(), timeout(10))
            await asyncio.to_thread(proc.wait_heartbeat)  # counters reach shared memory
            _, body = proc.health()
            assert body["per_worker"][0]["slow_consumers"] == 1
            # Whatever reached it before the cut arrived in order and whole.
            ns = [json.loads(t)["data"]["n"] for t in slow.texts if t.startswith(b'{"type":"pub"')]
            assert ns == list(range(len(ns))) and len(ns) < MESSAGES

        run(main())


def test_drop_policy_skips_messages_and_keeps_the_connection(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path,
        workers=1,
        server="",
        extra='[namespaces.lossy]\nslow_consumer = "drop"\n',
    ).start() as proc:

        async def main() -> None:
            slow, transport, got = await _scenario(proc.url, "lossy:feed")
            assert got == list(range(MESSAGES))
            transport.underlying_transport.resume_reading()
            # Still connected: a ping is answered after the backlog drains.
            transport.send(picows.WSMsgType.TEXT, b'{"id":2,"op":"ping"}')
            deadline = asyncio.get_running_loop().time() + timeout(10)
            while b'{"id":2,"ok":true}' not in slow.texts:
                assert asyncio.get_running_loop().time() < deadline, "no ping reply"
                await asyncio.sleep(0.05)
            assert slow.close_code is None
            ns = [json.loads(t)["data"]["n"] for t in slow.texts if t.startswith(b'{"type":"pub"')]
            assert ns == sorted(ns) and len(ns) < MESSAGES  # some skipped, order kept
            await asyncio.to_thread(proc.wait_heartbeat)  # counters reach shared memory
            _, body = proc.health()
            assert body["per_worker"][0]["drops"] == MESSAGES - len(ns)
            assert body["per_worker"][0]["slow_consumers"] == 0
            transport.disconnect()

        run(main())
