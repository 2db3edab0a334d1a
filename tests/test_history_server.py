"""Channels with history on real servers: owners, offsets, recovery across kills and
reloads, the history op, presence.

A publisher streams numbered messages to one channel while workers are killed or
replaced; subscribers on every worker reconnect with ``recover`` and must end up with
every number exactly once, in order, or be told plainly (``recovered: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets
from redisproc import REDIS_CLUSTER
from serverproc import ServerProcess, http_json
from toolkit import DEFAULT_ENGINE, ENGINES, run, timeout, wait_until
from wsclient import Client, clients_on_workers

from shardws.pure.history import owner_of

NAMESPACE = """
[namespaces.default]

[namespaces.chat]
history_size = 10000
history_ttl = 600
presence = true
join_leave = false
"""
CHANNEL = "chat:stream"


def _server(tmp_path: Path, workers: int, engine: str = DEFAULT_ENGINE) -> ServerProcess:
    return ServerProcess(tmp_path, workers=workers, extra=NAMESPACE, engine=engine).start()


def _pids(proc: ServerProcess) -> dict[int, int]:
    return {w["worker"]: w["pid"] for w in proc.wait_healthy()["per_worker"]}


class Retry(Exception):
    """The server answered a subscribe with an error (e.g. owner being replaced)."""


class Subscriber:
    """A client that stays subscribed through anything: on every disconnect it
    reconnects and subscribes with ``recover`` from the last position it saw."""

    def __init__(self, url: str, first: Client) -> None:
        self.url = url
        self.client: Client | None = first
        self.epoch = ""
        self.offset = 0
        self.data: list[Any] = []
        self.recoveries: list[bool] = []  # ``recovered`` of each re-subscribe
        self.epochs: set[str] = set()
        self.reconnects = 0

    async def subscribe(self) -> None:
        assert self.client is not None
        recover = {"epoch": self.epoch, "offset": self.offset} if self.epoch else None
        fields: dict[str, Any] = {"channel": CHANNEL}
        if recover is not None:
            fields["recover"] = recover
        reply = await self.client.call("subscribe", **fields)
        if not reply.get("ok"):
            raise Retry(reply)
        if recover is not None:
            self.recoveries.append(reply["recovered"])
        if not self.epoch or not reply.get("recovered", True):
            self.epoch, self.offset = reply["epoch"], reply["offset"]
        self.epochs.add(reply["epoch"])

    def _take(self, push: dict[str, Any]) -> None:
        if push.get("type") != "pub":
            return
        if push["epoch"] != self.epoch:  # the owner lost its history: a new epoch
            self.epoch = push["epoch"]
            self.epochs.add(self.epoch)
        else:
            assert push["offset"] == self.offset + 1, (push, self.offset)
        self.offset = push["offset"]
        self.data.append(push["data"])

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            try:
                if self.client is None:
                    self.client = await Client.connect(self.url)
                    await self.subscribe()
                while self.client.pushes:
                    self._take(self.client.pushes.popleft())
                self._take(await self.client.recv(0.2))
            except TimeoutError:
                continue
            except (websockets.ConnectionClosed, OSError, Retry):
                if self.client is not None:
                    with contextlib.suppress(Exception):
                        await self.client.close()
                self.client = None
                self.reconnects += 1
                await asyncio.sleep(0.05)

    async def drain(self, count: int, limit: float = 15) -> None:
        deadline = time.monotonic() + timeout(limit)
        while len(self.data) < count and time.monotonic() < deadline:
            stop = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.run(stop), 0.5)


async def _publish_all(client: Client, count: int, pace: float) -> int:
    """Publish 0..count-1 with idempotency keys, retrying each until it is sequenced."""
    retries = 0
    for n in range(count):
        for _ in range(200):
            reply = await client.call("publish", channel=CHANNEL, data=n, idem=f"n{n}")
            if reply.get("ok"):
                break
            retries += 1
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"publication {n} never accepted: {reply}")
        await asyncio.sleep(pace)
    return retries


@pytest.mark.engines(*ENGINES, REDIS_CLUSTER)  # the hub on Redis Cluster too
def test_publish_recover_history_presence_basics(tmp_path: Path, engine: str) -> None:
    with _server(tmp_path, 2, engine) as proc:

        async def main() -> None:
            a, b = await clients_on_workers(proc.url, 2)
            sub_a, sub_b = (
                (await a.call("subscribe", channel=CHANNEL)),
                (await b.call("subscribe", channel=CHANNEL)),
            )
            assert sub_a["epoch"] == sub_b["epoch"] and sub_a["offset"] == 0
            epoch = sub_a["epoch"]
            for n in range(3):
                reply = await b.call("publish", channel=CHANNEL, data={"n": n}, idem=f"k{n}")
                assert reply == {"id": reply["id"], "ok": True, "offset": n + 1, "epoch": epoch}
            again = await a.call("publish", channel=CHANNEL, data="retry", idem="k1")
            assert again["offset"] == 2  # the retry was recognised: nothing new published
            for client in (a, b):
                got = [await client.next_push() for _ in range(3)]
                assert [(p["offset"], p["data"]) for p in got] == [
                    (i + 1, {"n": i}) for i in range(3)
                ]
            page = await a.call("history", channel=CHANNEL, limit=2, reverse=True)
            assert [p["offset"] for p in page["publications"]] == [3, 2]
            late = await Client.connect(proc.url)
            reply = await late.call(
                "subscribe", channel=CHANNEL, recover={"epoch": epoch, "offset": 1}
            )
            assert reply["recovered"] is True and reply["offset"] == 3
            assert [(await late.next_push())["offset"] for _ in range(2)] == [2, 3]
            stale = await Client.connect(proc.url)
            reply = await stale.call(
                "subscribe", channel=CHANNEL, recover={"epoch": "not-the-epoch", "offset": 2}
            )
            assert reply["recovered"] is False and reply["epoch"] == epoch
            presence = await a.call("presence", channel=CHANNEL)
            assert len(presence["members"]) == 4
            stats = await b.call("presence_stats", channel=CHANNEL)
            assert stats["clients"] == 4
            # Bad input: plain errors, the connection stays.
            bad = await a.call("subscribe", channel="news", recover={"epoch": "x", "offset": 0})
            assert bad["error"]["code"] == 107
            bad = await a.call("publish", channel=CHANNEL, data=1, idem=5)
            assert bad["error"]["code"] == 107
            bad = await a.call("history", channel="news")
            assert bad["error"]["code"] == 108
            bad = await a.call("presence", channel="news")
            assert bad["error"]["code"] == 108
            for client in (a, b, late, stale):
                await client.close()

        run(main(), 30)


def test_killing_non_owner_workers_loses_nothing(tmp_path: Path, engine: str) -> None:
    """Ten SIGKILLs of workers other than the channel's owner under a stream: every
    subscriber holds every message exactly once and in order after recovering."""
    count = 400
    with _server(tmp_path, 3, engine) as proc:
        owner = owner_of(CHANNEL, [0, 1, 2])

        async def main() -> None:
            # Three per worker: each kill moves its clients at random (some onto the
            # owner's worker, where no kill reaches them), so six left the count of kills
            # that hit a client to chance on a loaded machine.
            placed = await clients_on_workers(proc.url, 3, per_worker=3)
            publisher = next(c for c in placed if c.worker == owner)
            subscribers = [Subscriber(proc.url, c) for c in placed if c is not publisher]
            for sub in subscribers:
                await sub.subscribe()
            stop = asyncio.Event()
            readers = [asyncio.create_task(s.run(stop)) for s in subscribers]
            publishing = asyncio.create_task(_publish_all(publisher, count, 0.01))
            victims = [w for w in (0, 1, 2) if w != owner]
            for kill in range(10):
                await asyncio.sleep(0.35)
                pid = (await asyncio.to_thread(_pids, proc))[victims[kill % 2]]
                proc_kill(pid)
            await publishing
            stop.set()
            await asyncio.gather(*readers)
            for sub in subscribers:
                await sub.drain(count)
                assert sub.data == list(range(count)), (sub.reconnects, sub.data[:20])
                assert all(sub.recoveries), sub.recoveries
                assert len(sub.epochs) == 1
            assert sum(s.reconnects for s in subscribers) >= 5  # kills did hit them

        run(main(), 90)
        assert proc.health()[1]["per_worker"][owner]["restarts"] == 0


def proc_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_owner_killed_means_a_new_epoch_never_a_silent_gap(tmp_path: Path, engine: str) -> None:
    """On the mesh the history dies with its owner worker: a new epoch, told to the
    recovering client. On the hub no worker owns it (Redis does): the same kill keeps
    the epoch, and the client recovers."""
    with _server(tmp_path, 2, engine) as proc:
        owner = owner_of(CHANNEL, [0, 1])
        other = 1 - owner

        async def main() -> None:
            placed = await clients_on_workers(proc.url, 2, per_worker=2)
            on_owner = next(c for c in placed if c.worker == owner)
            on_other = [c for c in placed if c.worker == other]
            publisher = on_other[1]
            reply = await on_owner.call("subscribe", channel=CHANNEL)
            watcher = on_other[0]
            assert (await watcher.call("subscribe", channel=CHANNEL))["ok"]
            old_epoch = reply["epoch"]
            for n in range(5):
                assert (await publisher.call("publish", channel=CHANNEL, data=n))["ok"]
            assert [(await on_owner.next_push())["offset"] for _ in range(5)] == [1, 2, 3, 4, 5]
            assert [(await watcher.next_push())["data"] for _ in range(5)] == list(range(5))
            dead = (await asyncio.to_thread(_pids, proc))[owner]
            proc_kill(dead)
            await asyncio.to_thread(proc.wait_healthy, 20.0, {dead})
            back = await Client.connect(proc.url)
            reply = await back.call(
                "subscribe", channel=CHANNEL, recover={"epoch": old_epoch, "offset": 5}
            )
            sent = await _publish_all(publisher, 1, 0)
            push = await watcher.next_push()
            if engine == "redis":  # Redis kept the history: nothing changed
                assert reply.get("recovered") is True and reply["epoch"] == old_epoch, reply
                assert push["epoch"] == old_epoch and push["offset"] == 6, (push, sent)
            else:
                # The history died with the owner: a recovering client is told so.
                assert reply.get("recovered") is False and reply["epoch"] != old_epoch, reply
                # A subscriber that stayed connected sees the new epoch on the next push.
                assert push["epoch"] == reply["epoch"] and push["offset"] == 1, (push, sent)
            for client in (*placed, back):
                await client.close()

        run(main(), 40)


def test_sighup_roll_keeps_history_and_epoch(tmp_path: Path, engine: str) -> None:
    count = 300
    with _server(tmp_path, 2, engine) as proc:
        proc.wait_log(r"process\(es\) ready")

        async def main() -> None:
            placed = await clients_on_workers(proc.url, 2, per_worker=2)
            subscribers = [Subscriber(proc.url, c) for c in placed[1:]]
            for sub in subscribers:
                await sub.subscribe()
            epoch = subscribers[0].epoch
            stop = asyncio.Event()
            readers = [asyncio.create_task(s.run(stop)) for s in subscribers]
            publisher = ReconnectingPublisher(proc.url, placed[0])
            publishing = asyncio.create_task(publisher.publish_all(count, 0.01))
            await asyncio.sleep(0.5)
            proc.signal(signal.SIGHUP)
            await publishing
            await asyncio.to_thread(proc.wait_log, "reload complete", 1, 60)
            stop.set()
            await asyncio.gather(*readers)
            for sub in subscribers:
                await sub.drain(count)
                assert sub.data == list(range(count)), (sub.reconnects, sub.data[:20])
                assert sub.recoveries and all(sub.recoveries), sub.recoveries
                assert sub.epochs == {epoch}
            if engine == "mesh":  # on the hub Redis holds the history, not the workers
                assert "continued 1 ring(s)" in proc.logs()

        run(main(), 90)


class ReconnectingPublisher:
    """Publishes with idempotency keys through a connection that may be drained."""

    def __init__(self, url: str, client: Client) -> None:
        self.url = url
        self.client: Client | None = client

    async def publish_all(self, count: int, pace: float) -> None:
        for n in range(count):
            for _ in range(400):
                try:
                    if self.client is None:
                        self.client = await Client.connect(self.url)
                    reply = await self.client.call("publish", channel=CHANNEL, data=n, idem=f"n{n}")
                    if reply.get("ok"):
                        break
                except (websockets.ConnectionClosed, OSError, TimeoutError, AssertionError):
                    self.client = None
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"publication {n} never accepted")
            await asyncio.sleep(pace)


def test_presence_matches_live_connections_after_a_kill(tmp_path: Path) -> None:
    with _server(tmp_path, 2) as proc:

        async def main() -> None:
            placed = await clients_on_workers(proc.url, 2, per_worker=3)
            for client in placed:
                assert (await client.call("subscribe", channel="chat:room"))["ok"]
            survivor = next(c for c in placed if c.worker == 0)
            proc_kill((await asyncio.to_thread(_pids, proc))[1])
            members = (await survivor.call("presence", channel="chat:room"))["members"]
            live = {c.client_id for c in placed if c.worker == 0}
            assert {m["client"] for m in members} == live  # no zombies, at once
            stats = await survivor.call("presence_stats", channel="chat:room")
            assert stats["clients"] == 3
            for client in placed:
                with contextlib.suppress(Exception):
                    await client.close()

        run(main(), 30)


@pytest.mark.engines(*ENGINES, REDIS_CLUSTER)  # the hub on Redis Cluster too
def test_api_publications_to_history_channels_are_sequenced(tmp_path: Path, engine: str) -> None:
    key = "k" * 24
    with ServerProcess(
        tmp_path, workers=2, extra=NAMESPACE, admin=f'api_key = "{key}"', engine=engine
    ).start() as proc:

        async def main() -> None:
            a, b = await clients_on_workers(proc.url, 2)
            for client in (a, b):
                assert (await client.call("subscribe", channel=CHANNEL))["ok"]
            for n in range(3):
                request = urllib.request.Request(
                    proc.admin_url + "/api/publish",
                    data=json.dumps({"channel": CHANNEL, "data": n}).encode(),
                    headers={"X-API-Key": key, "Content-Type": "application/json"},
                )
                await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
            for client in (a, b):
                got = [await client.next_push() for _ in range(3)]
                assert [(p["offset"], p["data"]) for p in got] == [(1, 0), (2, 1), (3, 2)]

            def get(path: str) -> tuple[int, Any]:
                return http_json(proc.admin_url + path, key=key)

            status, body = await asyncio.to_thread(get, f"/api/history?channel={CHANNEL}&limit=2")
            assert status == 200 and [p["data"] for p in body["publications"]] == [0, 1]
            assert body["offset"] == 3
            status, body = await asyncio.to_thread(get, f"/api/presence?channel={CHANNEL}")
            assert status == 200 and body["clients"] == 2 and body["complete"]
            assert {m["client"] for m in body["members"]} == {a.client_id, b.client_id}
            status, body = await asyncio.to_thread(get, "/api/history?channel=news")
            assert status == 400 and "history_size is 0" in body["error"]
            status, body = await asyncio.to_thread(get, f"/api/history?channel={CHANNEL}&limit=0")
            assert status == 400 and "limit" in body["error"]
            status, body = await asyncio.to_thread(get, "/api/presence?channel=bad%20name")
            assert status == 400
            for client in (a, b):
                await client.close()

        run(main(), 30)


@pytest.mark.engines("mesh")  # the mesh's owners hand rings over; on the hub Redis keeps them
def test_scale_down_and_up_hands_the_history_over(tmp_path: Path) -> None:
    """Reloads 3 -> 2 -> 3 workers move a channel from worker 2 to worker 1 and back:
    its history and epoch move with it, so recovery still works."""
    channel = "chat:s2"
    assert owner_of(channel, [0, 1, 2]) == 2 and owner_of(channel, [0, 1]) == 1
    with ServerProcess(
        tmp_path, workers=3, extra=NAMESPACE, server="max_workers = 3"
    ).start() as proc:
        proc.wait_log(r"process\(es\) ready", 1, 60)

        async def publish(client: Client, n: int) -> dict[str, Any]:
            for _ in range(100):
                reply = await client.call("publish", channel=channel, data=n, idem=f"s{n}")
                if reply.get("ok"):
                    return reply
                await asyncio.sleep(0.05)
            raise AssertionError(f"publication {n} never accepted")

        async def roll_to(workers: int, completed: int, moved: str) -> None:
            """Reload to ``workers``; wait until the log line ``moved`` says the ring moved."""
            text = proc.config_path.read_text()
            proc.config_path.write_text(
                text.replace(f"workers = {5 - workers}", f"workers = {workers}", 1)
            )
            proc.signal(signal.SIGHUP)
            await asyncio.to_thread(proc.wait_log, "reload complete", completed, 60)
            await asyncio.to_thread(proc.wait_log, moved)  # a heartbeat or two

        async def main() -> None:
            client = await Client.connect(proc.url)
            first = await publish(client, 0)
            epoch = first["epoch"]
            await roll_to(2, 1, r"took over 1 ring\(s\) of retired worker 2")
            assert "took over 1 ring(s) of retired worker 2" in proc.logs()
            client = await Client.connect(proc.url)
            assert (await publish(client, 1)) == {**first, "id": 1, "offset": 2}
            await roll_to(3, 2, r"handed 1 ring\(s\) over to worker")
            client = await Client.connect(proc.url)
            assert (await publish(client, 2))["offset"] == 3
            late = await Client.connect(proc.url)
            reply = await late.call(
                "subscribe", channel=channel, recover={"epoch": epoch, "offset": 0}
            )
            assert reply["recovered"] is True and reply["epoch"] == epoch
            assert [(await late.next_push())["data"] for _ in range(3)] == [0, 1, 2]

        run(main(), 90)


@pytest.mark.engines(*ENGINES, REDIS_CLUSTER)  # the hub on Redis Cluster too
def test_lost_bus_messages_are_repaired_from_the_owner(tmp_path: Path, engine: str) -> None:
    """A worker that stops reading (SIGSTOP) while the owner floods a channel loses bus
    messages at the high-water mark, the last ones included (no later offset reveals
    them). Its subscribers still get every publication, in order: the position check
    against the owner finds the gap and the worker repairs it."""
    channel = "chat:flood"
    limits = "[limits]\ncommands_per_second = 1e9\ncommand_burst = 1000000000\n"
    count = 3000
    with ServerProcess(
        tmp_path, workers=2, server="bus_hwm = 1", extra=NAMESPACE + limits, engine=engine
    ).start() as proc:
        owner = owner_of(channel, [0, 1])  # on the hub: a worker like another

        async def main() -> None:
            placed = await clients_on_workers(proc.url, 2, per_worker=3)
            publisher = next(c for c in placed if c.worker == owner)
            subscribers = [c for c in placed if c.worker != owner]
            for sub in subscribers:
                assert (await sub.call("subscribe", channel=channel))["ok"]
            stopped = _pids(proc)[1 - owner]
            os.kill(stopped, signal.SIGSTOP)
            try:
                for n in range(count):
                    await publisher.send(
                        {"id": n + 10, "op": "publish", "channel": channel, "data": [n, "x" * 200]}
                    )
                await asyncio.sleep(1.0)  # the stopped worker's pipe overflows meanwhile
            finally:
                os.kill(stopped, signal.SIGCONT)
            for sub in subscribers:
                got = [(await sub.next_push(10))["offset"] for _ in range(count)]
                assert got == list(range(1, count + 1))
            await asyncio.to_thread(proc.wait_heartbeat)  # the counters reach /metrics
            with urllib.request.urlopen(
                proc.admin_url + "/metrics", timeout=timeout(5)
            ) as response:
                text = response.read().decode()
            repairs = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("shardws_history_repairs_total")
            )
            assert repairs >= 1  # the loss happened and was repaired, not avoided
            for client in placed:
                await client.close()

        run(main())


API_KEY = "k" * 24


def _api_server(tmp_path: Path, engine: str = DEFAULT_ENGINE) -> ServerProcess:
    return ServerProcess(
        tmp_path, workers=2, extra=NAMESPACE, admin=f'api_key = "{API_KEY}"', engine=engine
    ).start()


def _post_publish(proc: ServerProcess, body: dict[str, Any]) -> tuple[int, Any, str | None]:
    """POST ``body`` to ``/api/publish``: the status, the JSON answer and its
    ``Retry-After`` header."""
    request = urllib.request.Request(
        proc.admin_url + "/api/publish",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout(15)) as response:
            return response.status, json.loads(response.read()), response.headers["Retry-After"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers["Retry-After"]


def _history(proc: ServerProcess, channel: str) -> dict[str, Any]:
    """The channel's whole history (up to 1000 publications) through ``/api/history``."""
    status, body = http_json(
        f"{proc.admin_url}/api/history?channel={channel}&limit=1000", key=API_KEY
    )
    assert status == 200, body
    return body


def test_api_publish_to_a_history_channel_answers_where_it_is_stored(
    tmp_path: Path, engine: str
) -> None:
    """A 200 carries the offset and epoch the owner stored the publication at; the same
    ``idem`` again gets the same position and stores nothing; a bad ``idem`` is a 400
    that names it."""
    with _api_server(tmp_path) as proc:
        status, first, _ = _post_publish(proc, {"channel": CHANNEL, "data": "a", "idem": "k1"})
        assert status == 200, first
        assert first["ok"] and first["offset"] == 1 and first["epoch"]
        assert first["positions"] == {CHANNEL: {"epoch": first["epoch"], "offset": 1}}
        status, again, _ = _post_publish(proc, {"channel": CHANNEL, "data": "a", "idem": "k1"})
        assert (status, again) == (200, first)
        both = {"channels": [CHANNEL, "news"], "data": "b", "idem": "k2"}
        status, answer, _ = _post_publish(proc, both)
        assert status == 200 and answer["channels"] == 2
        assert answer["positions"] == {CHANNEL: {"epoch": first["epoch"], "offset": 2}}
        assert "offset" not in answer  # two targets: the positions say which is where
        body = _history(proc, CHANNEL)
        assert [(p["offset"], p["data"]) for p in body["publications"]] == [(1, "a"), (2, "b")]
        for bad in (7, "", "x" * 65):
            status, answer, _ = _post_publish(proc, {"channel": CHANNEL, "data": 1, "idem": bad})
            assert status == 400 and '"idem"' in answer["error"], answer
        assert _history(proc, CHANNEL)["offset"] == 2  # nothing stored by the bad ones


@pytest.mark.engines("mesh")  # an owner worker; the hub's case: test_redishistory.py
def test_an_owner_that_does_not_answer_gets_a_503_never_a_200(tmp_path: Path) -> None:
    """The channel's owner stopped (SIGSTOP): the API answers 503 with ``Retry-After``
    after its bounded wait, and publishes nothing on the request's plain channel. Once
    the owner runs again, the retry with the same ``idem`` gets one position, and the
    history holds the publication once (the admin's own attempts queued in the owner's
    inbox meanwhile are answered from the ring)."""
    with _api_server(tmp_path) as proc:
        owner = owner_of(CHANNEL, [0, 1])

        async def main() -> None:
            (listener,) = [c for c in await clients_on_workers(proc.url, 2) if c.worker != owner]
            assert (await listener.call("subscribe", channel="news"))["ok"]
            status, first, _ = await asyncio.to_thread(
                _post_publish, proc, {"channel": CHANNEL, "data": 0}
            )
            assert status == 200, first
            stopped = _pids(proc)[owner]
            body = {"channels": [CHANNEL, "news"], "data": 1, "idem": "once"}
            os.kill(stopped, signal.SIGSTOP)
            try:
                status, answer, retry_after = await asyncio.to_thread(_post_publish, proc, body)
            finally:
                os.kill(stopped, signal.SIGCONT)
            assert status == 503 and retry_after == "1", (status, answer)
            assert answer["channels"] == [CHANNEL] and 'same "idem"' in answer["error"]
            with contextlib.suppress(TimeoutError):
                push = await listener.next_push(0.5)
                raise AssertionError(f"the plain channel got a 503'd publication: {push}")
            status, answer, _ = await asyncio.to_thread(_post_publish, proc, body)
            assert status == 200, answer
            assert answer["positions"] == {CHANNEL: {"epoch": first["epoch"], "offset": 2}}
            assert (await listener.next_push())["data"] == 1
            history = await asyncio.to_thread(_history, proc, CHANNEL)
            assert [p["data"] for p in history["publications"]] == [0, 1]
            await listener.close()

        run(main(), 60)


def test_sighup_roll_under_an_http_publish_stream_every_200_is_in_the_history(
    tmp_path: Path, engine: str
) -> None:
    """``shardws.Publisher`` over HTTP publishes a numbered stream to a history channel
    while SIGHUP replaces every worker (the owner too) and the admin. Every publication
    gets a 200 (the Publisher retries 503s and broken connections with its ``idem``),
    and each 200's position holds that very publication in the history afterwards:
    nothing answered stored is missing, nothing is stored twice, the epoch is kept."""
    from shardws import Publisher

    limit = 3000  # publications at most (the stream ends 20 after the reload completed)
    with _api_server(tmp_path, engine) as proc:
        proc.wait_log(r"process\(es\) ready")
        rolled = threading.Event()

        def stream(answers: list[dict[str, Any]], retries: list[int]) -> None:
            with Publisher(proc.admin_url, api_key=API_KEY, retry_timeout=60) as publisher:
                after = 0
                for n in range(limit):
                    reply = publisher.publish(CHANNEL, n)
                    assert reply is not None
                    answers.append(reply)
                    after += rolled.is_set()
                    if after >= 20:
                        break
                    time.sleep(0.01)
                retries.append(publisher.retries)

        async def main() -> None:
            answers: list[dict[str, Any]] = []
            retries: list[int] = []
            publishing = asyncio.create_task(asyncio.to_thread(stream, answers, retries))
            deadline = time.monotonic() + timeout(10)
            while len(answers) < 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            proc.signal(signal.SIGHUP)
            await asyncio.to_thread(proc.wait_log, "reload complete", 1, 60)
            rolled.set()
            await publishing
            count = len(answers)
            assert count < limit  # the stream outlasted the roll
            history = await asyncio.to_thread(_history, proc, CHANNEL)
            stored = {(p["epoch"], p["offset"]): p["data"] for p in history["publications"]}
            for n, answer in enumerate(answers):
                assert stored.get((answer["epoch"], answer["offset"])) == n, (n, answer)
            assert [p["data"] for p in history["publications"]] == list(range(count))
            assert {a["epoch"] for a in answers} == {history["epoch"]}
            print(f"{count} HTTP publications, {retries[0]} sent again during the roll")

        run(main(), 120)


def test_sighup_roll_under_an_ingress_push_stream_loses_nothing(
    tmp_path: Path, engine: str
) -> None:
    """The ingress's PUSH form has no answer, but a roll costs it nothing: the admin keeps
    running (its configuration is unchanged) and holds the requests for an owner that is
    being replaced until the owner's next process is READY with the saved ring. Every
    publication is in the history once, in order, in the same epoch."""
    from serverproc import free_port

    from shardws import Publisher

    bind = f"tcp://127.0.0.1:{free_port()}"
    with ServerProcess(
        tmp_path,
        workers=2,
        extra=NAMESPACE + f'[ingress]\nbind = "{bind}"\n',
        admin=f'api_key = "{API_KEY}"',
        engine=engine,
    ).start() as proc:
        proc.wait_log(r"process\(es\) ready")
        first = _post_publish(proc, {"channel": CHANNEL, "data": -1})[1]
        sent = 0
        with Publisher(bind) as publisher:
            proc.signal(signal.SIGHUP)
            deadline = time.monotonic() + timeout(60)
            while "reload complete" not in proc.logs() and time.monotonic() < deadline:
                publisher.publish(CHANNEL, sent)
                sent += 1
                time.sleep(0.005)
            for _ in range(20):
                publisher.publish(CHANNEL, sent)
                sent += 1
        wait_until(lambda: _history(proc, CHANNEL)["offset"] >= sent + 1, 15, 0.1, "not stored")
        history = _history(proc, CHANNEL)
        assert [p["data"] for p in history["publications"]] == [-1, *range(sent)]
        assert history["epoch"] == first["epoch"]
        assert "reload: keeping the admin" in proc.logs()
