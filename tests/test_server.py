"""End to end: a real ``shardws serve`` with 2 workers, real clients on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import picows
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess, http_json
from toolkit import run, timeout, wait_until_async
from wsclient import Client, clients_on_workers

from shardws import client as shardws_client
from shardws.pure.auth import make_token
from shardws.pure.history import owner_of

WORKERS = 2


SERVER = {"workers": WORKERS}


def test_connected_push_and_health(server: ServerProcess) -> None:
    async def scenario() -> None:
        clients = await clients_on_workers(server.url, WORKERS)
        for client in clients:
            assert client.hello["protocol"] == 1
            assert client.client_id
        assert len({c.client_id for c in clients}) == len(clients)
        status, body = server.health()
        assert status == 200 and body["status"] == "ok"
        assert body["workers_alive"] == WORKERS
        for client in clients:
            assert (await client.call("ping")) == {"id": 1, "ok": True}
            await client.close()

    run(scenario())


def test_publish_reaches_every_worker_once_in_order(server: ServerProcess) -> None:
    count = 300

    async def scenario() -> None:
        subscribers = await clients_on_workers(server.url, WORKERS, per_worker=3)
        publishers = await clients_on_workers(server.url, WORKERS)
        for sub in subscribers:
            assert await sub.call("subscribe", channel="order") == {"id": 1, "ok": True}
        # One publisher per worker, interleaved: per-publisher order must hold everywhere.
        for n in range(count):
            for pub in publishers:
                await pub.send(
                    {"op": "publish", "channel": "order", "data": {"from": pub.worker, "n": n}}
                )
        for pub in publishers:
            assert (await pub.call("ping"))["ok"]
        for sub in subscribers:
            seen: dict[int, list[int]] = {p.worker: [] for p in publishers}
            for _ in range(count * len(publishers)):
                push = await sub.next_push()
                assert push["type"] == "pub" and push["channel"] == "order"
                seen[push["data"]["from"]].append(push["data"]["n"])
            assert all(ns == list(range(count)) for ns in seen.values()), sub.worker
            with pytest.raises(asyncio.TimeoutError):  # and nothing more: exactly once
                await sub.next_push(limit=0.3)
        for client in subscribers + publishers:
            await client.close()

    run(scenario())


def test_publication_right_after_subscribe_reply_arrives(server: ServerProcess) -> None:
    async def scenario() -> None:
        sub, pub = await clients_on_workers(server.url, WORKERS)
        for round_ in range(30):
            channel = f"fresh-{round_}"
            reply = await sub.call("subscribe", channel=channel)
            assert reply["ok"]
            # The publisher is on the other worker; the subscribe reply promised liveness.
            await pub.send({"op": "publish", "channel": channel, "data": round_})
            push = await sub.next_push()
            assert push == {"type": "pub", "channel": channel, "data": round_}
        await sub.close()
        await pub.close()

    run(scenario())


def test_data_is_delivered_byte_for_byte(server: ServerProcess) -> None:
    raw = '{ "a" : [1, 2.50, "é\\u00e9"] ,"b":null }'

    async def scenario() -> None:
        sub, pub = await clients_on_workers(server.url, WORKERS)
        await sub.call("subscribe", channel="raw")
        await pub.send('{"op":"publish","channel":"raw","data":' + raw + "}")
        frame = await asyncio.wait_for(sub.ws.recv(), timeout(5))
        assert frame == '{"type":"pub","channel":"raw","data":' + raw + "}"
        await sub.close()
        await pub.close()

    run(scenario())


def test_unsubscribe_stops_delivery(server: ServerProcess) -> None:
    async def scenario() -> None:
        sub, pub = await clients_on_workers(server.url, WORKERS)
        await sub.call("subscribe", channel="u")
        assert (await sub.call("unsubscribe", channel="u"))["ok"]
        await pub.call("publish", channel="u", data=1)
        await pub.call("publish", channel="other", data=2)
        with pytest.raises(asyncio.TimeoutError):
            await sub.next_push(limit=0.3)
        await sub.close()
        await pub.close()

    run(scenario())


def test_bad_commands_get_error_replies_and_connection_stays(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        await client.send("{not json")
        reply = await client.reply(None)
        assert reply["error"]["code"] == 107 and "id" not in reply
        await client.send({"id": 7, "op": "fly"})
        assert (await client.reply(7))["error"]["code"] == 104
        await client.send({"id": 8, "op": "subscribe", "channel": "bad channel"})
        assert (await client.reply(8))["error"]["code"] == 107
        await client.send({"id": 9, "op": "publish", "channel": "x"})
        assert (await client.reply(9))["error"]["code"] == 107
        await client.call("subscribe", channel="twice")
        assert (await client.call("subscribe", channel="twice"))["error"]["code"] == 105
        await client.send(b"\x00binary")
        assert (await client.reply(None))["error"]["code"] == 113
        assert (await client.call("ping"))["ok"]
        await client.close()

    run(scenario())


def test_oversize_frame_closes_1009(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        bystander = await Client.connect(server.url)
        await client.send({"id": 1, "op": "publish", "channel": "big", "data": "x" * 70000})
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert (await bystander.call("ping"))["ok"]
        await bystander.close()

    run(scenario())


class _RawListener(picows.WSListener):
    """picows client that records text frames and the close code it receives."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.close_code: int | None = None

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type == picows.WSMsgType.TEXT:
            self.messages.put_nowait(frame.get_payload_as_bytes())


def test_invalid_utf8_closes_1007_picows_client(server: ServerProcess) -> None:
    async def scenario() -> None:
        transport, listener = await picows.ws_connect(_RawListener, server.url)
        hello = json.loads(await asyncio.wait_for(listener.messages.get(), timeout(5)))
        assert hello["type"] == "connected"
        # picows does not validate outgoing text, so this is a genuinely invalid frame.
        transport.send(picows.WSMsgType.TEXT, b'{"id":1,"op":"ping","x":"\xff"}')
        await asyncio.wait_for(transport.wait_disconnected(), timeout(5))
        assert listener.close_code == 1007

    run(scenario())


def test_picows_client_pubsub(server: ServerProcess) -> None:
    async def scenario() -> None:
        transport, listener = await picows.ws_connect(_RawListener, server.url)
        await asyncio.wait_for(listener.messages.get(), timeout(5))
        transport.send(picows.WSMsgType.TEXT, b'{"id":1,"op":"subscribe","channel":"p"}')
        assert json.loads(await asyncio.wait_for(listener.messages.get(), timeout(5))) == {
            "id": 1,
            "ok": True,
        }
        transport.send(picows.WSMsgType.TEXT, b'{"id":2,"op":"publish","channel":"p","data":[1]}')
        got = [
            json.loads(await asyncio.wait_for(listener.messages.get(), timeout(5)))
            for _ in range(2)
        ]
        assert {"type": "pub", "channel": "p", "data": [1]} in got
        assert {"id": 2, "ok": True} in got
        transport.disconnect()

    run(scenario())


def test_kill_9_worker_is_replaced_and_others_unaffected(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=WORKERS).start() as proc:

        async def scenario() -> None:
            victim_side, survivor = await clients_on_workers(proc.url, WORKERS)
            await survivor.call("subscribe", channel="k")
            _, body = proc.health()
            victim_pid = body["per_worker"][victim_side.worker]["pid"]
            os.kill(victim_pid, signal.SIGKILL)
            with pytest.raises(websockets.ConnectionClosed):
                await victim_side.recv(limit=5)
            await asyncio.to_thread(proc.wait_healthy, 20.0, {victim_pid})
            # The survivor kept its connection and subscription.
            assert (await survivor.call("ping"))["ok"]
            # The replacement accepts connections and its publications reach the survivor.
            replacement = (await clients_on_workers(proc.url, WORKERS))[victim_side.worker]
            await replacement.call("publish", channel="k", data="after")
            assert (await survivor.next_push()) == {"type": "pub", "channel": "k", "data": "after"}
            _, body = proc.health()
            assert body["per_worker"][victim_side.worker]["restarts"] == 1

        run(scenario())


def test_sigterm_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=WORKERS).start() as proc:

        async def scenario() -> list[int]:
            clients = await clients_on_workers(proc.url, WORKERS)
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            codes = []
            for client in clients:
                hint = await client.recv(limit=10)  # a reconnect hint comes first
                assert hint["type"] == "reconnect" and 0 <= hint["delay"] <= 10
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await client.recv(limit=10)
                assert info.value.rcvd is not None
                codes.append(info.value.rcvd.code)
            assert time.monotonic() - started < timeout(10)
            return codes

        codes: list[int] = []

        async def collect() -> None:
            codes.extend(await scenario())

        run(collect())
        assert codes == [1001] * WORKERS
        assert proc.wait_exit(10) == 0


class _SilentListener(_RawListener):
    """Never answers pings (auto pong disabled below): must be closed as idle."""


def test_idle_connections_are_pinged_and_dead_ones_closed_4502(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path, workers=1, server="ping_interval = 0.2\nidle_timeout = 0.8"
    ).start() as proc:

        async def scenario() -> None:
            alive = await Client.connect(proc.url)  # websockets answers pings itself
            transport, silent = await picows.ws_connect(
                _SilentListener, proc.url, enable_auto_pong=False
            )
            await asyncio.wait_for(transport.wait_disconnected(), timeout(10))
            assert silent.close_code == 4502
            await asyncio.sleep(1.0)  # longer than idle_timeout: pongs kept it open
            assert (await alive.call("ping"))["ok"]
            await alive.close()

        run(scenario())


def _counter(proc: ServerProcess, name: str) -> float:
    """Sum of a counter over its labels (every worker) in /metrics."""
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_no_ok_while_a_peer_cannot_confirm_the_subscription(tmp_path: Path) -> None:
    """A subscribe reply means live, whoever is starved of CPU (SIGSTOP). A stopped peer
    worker does not hold subscribes up (the forwarder confirms them): they are ok, and
    live, since what the peer publishes once it runs again arrives. A stopped bus
    forwarder cannot confirm anything: subscribes are not answered ok (error 108,
    counted); once it runs again a retry is ok, and then live."""
    extra = "[namespaces.default]\n\n[namespaces.h]\nhistory_size = 10\n"
    with ServerProcess(tmp_path, workers=WORKERS, extra=extra).start() as proc:

        async def subscribe_all(sub: Client, channels: list[str]) -> list[dict[str, Any]]:
            for n, channel in enumerate(channels):
                await sub.send({"id": 100 + n, "op": "subscribe", "channel": channel})
            return [await sub.reply(100 + n, limit=10) for n in range(len(channels))]

        async def live(sub: Client, pub: Client, channels: list[str]) -> None:
            for round_, channel in enumerate(channels):
                await pub.send({"op": "publish", "channel": channel, "data": round_})
                push = await sub.next_push()
                assert push["channel"] == channel and push["data"] == round_

        async def scenario() -> None:
            sub, pub = await clients_on_workers(proc.url, WORKERS)
            health = proc.wait_healthy()
            peer = health["per_worker"][pub.worker]["pid"]
            forwarder = health["bus_forwarder"]["pid"]
            # The history channel is owned by the subscriber's worker: a stopped owner
            # answers nothing, and its 108 is another matter (docs/guarantees.md).
            owned = next(
                f"h:peer-stopped-{n}"
                for n in range(100)
                if owner_of(f"h:peer-stopped-{n}", list(range(WORKERS))) == sub.worker
            )
            quiet = [f"peer-stopped-{n}" for n in range(5)] + [owned]
            os.kill(peer, signal.SIGSTOP)
            try:
                replies = await subscribe_all(sub, quiet)
            finally:
                os.kill(peer, signal.SIGCONT)
            assert all(reply.get("ok") for reply in replies), replies
            await live(sub, pub, quiet)
            starved = [f"starved-{n}" for n in range(5)] + ["h:starved"]
            os.kill(forwarder, signal.SIGSTOP)
            try:
                replies = await subscribe_all(sub, starved)
            finally:
                os.kill(forwarder, signal.SIGCONT)
            for reply in replies:
                assert "ok" not in reply, (reply, forwarder, proc.logs()[-3000:])
                assert reply["error"]["code"] == 108, reply
            for channel in starved:
                assert (await sub.call("subscribe", channel=channel))["ok"]
            await live(sub, pub, starved)
            await asyncio.to_thread(proc.wait_heartbeat)  # the counters reach /metrics
            assert _counter(proc, "shardws_subscribe_not_live_total") == len(starved)
            assert _counter(proc, "shardws_bus_sync_timeouts_total") >= 1
            await sub.close()
            await pub.close()

        run(scenario())


SECRET = "s3cret-for-tests-only-0123456789abcdef"
API_KEY = "k" * 24


def test_no_greeting_while_the_bus_cannot_confirm_the_user_topic(tmp_path: Path) -> None:
    """An authenticated connection's greeting means live like a subscribe reply: with
    the bus forwarder stopped (SIGSTOP) its user topic cannot be confirmed, so it gets no
    ``connected`` push but close 4506 (reconnect with backoff), counted. ``shardws.client``
    keeps reconnecting; once the forwarder runs again it is greeted, and a user-targeted
    publication and ``POST /api/disconnect`` reach it."""
    extra = f'[auth]\nsecret = "{SECRET}"\n'
    admin = f'api_key = "{API_KEY}"'
    with ServerProcess(tmp_path, workers=WORKERS, extra=extra, admin=admin).start() as proc:
        token = make_token(SECRET, "starved", 3600)
        forwarder = proc.wait_healthy()["bus_forwarder"]["pid"]

        async def post(path: str, body: dict[str, Any]) -> None:
            status, reply = await asyncio.to_thread(
                http_json, proc.admin_url + path, json.dumps(body).encode(), API_KEY
            )
            assert status == 200, reply

        async def scenario() -> None:
            received: list[Any] = []
            library = shardws_client.Client(
                proc.url,
                token=token,
                backoff=shardws_client.Backoff(0.1, 1.0, 0.1),
                on_user_message=received.append,
            )
            os.kill(forwarder, signal.SIGSTOP)
            try:
                starting = asyncio.ensure_future(library.start())
                ws = await websockets.connect(f"{proc.url}?token={token}", ping_interval=None)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    greeting = await asyncio.wait_for(ws.recv(), timeout(10))
                    raise AssertionError(f"greeted while not live: {greeting}")
                assert closed.value.rcvd is not None, "closed without a close frame"
                assert closed.value.rcvd.code == 4506, closed.value.rcvd
                assert "reconnect" in closed.value.rcvd.reason
                # The library's first attempt was refused the same way: it tries again.
                await wait_until_async(lambda: library.attempts >= 2, timeout=10)
                assert not starting.done()
            finally:
                os.kill(forwarder, signal.SIGCONT)
            await asyncio.wait_for(starting, timeout(15))
            await post("/api/publish", {"user": "starved", "data": "live"})
            await wait_until_async(lambda: received == ["live"], timeout=5)
            await post("/api/disconnect", {"user": "starved"})
            await wait_until_async(lambda: library.closed is not None, timeout=5)
            assert library.closed is not None and library.closed.code == 4009, library.closed
            await library.close()
            await asyncio.to_thread(proc.wait_heartbeat)  # the counters reach /metrics
            # The raw connection and each refused attempt of the library's.
            assert 2 <= _counter(proc, "shardws_subscribe_not_live_total") <= library.attempts

        run(scenario())


def _bus_reads(proc: ServerProcess) -> dict[str, float]:
    """``shardws_bus_reads_total`` by worker label, once every worker copied its count."""
    proc.wait_heartbeat()
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shardws_bus_reads_total"
    }


@pytest.mark.parametrize("workers", [2, 4])
def test_a_subscription_and_a_publication_cost_only_the_workers_concerned(
    tmp_path: Path, workers: int
) -> None:
    """Counted, not timed: how many server processes' Python read anything on the bus
    for a subscription and for a publication, as the worker count grows. A subscribe
    on worker 0 is read only by worker 0 (its own barrier echo); a publication from
    worker 1 to that channel only by worker 0 (the subscriber's); the others, however
    many, read nothing."""
    with ServerProcess(tmp_path, workers=workers).start() as proc:

        def readers(before: dict[str, float], after: dict[str, float]) -> list[str]:
            return sorted(worker for worker, reads in after.items() if reads > before[worker])

        async def scenario() -> None:
            sub, pub, *_others = await clients_on_workers(proc.url, workers)
            before = await asyncio.to_thread(_bus_reads, proc)
            assert (await sub.call("subscribe", channel="counted"))["ok"]
            subscribed = await asyncio.to_thread(_bus_reads, proc)
            assert readers(before, subscribed) == [str(sub.worker)]
            await pub.call("publish", channel="counted", data=1)
            assert (await sub.next_push())["data"] == 1
            published = await asyncio.to_thread(_bus_reads, proc)
            assert readers(subscribed, published) == [str(sub.worker)]
            assert len(published) == workers

        run(scenario())
