"""History channels on the Redis hub (``server.redishistory``) under faults: the bars of
docs/guarantees.md, "History on the Redis hub".

Two hosts (one worker each) join through a real ``redis-server``. In each case a
publisher streams numbered publications (with ``idem`` keys, retried until answered)
through both hosts to one channel while subscribers on both hosts record every
(epoch, offset) -> data pair they are given, live or recovered, and reconnect with
``recover`` when they are closed. A fault strikes mid-stream:

* lossless -- every shardws process of every host SIGKILLed and restarted; Redis with
  ``appendonly yes`` + ``appendfsync always`` SIGKILLed and restarted: every subscriber
  holds every acknowledged publication once, in order, in one epoch, each recovery
  ``recovered: true``;
* lossy -- Redis restarted without persistence, from an older RDB file, with
  ``appendfsync everysec`` after a SIGKILL, and a Sentinel failover to a replica that
  was stopped (SIGSTOP) while the master took publications: a new epoch, every
  ``recovered: false`` with a reason, and never one (epoch, offset) for two data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from redisproc import RedisServer, SentinelServer
from serverproc import ServerProcess, http_json, loopback_cluster
from toolkit import run, timeout, wait_until
from wsclient import Client

API_KEY = "k" * 24
HISTORY = "[namespaces.hist]\nhistory_size = 1000\nhistory_ttl = 600\n"
LIMITS = "[limits]\ncommands_per_second = 1e9\ncommand_burst = 1000000000\n"
COUNT = 300  # publications per case
FAULT_AT = 100  # the fault strikes after this many were acknowledged


def _hub(redis: str) -> str:
    return f"{HISTORY}{LIMITS}[cluster.redis]\n{redis}\nreconnect_max = 0.3\ntimeout = 1\n"


Hosts = tuple[ServerProcess, ServerProcess]


def _start(hosts: Hosts) -> None:
    for host in hosts:
        host.start()
    for host in hosts:
        wait_until(
            lambda host=host: host.health()[1]["cluster"].get("redis_up"),
            30,
            0.1,
            lambda: f"the hub never reached Redis: {hosts[0].logs()[-2000:]}",
        )


def _stop(hosts: Hosts) -> None:
    for host in hosts:
        host.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis of the module's hosts: each case restarts it on the same port with its
    own persistence settings (in a directory of its own)."""
    with RedisServer(tmp_path_factory.mktemp("redis")).start() as server:
        yield server


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Hosts]:
    tmp = tmp_path_factory.mktemp("hosts")
    pair = loopback_cluster(
        tmp, _hub(f'address = "{redis.address}"'), engine="redis", admin=f'api_key = "{API_KEY}"'
    )
    try:
        _start(pair)
        yield pair
    finally:
        _stop(pair)


def _restart_redis(redis: RedisServer, directory: Path, *settings: str) -> None:
    """Redis again on its port, in ``directory`` with ``settings`` (its data there)."""
    redis.kill()
    redis.directory, redis.log_path = directory, directory / "redis.log"
    redis.extra = settings
    redis.start()


# -- the stream and its witnesses ---------------------------------------------------------


@dataclass
class Recorder:
    """A subscriber that records what it is given and reconnects with ``recover``."""

    url: str
    channel: str
    pairs: dict[tuple[str, int], Any] = field(default_factory=dict)
    data: list[Any] = field(default_factory=list)  # in the order given
    epochs: list[str] = field(default_factory=list)
    recoveries: list[tuple[bool, str | None]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # a hole or a double within an epoch
    epoch: str = ""
    offset: int = 0
    client: Client | None = None

    async def subscribe(self) -> None:
        self.client = await Client.connect(self.url)
        fields: dict[str, Any] = {"channel": self.channel}
        if self.epoch:
            fields["recover"] = {"epoch": self.epoch, "offset": self.offset}
        reply = await self.client.call("subscribe", **fields)
        if not reply.get("ok"):
            raise ConnectionError(reply)
        if self.epoch:
            self.recoveries.append((reply["recovered"], reply.get("reason")))
        if not self.epoch or not reply["recovered"]:
            self._at(reply["epoch"], reply["offset"])

    def _at(self, epoch: str, offset: int) -> None:
        if epoch != self.epoch:
            self.epochs.append(epoch)
        self.epoch, self.offset = epoch, offset

    def take(self, push: dict[str, Any]) -> None:
        if push.get("type") != "pub":
            return
        epoch, offset, data = push["epoch"], push["offset"], push["data"]
        if epoch != self.epoch:
            if offset != 1:  # a new epoch starts at 1 for a subscriber that follows it
                self.faults.append(f"entered {epoch} at {offset}")
            self._at(epoch, 0)
        if offset != self.offset + 1:
            self.faults.append(f"{epoch}: {offset} after {self.offset}")
        self.offset = offset
        self.pairs[(epoch, offset)] = data
        self.data.append(data)

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            try:
                if self.client is None:
                    await self.subscribe()
                assert self.client is not None
                while self.client.pushes:
                    self.take(self.client.pushes.popleft())
                self.take(await self.client.recv(0.2))
            except TimeoutError:
                continue
            except (websockets.ConnectionClosed, OSError, ConnectionError):
                if self.client is not None:
                    with contextlib.suppress(Exception):
                        await self.client.close()
                self.client = None
                await asyncio.sleep(0.1)


@dataclass
class Stream:
    """Publishes 0..COUNT-1 through both hosts in turn, each retried with its ``idem``
    until answered; ``acks[n]`` is (epoch, offset) of publication ``n``."""

    urls: list[str]
    channel: str
    acks: list[tuple[str, int]] = field(default_factory=list)
    clients: dict[str, Client] = field(default_factory=dict)

    async def _publish(self, n: int) -> tuple[str, int]:
        url = self.urls[n % len(self.urls)]
        deadline = time.monotonic() + timeout(40)
        while time.monotonic() < deadline:
            try:
                if url not in self.clients:
                    self.clients[url] = await Client.connect(url)
                reply = await self.clients[url].call(
                    "publish", channel=self.channel, data=n, idem=f"{self.channel}-{n}"
                )
                if reply.get("ok"):
                    return reply["epoch"], reply["offset"]
            except (websockets.ConnectionClosed, OSError, TimeoutError):
                self.clients.pop(url, None)
            await asyncio.sleep(0.05)
        raise AssertionError(f"publication {n} never acknowledged")

    async def run(self, faults: dict[int, Callable[[], object]]) -> None:
        """The stream, with ``faults[n]`` done before publication ``n``."""
        for n in range(COUNT):
            if n in faults:
                await asyncio.to_thread(faults[n])
            self.acks.append(await self._publish(n))
            await asyncio.sleep(0.003)

    async def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()


async def _witness(
    hosts: Hosts, channel: str, *faults: Callable[[], object]
) -> tuple[Stream, list[Recorder]]:
    """The stream with ``faults`` from FAULT_AT on (50 publications apart), two
    recorders per host; returns once every recorder holds the last publication (or
    after a bounded wait)."""
    recorders = [Recorder(host.url, channel) for host in hosts for _ in range(2)]
    for recorder in recorders:  # Redis may have just restarted: until the workers reach it
        deadline = time.monotonic() + timeout(20)
        while True:
            try:
                await recorder.subscribe()
                break
            except ConnectionError:
                assert recorder.client is not None
                await recorder.client.close()
                assert time.monotonic() < deadline, "never subscribed"
                await asyncio.sleep(0.1)
    stop = asyncio.Event()
    readers = [asyncio.create_task(r.run(stop)) for r in recorders]
    stream = Stream([host.url for host in hosts], channel)
    try:
        await stream.run({FAULT_AT + 50 * i: fault for i, fault in enumerate(faults)})
        last = stream.acks[-1]
        deadline = time.monotonic() + timeout(20)
        while time.monotonic() < deadline and any(last not in r.pairs for r in recorders):
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*readers)
        await stream.close()
        for recorder in recorders:
            if recorder.client is not None:
                await recorder.client.close()
    return stream, recorders


def _one_data_per_position(stream: Stream, recorders: list[Recorder]) -> None:
    """Never one (epoch, offset) for two publications, across everything seen."""
    seen = {position: n for n, position in enumerate(stream.acks)}
    for recorder in recorders:
        for position, data in recorder.pairs.items():
            assert seen.setdefault(position, data) == data, (position, data, seen[position])
        assert not recorder.faults, recorder.faults  # no silent hole within an epoch


def _lossless(stream: Stream, recorders: list[Recorder]) -> None:
    _one_data_per_position(stream, recorders)
    assert len({epoch for epoch, _ in stream.acks}) == 1, "the epoch changed"
    assert [offset for _, offset in stream.acks] == sorted({o for _, o in stream.acks})
    for recorder in recorders:
        assert recorder.data == list(range(COUNT)), recorder.data[:20]
        assert all(recovered for recovered, _ in recorder.recoveries), recorder.recoveries
        assert len(recorder.epochs) == 1


def _lossy(stream: Stream, recorders: list[Recorder]) -> None:
    _one_data_per_position(stream, recorders)
    before, after = stream.acks[FAULT_AT - 1][0], stream.acks[-1][0]
    assert before != after, "a new epoch after the loss"
    for recorder in recorders:
        assert all(reason for recovered, reason in recorder.recoveries if not recovered)
        assert recorder.epochs[-1] == after  # it followed the new epoch
        assert recorder.data[-1] == COUNT - 1


# -- lossless -----------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def test_every_shardws_process_of_every_host_killed_keeps_history_and_epoch(
    hosts: Hosts, redis: RedisServer, tmp_path: Path
) -> None:
    _restart_redis(redis, tmp_path / "redis")

    def kill_everything() -> None:
        pids = [pid for host in hosts if host.proc for pid in _descendants(host.proc.pid)]
        for pid in pids:  # every process we started, by PID, at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for host in hosts:
            assert host.proc is not None
            host.proc.wait(timeout(10))
        _start(hosts)

    stream, recorders = run(_witness(hosts, "hist:killed", kill_everything), 120)
    _lossless(stream, recorders)
    assert any(r.recoveries for r in recorders)  # the kills did close them


def test_a_durable_redis_killed_and_restarted_keeps_history_and_epoch(
    hosts: Hosts, redis: RedisServer, tmp_path: Path
) -> None:
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    _restart_redis(redis, tmp_path / "redis", *durable)

    def restart() -> None:
        _restart_redis(redis, tmp_path / "redis", *durable)

    stream, recorders = run(_witness(hosts, "hist:durable", restart), 120)
    _lossless(stream, recorders)


# -- lossy --------------------------------------------------------------------------------

_LOSSY = {
    "no-persistence": ((), ()),
    "everysec": (("--appendonly", "yes", "--appendfsync", "everysec"),) * 2,
    "older-rdb": (("--save", "3600 1"), ("--save", "3600 1")),
}


@pytest.mark.parametrize("case", sorted(_LOSSY))
def test_a_redis_that_lost_writes_starts_a_new_epoch(
    hosts: Hosts, redis: RedisServer, tmp_path: Path, case: str
) -> None:
    before, after = _LOSSY[case]
    directory = tmp_path / "redis"
    _restart_redis(redis, directory, *before)

    def restart() -> None:
        _restart_redis(redis, directory, *after)

    # From an older RDB file: saved 50 publications before the kill, which it lacks.
    faults = [lambda: redis.command("SAVE"), restart] if case == "older-rdb" else [restart]
    stream, recorders = run(_witness(hosts, f"hist:{case}", *faults), 120)
    _lossy(stream, recorders)


def test_a_failover_to_a_lagging_replica_starts_a_new_epoch(tmp_path: Path) -> None:
    """The replica is stopped (SIGSTOP) while the master takes publications, the master
    is killed, the replica resumes and Sentinel promotes it without what it missed."""
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
    with master.start(), replica.start():
        sentinel = SentinelServer(tmp_path / "sentinel", "shardws", master, down_after=500)
        with sentinel.start():
            wait_until(
                lambda: b"master_link_status:up" in replica.command("INFO", "replication"),
                10,
                0.1,
                "the replica never synced",
            )
            hub = f'sentinels = ["{sentinel.address}"]\nmaster_name = "shardws"'
            pair = loopback_cluster(tmp_path, _hub(hub), engine="redis")
            try:
                _start(pair)

                assert replica.proc is not None
                lagging = replica.proc.pid

                def fail_over() -> None:  # 50 publications after the replica stopped
                    master.kill()
                    os.kill(lagging, signal.SIGCONT)
                    wait_until(lambda: sentinel.master() == replica.port, 30, 0.1, "no failover")

                stream, recorders = run(
                    _witness(
                        pair, "hist:failover", lambda: os.kill(lagging, signal.SIGSTOP), fail_over
                    ),
                    120,
                )
                _lossy(stream, recorders)
            finally:
                _stop(pair)


# -- the HTTP API -------------------------------------------------------------------------


def _post(host: ServerProcess, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        host.admin_url + "/api/publish",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout(20)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_publish_waits_for_redis_200_stored_503_when_it_does_not_answer(
    hosts: Hosts, redis: RedisServer, tmp_path: Path
) -> None:
    """200 carries the position Redis stored it at; with Redis stopped (SIGSTOP) the
    answer is 503 and nothing is published; the retry with the same ``idem`` is stored
    once."""
    _restart_redis(redis, tmp_path / "redis")
    host = hosts[0]
    status, first = _post(host, {"channel": "hist:api", "data": 0, "idem": "a0"})
    assert status == 200 and first["offset"] == 1, first
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        status, answer = _post(host, {"channel": "hist:api", "data": 1, "idem": "a1"})
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    assert status == 503 and answer["channels"] == ["hist:api"], answer
    deadline = time.monotonic() + timeout(20)
    while (status := _post(host, {"channel": "hist:api", "data": 1, "idem": "a1"})[0]) != 200:
        assert time.monotonic() < deadline, "Redis never came back"
        time.sleep(0.2)
    body = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                host.admin_url + "/api/history?channel=hist:api&limit=100",
                headers={"X-API-Key": API_KEY},
            ),
            timeout=timeout(5),
        ).read()
    )
    assert [(p["offset"], p["data"]) for p in body["publications"]] == [(1, 0), (2, 1)]
    assert body["epoch"] == first["epoch"]


# -- the scripts alone ----------------------------------------------------------------------


def test_the_epoch_rule_and_the_ring_in_the_scripts(tmp_path: Path) -> None:
    """The scripts run with a given server identity (what ``RedisCalls`` passes): the
    epoch is kept by the same server, and by another one only when the writer was
    durable and the server is no promoted replica; the ring keeps ``size`` publications
    and an ``idem`` only while its publication is held; the TTL empties it."""
    from shardws.config import RedisConfig
    from shardws.server.redisconn import RedisCalls
    from shardws.server.redishistory import POSITION, PUBLISH

    keys = ("t{c}:m", "t{c}:s", "t{c}:i")

    async def main() -> None:
        calls = RedisCalls(RedisConfig(address=server.address))

        async def position(who: tuple[str, str, str], fresh: str) -> tuple[str, int]:
            answer = await calls.command(
                "EVAL", POSITION.source, 3, *keys, *who, fresh, 0, 3, "", 0
            )
            return answer[0].decode(), int(answer[1])

        async def publish(who: tuple[str, str, str], idem: str, ttl_ms: int = 0) -> list[Any]:
            args = (*who, "fresh", ttl_ms, 3, idem, "1", "t:c{c}", 1, "PUBLISH")
            return list(await calls.command("EVAL", PUBLISH.source, 3, *keys, *args))

        durable, volatile = ("A", "1", "0"), ("B", "0", "0")
        assert await position(durable, "e1") == ("e1", 0)  # nothing yet: a new epoch
        assert (await publish(durable, "k1"))[1:] == [1, 1]
        assert await position(durable, "e2") == ("e1", 1)  # the same server
        assert await position(volatile, "e3") == ("e1", 1)  # the writer was durable
        assert await position(("C", "1", "0"), "e4") == ("e4", 0)  # B was not
        assert (await publish(("C", "1", "0"), ""))[:2] == [b"e4", 1]
        assert await position(("D", "1", "1"), "e5") == ("e5", 0)  # a promoted replica
        promoted = ("D", "1", "1")
        for n in range(5):  # size 3: offsets 1 and 2 leave the ring
            assert (await publish(promoted, f"i{n}"))[1:] == [n + 1, 1]
        assert (await publish(promoted, "i4"))[1:] == [5, 0]  # held: answered, not stored
        assert (await publish(promoted, "i0"))[1:] == [6, 1]  # left the ring: stored again
        answer = await calls.command(
            "EVAL", POSITION.source, 3, *keys, *promoted, "x", 0, 3, "e5", 2
        )
        assert answer[2] == b"left_ring"
        answer = await calls.command(
            "EVAL", POSITION.source, 3, *keys, *promoted, "x", 0, 3, "e5", 4
        )
        assert answer[2] == b"" and [int(v) for v in answer[3::2]] == [5, 6]
        await publish(promoted, "late")  # offset 7
        await asyncio.sleep(0.1)  # older than a TTL of 50 ms
        expired = await calls.command(
            "EVAL", POSITION.source, 3, *keys, *promoted, "x", 50, 3, "e5", 6
        )
        assert expired[:3] == [b"e5", 7, b"left_ring"]  # epoch and offset kept
        await asyncio.sleep(0.3)  # unused for twice the TTL: the channel is forgotten
        assert await position(promoted, "e6") == ("e6", 0)
        await calls.stop()

    with RedisServer(tmp_path) as server:
        server.start()
        run(main(), 30)


def test_an_ingress_push_redis_does_not_confirm_is_counted(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The ingress's PUSH form has no answer: a publication Redis does not confirm (here
    stopped with SIGSTOP) is counted in ``/api/stats``'s ``stored.unconfirmed``, never
    silent (it may have been stored: nobody waits to know); once the admin reaches Redis
    again the next one is stored and confirmed."""
    from serverproc import free_port

    from shardws import Publisher

    _restart_redis(redis, tmp_path / "redis")
    bind = f"tcp://127.0.0.1:{free_port()}"
    extra = _hub(f'address = "{redis.address}"') + f'[ingress]\nbind = "{bind}"\n'
    (tmp_path / "host").mkdir()
    host = ServerProcess(
        tmp_path / "host", workers=1, extra=extra, admin=f'api_key = "{API_KEY}"', engine="redis"
    ).start()

    def stored() -> dict[str, int]:
        status, body = http_json(host.admin_url + "/api/stats", key=API_KEY)
        assert status == 200, body
        return dict(body["admin"]["stored"])

    try:
        with Publisher(bind) as publisher:
            publisher.publish("hist:pushed", 0)
            wait_until(lambda: stored()["confirmed"] >= 1, 15, 0.1, "never confirmed")
            assert redis.proc is not None
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                for n in (1, 2, 3):
                    publisher.publish("hist:pushed", n)
                wait_until(lambda: stored()["unconfirmed"] >= 3, 30, 0.2, "not counted")
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            # Sent once each: those made before the admin's connection is back are
            # counted too; one after it is stored and confirmed.
            deadline = time.monotonic() + timeout(30)
            n = 4
            while stored()["confirmed"] < 2:
                assert time.monotonic() < deadline, "not confirmed again"
                publisher.publish("hist:pushed", n)
                n += 1
                time.sleep(0.3)
        counts = stored()
        assert counts["unconfirmed"] >= 3 and counts["confirmed"] + counts["unconfirmed"] <= n
    finally:
        host.stop()


# -- observability ----------------------------------------------------------------------------


def test_each_process_redis_counters_move_in_health_and_metrics(
    hosts: Hosts, redis: RedisServer, tmp_path: Path
) -> None:
    """``/health`` shows each process's Redis counters (the workers' and the admin's)
    and ``/metrics`` exports them: a publication to a history channel is one more
    history script of the admin; with Redis stopped the calls fail and ``up`` is 0;
    once it is back, the reconnection is counted."""
    _restart_redis(redis, tmp_path / "redis")
    host = hosts[0]

    def counters() -> tuple[dict[str, Any], dict[str, Any]]:
        body = host.health()[1]
        return body["admin"]["redis"], body["per_worker"][0]["redis"]

    # The worker connects at start, the admin at its first call.
    wait_until(lambda: counters()[1]["up"], 30, 0.1, lambda: f"never up: {counters()}")
    admin, worker = counters()
    assert _post(host, {"channel": "hist:seen", "data": 0})[0] == 200
    # A script is counted when it is sent, and the admin connects on its first call: wait
    # for a row written once it is up too.
    wait_until(
        lambda: counters()[0]["history_scripts"] > admin["history_scripts"] and counters()[0]["up"],
        10,
        0.1,
        lambda: f"the admin's history scripts did not move: {counters()}",
    )
    now = counters()[0]
    assert now["calls"] > admin["calls"] and now["batches"] > admin["batches"], now
    text = urllib.request.urlopen(host.admin_url + "/metrics", timeout=timeout(5)).read().decode()
    for series in ('shardws_redis_up{worker="admin"} 1.0', 'shardws_redis_up{worker="0"} 1.0'):
        assert series in text, (series, text[-3000:])
    # At least what /health showed: the row is written again every half second.
    calls = re.search(r'^shardws_redis_calls_total\{worker="admin"\} (\S+)$', text, re.M)
    assert calls is not None and float(calls.group(1)) >= now["calls"], text[-3000:]
    assert 'shardws_redis_scripts_total{part="history",worker="admin"}' in text, text[-3000:]
    redis.kill()
    try:
        # The worker's idle connection sees it closed; the admin's call fails.
        assert _post(host, {"channel": "hist:seen", "data": 1})[0] == 503
        wait_until(
            lambda: not any(c["up"] for c in counters()), 10, 0.1, lambda: f"up: {counters()}"
        )
        down = counters()[0]
        assert down["failures"] > now["failures"] and down["history_failed"] >= 1, down
        text = urllib.request.urlopen(host.admin_url + "/metrics", timeout=timeout(5))
        assert 'shardws_redis_up{worker="admin"} 0.0' in text.read().decode()
    finally:
        _restart_redis(redis, tmp_path / "redis-again")
    wait_until(
        lambda: _post(host, {"channel": "hist:seen", "data": 2})[0] == 200,
        30,
        0.2,
        "Redis never came back",
    )
    wait_until(  # the row is written every half second
        lambda: counters()[0]["up"] and counters()[0]["reconnects"] > now["reconnects"],
        10,
        0.1,
        lambda: f"the reconnection not counted: {counters()}",
    )
    assert worker["presence_writes_failed"] == 0, worker
