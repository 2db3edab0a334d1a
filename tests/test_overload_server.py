"""A saturated worker sheds new connections and keeps those it holds (issue: "Overload
never kills"), seen from outside: 503 with Retry-After, /ready, /metrics, steering to the
workers that still accept, and shardws.client following Retry-After.

A worker's loop is made late on purpose with ``[diagnostics] stall_path`` (its loop
spins for the given seconds): the upgrades that arrive meanwhile queue in the kernel, as
they do behind a long iteration of a saturated loop."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import websockets
from serverproc import ServerProcess, http_json
from toolkit import run, timeout, wait_until
from websockets.exceptions import InvalidStatus
from wsclient import Client

from shardws.client import connect

OVERLOAD = """
[limits]
overload_loop_lag = 0.5
overload_retry_after = 1

[diagnostics]
stall_path = "/stall"
"""


def stall(proc: ServerProcess, seconds: float) -> socket.socket:
    """Hang whichever worker accepts this request for ``seconds`` (the caller closes
    the socket once done)."""
    sock = socket.create_connection(("127.0.0.1", proc.ws_port), timeout=timeout(5))
    sock.sendall(
        f"GET /stall?seconds={seconds} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def stalled_worker(proc: ServerProcess) -> int:
    """The worker number whose loop is late (waits for it)."""

    def late() -> list[int]:
        _, body = proc.health()
        return [int(w["worker"]) for w in body["per_worker"] if w["overloaded"]]

    return wait_until(late, 10, message="no worker stalled")[0]


async def accepted(proc: ServerProcess) -> Client:
    """A connection, once the server takes new ones again (bounded)."""
    deadline = time.monotonic() + timeout(10)
    while True:
        try:
            return await Client.connect(proc.url)
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def metric(proc: ServerProcess, name: str, worker: int) -> float:
    """One worker's sample of ``name`` from /metrics."""
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    prefix = f'{name}{{worker="{worker}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no {prefix!r} in /metrics")


def test_a_late_worker_refuses_new_connections_with_503_and_keeps_serving_its_own(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path, workers=1, extra=OVERLOAD).start() as proc:

        async def scenario() -> None:
            held = await Client.connect(proc.url)
            assert (await held.call("subscribe", channel="news"))["ok"]
            sock = stall(proc, 3)
            try:
                stalled_worker(proc)
                status, ready = http_json(proc.admin_url + "/ready")
                assert status == 503 and ready["reason"].startswith("overloaded"), ready
                with pytest.raises(InvalidStatus) as refused:
                    await websockets.connect(proc.url, open_timeout=timeout(15))
                response = refused.value.response
                assert response.status_code == 503, response
                assert response.headers["Retry-After"] == "1"
                assert b"overloaded" in response.body
            finally:
                sock.close()
            # What it held was never disturbed: it publishes and receives as before.
            await held.call("publish", channel="news", data={"n": 1})
            assert (await held.next_push())["data"] == {"n": 1}
            # Once its loop is on time again (a tick or two), new connections are taken.
            late = await accepted(proc)
            await late.close()
            await held.close()

        run(scenario())
        proc.wait_heartbeat()
        status, ready = http_json(proc.admin_url + "/ready")
        assert status == 200, ready
        assert metric(proc, "shardws_overload_refused_connections_total", 0) >= 1
        assert metric(proc, "shardws_refused_connections_total", 0) >= 1
        assert metric(proc, "shardws_event_loop_lag_seconds", 0) >= 0
        assert metric(proc, "shardws_overloaded", 0) == 0
        _, body = proc.health()
        assert body["per_worker"][0]["restarts"] == 0


def test_new_connections_go_to_the_workers_that_still_accept(tmp_path: Path) -> None:
    """Steering: while one worker's loop is late, the kernel sends every new connection
    to the other, which answers at once (none waits for the late one, none gets 503)."""
    with ServerProcess(tmp_path, workers=2, extra=OVERLOAD).start() as proc:
        sock = stall(proc, 6)
        try:
            late = stalled_worker(proc)
            time.sleep(0.5)  # the supervisor steers within one of its 0.2 s turns

            async def connect_many() -> list[int]:
                clients = [
                    await asyncio.wait_for(Client.connect(proc.url), timeout(2)) for _ in range(10)
                ]
                workers = [int(c.hello["worker"]) for c in clients]
                for client in clients:
                    await client.close()
                return workers

            workers = run(connect_many())
            assert late not in workers and len(set(workers)) == 1, (late, workers)
        finally:
            sock.close()


def test_the_client_waits_out_retry_after_then_connects(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1, extra=OVERLOAD).start() as proc:
        sock = stall(proc, 2)
        try:
            stalled_worker(proc)

            async def scenario() -> int:
                async with connect(proc.url) as client:
                    await client.subscribe("news")
                    assert client.attempts >= 2  # the first was refused
                    return client.hints_followed

            assert run(scenario()) >= 1  # the 503's Retry-After was followed
        finally:
            sock.close()


def test_a_late_loop_does_not_take_its_quiet_clients_for_dead(tmp_path: Path) -> None:
    """While a worker's loop is late, the frames its clients sent wait unread in the
    kernel, and the keepalive step (a timer) runs before the reads: counting that time
    as quiet closed live clients with 4502 (33,520 of them at 650,000 connections).
    Quiet is counted in the time the loop listened."""
    keepalive = "ping_interval = 0.5\nidle_timeout = 1.0"
    with ServerProcess(tmp_path, workers=1, server=keepalive, extra=OVERLOAD).start() as proc:

        async def scenario() -> None:
            client = await Client.connect(proc.url)
            assert (await client.call("subscribe", channel="news"))["ok"]
            talking = True

            async def talk() -> None:  # never quiet for long: a command every 0.1 s
                while talking:
                    await client.send({"op": "ping"})
                    await asyncio.sleep(0.1)

            chatter = asyncio.ensure_future(talk())
            sock = await asyncio.to_thread(stall, proc, 3)
            try:
                await asyncio.to_thread(stalled_worker, proc)
                await asyncio.to_thread(proc.wait_heartbeat, 15.0)  # the loop runs again
            finally:
                sock.close()
                talking = False
                await chatter
            await client.send({"id": 99, "op": "publish", "channel": "news", "data": 1})
            while (push := await client.recv()).get("type") != "pub":
                pass  # the replies to the pings
            assert push["data"] == 1
            await client.close()

        run(scenario())
        assert "idle timeout" not in proc.logs()
