"""``shardws.client`` against real servers: workers killed, the server drained and
restarted, the network path cut or silently stalled (``tcpproxy``), many clients cut off
at once (no reconnect storm), queue limits, token refresh, "do not reconnect" closes.

Publishers send numbered messages to a history channel; every subscriber must end up
with every number exactly once and in order (or be told of a gap, where the history is
really gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess
from tcpproxy import TcpProxy
from toolkit import run, timeout

from shardws.client import (
    Backoff,
    Client,
    ClientClosed,
    DeliveryUnknown,
    Gap,
    PresenceEvent,
    Publication,
    QueueFull,
    ServerError,
    Subscription,
    connect,
    retry_after,
    should_reconnect,
    token_expiry,
)
from shardws.pure.auth import make_token
from shardws.pure.history import owner_of

NAMESPACES = """
[namespaces.default]

[namespaces.chat]
history_size = 10000
history_ttl = 600
presence = true
join_leave = true
"""
CHANNEL = "chat:stream"
FAST = Backoff(initial=0.05, factor=2.0, cap=0.5)


class Collector:
    """A client subscribed to ``CHANNEL`` with a callback: keeps the data and the gaps."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.data: list[Any] = []
        self.gaps: list[Gap] = []

    async def subscribe(self, channel: str = CHANNEL) -> Collector:
        await self.client.subscribe(channel, self._take, on_gap=self.gaps.append)
        return self

    def _take(self, item: Any) -> None:
        if isinstance(item, Publication):
            self.data.append(item.data)

    async def wait_for(self, count: int, limit: float = 20) -> None:
        deadline = time.monotonic() + timeout(limit)
        while len(self.data) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


async def publish_numbers(client: Client, start: int, stop: int, pace: float) -> None:
    for n in range(start, stop):
        await client.publish(CHANNEL, n)
        await asyncio.sleep(pace)


def worker_pids(proc: ServerProcess) -> dict[int, int]:
    return {w["worker"]: w["pid"] for w in proc.wait_healthy()["per_worker"]}


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- no server needed ----------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, cap=4.0)
    assert [backoff.window(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(3, rand=lambda: 0.0) == 0.0  # full jitter: the whole window
    assert backoff.delay(3, rand=lambda: 0.999) == pytest.approx(1.998)
    assert backoff.window(10_000) == 4.0  # no overflow
    with pytest.raises(ValueError):
        Backoff(initial=0.0)
    with pytest.raises(ValueError):
        Backoff(initial=2.0, cap=1.0)


class _Response:
    """What picows hands a client with a refused upgrade: a status and headers."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers


def test_a_503_retry_after_is_waited_out_with_jitter_up_to_as_long_again() -> None:
    refused = _Response(503, {"Retry-After": "5"})
    assert retry_after(refused, rand=lambda: 0.0) == 5.0
    assert retry_after(refused, rand=lambda: 0.999) == pytest.approx(9.995)
    assert retry_after(_Response(503, {"Retry-After": "86400"}), rand=lambda: 0.0) == 300.0
    # No usable hint: the backoff applies.
    assert retry_after(None) is None
    assert retry_after(_Response(502, {"Retry-After": "5"})) is None
    assert retry_after(_Response(503, {})) is None
    assert retry_after(_Response(503, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None
    for bad in ("-1", "0", "nan", "inf"):
        assert retry_after(_Response(503, {"Retry-After": bad})) is None, bad


def test_a_numbering_that_comes_back_to_an_epoch_is_not_delivered_twice() -> None:
    """After a partition heals, a subscriber may get the other side's numbering for a
    while and then the kept one again, from its first offsets (docs/cluster.md): what it
    delivered in that epoch is not delivered again, the rest continues without a gap."""
    items: list[Any] = []
    gaps: list[Gap] = []
    sub = Subscription(None, "chat:a", items.append, gaps.append, False)  # type: ignore[arg-type]

    def take(epoch: str, offset: int) -> bool:
        return sub._take_pub({"type": "pub", "epoch": epoch, "offset": offset, "data": offset})

    assert all(take("kept", n) for n in (1, 2, 3, 4))
    assert take("other", 1)  # the other side's numbering: a gap, told
    assert all(take("kept", n) for n in (1, 2, 3, 4, 5))  # the kept one is back
    assert [(i.epoch, i.data) for i in items] == [
        ("kept", 1),
        ("kept", 2),
        ("kept", 3),
        ("kept", 4),
        ("other", 1),
        ("kept", 5),
    ]
    assert [(g.epoch, g.reason) for g in gaps] == [("other", "epoch_changed")]
    assert not take("kept", 7)  # a hole in it: reconnect and recover from kept:5
    assert (sub.epoch, sub.offset) == ("kept", 5)


def test_a_failed_recovery_behind_what_was_delivered_reports_no_second_gap() -> None:
    """A resubscribe sent before the old connection delivered a new epoch's first
    publications: its ``recovered: false`` reply names a position this subscription is
    already past. The gap was reported once; nothing is delivered twice."""
    items: list[Any] = []
    gaps: list[Gap] = []
    sub = Subscription(None, "chat:a", items.append, gaps.append, False)  # type: ignore[arg-type]

    def take(epoch: str, offset: int) -> bool:
        return sub._take_pub({"type": "pub", "epoch": epoch, "offset": offset, "data": offset})

    assert take("old", 1) and take("new", 26)  # the owner changed: a gap, told
    reply = {"ok": True, "epoch": "new", "offset": 25, "recovered": False}
    sub._positioned({**reply, "reason": "epoch_changed"}, recovering=True)
    assert take("new", 26) and take("new", 27)  # 26 again, from the new connection
    assert [(i.epoch, i.data) for i in items] == [("old", 1), ("new", 26), ("new", 27)]
    assert [(g.epoch, g.offset) for g in gaps] == [("new", 25)]


def test_close_code_ranges_and_token_expiry() -> None:
    for code in (1001, 1006, 1011, 4500, 4501, 4502, 4503, 4504, 4505, 4506, 4999):
        assert should_reconnect(code), code
    for code in (1002, 1007, 1008, 1009, 4000, 4001, 4003, 4008, 4009, 4029, 4499):
        assert not should_reconnect(code), code
    token = make_token("x" * 32, "alice", 60)
    expiry = token_expiry(token)
    assert expiry is not None and abs(expiry - (time.time() + 60)) < 5
    assert token_expiry("not-a-jwt") is None and token_expiry(None) is None


# -- real servers ------------------------------------------------------------------------


def test_basics_iterator_callback_presence_history(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:

        async def main() -> None:
            async with connect(proc.url) as a, connect(proc.url) as b:
                sub = await a.subscribe(CHANNEL, presence_events=True)
                await b.subscribe(CHANNEL)  # a is told: a join push
                seen: list[Any] = []
                await b.subscribe("news", seen.append)
                first = await b.publish(CHANNEL, {"n": 1})
                assert first["offset"] == 1 and first["epoch"]
                again = await b.publish(CHANNEL, "ignored", idem="fixed-key")
                assert (await b.publish(CHANNEL, "dup", idem="fixed-key"))["offset"] == again[
                    "offset"
                ]
                await a.publish("news", [1, 2])
                items = [await asyncio.wait_for(sub.__anext__(), timeout(5)) for _ in range(3)]
                joins = [i for i in items if isinstance(i, PresenceEvent)]
                assert [(j.type, j.client) for j in joins] == [("join", b.client_id)], items
                pubs = [i for i in items if isinstance(i, Publication)]
                assert [p.offset for p in pubs] == [1, 2] and pubs[0].data == {"n": 1}
                assert sub.epoch == first["epoch"] and sub.offset == 2
                deadline = time.monotonic() + timeout(5)
                while not seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert seen == [Publication("news", [1, 2])]
                members = await b.presence(CHANNEL)
                assert {m["client"] for m in members} == {a.client_id, b.client_id}
                assert await b.presence_stats(CHANNEL) == (2, 0)  # anonymous: no users
                page, epoch, offset = await b.history(CHANNEL, limit=1, reverse=True)
                assert (epoch, offset, [p.offset for p in page]) == (first["epoch"], 2, [2])
                with pytest.raises(ServerError) as err:
                    await a.subscribe("nowhere:x")
                assert err.value.code == 102
                with pytest.raises(ServerError):
                    await a.subscribe(CHANNEL)  # already subscribed
                await sub.unsubscribe()
                with pytest.raises(StopAsyncIteration):
                    await sub.__anext__()
                assert a.connects == 1 and b.connects == 1

        run(main())


def test_killed_workers_lose_and_double_nothing(tmp_path: Path) -> None:
    """Eight SIGKILLs of workers other than the channel's owner under a stream: every
    subscriber (and the publisher) reconnects and recovers; each subscriber holds every
    number exactly once, in order, with no gap reported."""
    count = 250
    with ServerProcess(tmp_path, workers=3, extra=NAMESPACES).start() as proc:
        owner = owner_of(CHANNEL, [0, 1, 2])
        victims = [w for w in (0, 1, 2) if w != owner]

        async def main() -> None:
            # Fourteen: each kill moves its clients at random, some onto the owner's
            # worker where no kill reaches them; with eight, whether four reconnects
            # happened was left to chance on a loaded machine.
            clients = [await connect(proc.url, backoff=FAST) for _ in range(14)]
            publisher, subscribers = clients[0], [Collector(c) for c in clients[1:]]
            for sub in subscribers:
                await sub.subscribe()
            stream = asyncio.create_task(publish_numbers(publisher, 0, count, 0.01))
            for n in range(8):
                await asyncio.sleep(0.3)
                # The worker of some client (not the owner's), so every kill hits.
                on = [c.worker for c in clients if c.connected and c.worker in victims]
                victim = on[n % len(on)] if on else victims[n % 2]
                kill((await asyncio.to_thread(worker_pids, proc))[victim])
            await stream
            for sub in subscribers:
                await sub.wait_for(count)
                assert sub.data == list(range(count)), (sub.client.connects, sub.data[:20])
                assert sub.gaps == []
            assert sum(c.connects - 1 for c in clients) >= 4  # the kills did hit them
            assert any(s.client.subscriptions[CHANNEL].recoveries for s in subscribers)
            for client in clients:
                await client.close()

        run(main(), 90)


def test_owner_killed_reports_a_gap_and_publishes_are_retried(tmp_path: Path) -> None:
    """The owner's crash loses the history: a subscriber is told (on_gap, new epoch),
    never silently; publishes during its restart (error 108) are retried transparently."""
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:
        owner = owner_of(CHANNEL, [0, 1])

        async def main() -> None:
            async with connect(proc.url, backoff=FAST) as pub, connect(proc.url) as sub_client:
                sub = await Collector(sub_client).subscribe()
                old_epoch = (await pub.publish(CHANNEL, 0))["epoch"]
                await publish_numbers(pub, 1, 5, 0)
                dead = (await asyncio.to_thread(worker_pids, proc))[owner]
                kill(dead)
                await publish_numbers(pub, 5, 10, 0)  # 108s and lost links retried inside
                await sub.wait_for(10)
                await asyncio.to_thread(proc.wait_healthy, 20.0, {dead})
                assert sub.data[:5] == [0, 1, 2, 3, 4]
                assert sub.gaps, "the lost history was not reported"
                assert sub.gaps[0].epoch != old_epoch
                assert {gap.reason for gap in sub.gaps} == {"epoch_changed"}
                state = sub_client.subscriptions[CHANNEL]
                assert state.epoch == sub.gaps[-1].epoch

        run(main())


def test_a_gap_carries_the_servers_reason(tmp_path: Path) -> None:
    """``recovered: false`` reaches ``on_gap`` with its reason: a position whose
    successors left the ring (``left_ring``), one of another epoch (``epoch_changed``)."""
    short = NAMESPACES + "\n[namespaces.short]\nhistory_size = 3\n"
    with ServerProcess(tmp_path, workers=2, extra=short).start() as proc:

        async def main() -> None:
            async with connect(proc.url) as client:
                first = await client.publish("short:a", 0)
                for n in range(1, 6):  # offsets 2..6; the ring keeps 4, 5, 6
                    await client.publish("short:a", n)
                old: list[Gap] = []
                await client.subscribe("short:a", on_gap=old.append, recover=(first["epoch"], 1))
                assert [(g.reason, g.offset) for g in old] == [("left_ring", 6)]
                other: list[Gap] = []
                await client.subscribe("short:b", on_gap=other.append, recover=("0" * 16, 2))
                assert [g.reason for g in other] == ["epoch_changed"]

        run(main())


def test_drain_and_restart_queue_then_deliver_once(tmp_path: Path) -> None:
    """SIGTERM: clients get the reconnect hint and 1001, publishes wait in the bounded
    queue (QueueFull past max_queued), the restarted server (same run_dir, so the rings
    survive) gets them once, and subscribers recover everything."""
    run_dir = tmp_path / "run"
    with ServerProcess(
        tmp_path, workers=2, extra=NAMESPACES, server=f'run_dir = "{run_dir}"'
    ).start() as proc:

        async def main() -> None:
            backoff = Backoff(initial=0.1, factor=2.0, cap=0.5)
            pub = await connect(proc.url, backoff=backoff, max_queued=10)
            subs = [Collector(await connect(proc.url, backoff=backoff)) for _ in (0, 1)]
            for sub in subs:
                await sub.subscribe()
            await publish_numbers(pub, 0, 20, 0)
            proc.signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait_exit, 15) == 0
            deadline = time.monotonic() + timeout(5)
            while pub.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not pub.connected
            queued = [asyncio.create_task(pub.publish(CHANNEL, n)) for n in range(20, 30)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFull):
                await pub.publish(CHANNEL, "one too many")
            await asyncio.to_thread(proc.start)
            await asyncio.wait_for(asyncio.gather(*queued), timeout(20))
            for sub in subs:
                await sub.wait_for(30)
                assert sub.data == list(range(30)), sub.data
                assert sub.gaps == []
                assert sub.client.last_close is not None and sub.client.last_close[0] == 1001
                assert sub.client.hints_followed >= 1
                assert sub.client.subscriptions[CHANNEL].recoveries >= 1
            for client in (pub, *(s.client for s in subs)):
                await client.close()

        run(main(), 90)


def test_network_cut_and_silent_stall(tmp_path: Path) -> None:
    """The path to the server is reset (and refused for a while), then silently stalled
    towards the clients (only pings can tell; publishes still arrive, replies do not):
    the subscriber behind the proxy recovers everything; the publisher behind it queues
    and retries with its idem keys, publishing each once."""
    count = 150
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:

        async def main() -> None:
            proxy = await TcpProxy(proc.ws_port).start()
            options: dict[str, Any] = {"backoff": FAST, "ping_interval": 0.5, "ping_timeout": 0.4}
            sub = await Collector(await connect(proxy.url, **options)).subscribe()
            pub = await connect(proxy.url, **options)
            direct = await Collector(await connect(proc.url)).subscribe()
            stream = asyncio.create_task(publish_numbers(pub, 0, count, 0.01))
            await asyncio.sleep(0.4)
            proxy.cut()
            await asyncio.sleep(0.8)
            proxy.restore()
            await asyncio.sleep(0.4)
            stalled_at = sub.client.connects
            # Publishes still reach the server, their replies vanish: the retries must
            # carry the same idem key or the subscribers would see numbers twice.
            proxy.stall(upstream=False)
            await stream
            for collector in (sub, direct):
                await collector.wait_for(count)
                assert collector.data == list(range(count)), collector.data[:30]
                assert collector.gaps == []
            assert sub.client.connects > stalled_at  # the stall was found by pings
            assert sub.client.last_close is not None and sub.client.last_close[0] == 1006
            for client in (sub.client, pub, direct.client):
                await client.close()
            await proxy.close()

        run(main(), 60)


def test_many_clients_cut_off_do_not_storm(tmp_path: Path) -> None:
    """60 clients lose the path at once and it refuses them for 4 s: full-jitter
    exponential backoff spreads their attempts (no 100 ms window holds more than half
    of them) and bounds their number; all are back soon after the path is."""
    clients_count, outage = 60, 4.0
    backoff = Backoff(initial=1.0, factor=2.0, cap=2.0)
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:

        async def main() -> None:
            proxy = await TcpProxy(proc.ws_port).start()
            clients = [await connect(proxy.url, backoff=backoff) for _ in range(clients_count)]
            cut_at = time.monotonic()
            proxy.accepts.clear()
            proxy.cut()
            await asyncio.sleep(outage)
            during = list(proxy.accepts)
            proxy.restore()
            back_at = time.monotonic()
            deadline = back_at + timeout(backoff.cap + 3)
            while not all(c.connects == 2 for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            took = time.monotonic() - back_at
            assert all(c.connects == 2 for c in clients), [c.connects for c in clients]
            assert took < backoff.cap + 1.5, took
            # Expected attempts in 4 s with windows 1, 2, 2, 2: about 4 per client.
            assert clients_count <= len(during) <= clients_count * 7, len(during)
            peak = max(
                sum(1 for t in during if start <= t < start + 0.1)
                for start in (cut_at + i * 0.01 for i in range(int(outage * 100)))
            )
            assert peak <= clients_count / 2, peak
            for client in clients:
                await client.close()
            await proxy.close()

        run(main(), 60)


def test_do_not_reconnect_close_ends_the_client(tmp_path: Path) -> None:
    """A 4009 from the backend (``POST /api/disconnect``) ends the client: no reconnect;
    the iterator, publish and every later call raise ClientClosed with the code."""
    key = "k" * 24
    secret = "s3cret-for-tests-only-0123456789abcdef"
    auth = f'[auth]\nanonymous = false\nsecret = "{secret}"\nleeway = 0\n'
    with ServerProcess(
        tmp_path, workers=2, extra=NAMESPACES + auth, admin=f'api_key = "{key}"'
    ).start() as proc:

        async def main() -> None:
            token = make_token(secret, "alice", 3600)
            async with connect(proc.url, token=token, backoff=FAST) as client:
                sub = await client.subscribe(CHANNEL)
                request = urllib.request.Request(
                    proc.admin_url + "/api/disconnect",
                    data=json.dumps({"user": "alice"}).encode(),
                    headers={"X-API-Key": key, "Content-Type": "application/json"},
                )
                await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
                with pytest.raises(ClientClosed) as err:
                    await asyncio.wait_for(sub.__anext__(), timeout(5))
                assert err.value.code == 4009
                await asyncio.sleep(0.3)
                assert client.attempts == 1
                with pytest.raises(ClientClosed):
                    await client.publish(CHANNEL, 1)
            with pytest.raises(ClientClosed) as err:
                await connect(proc.url, token="bad-token")
            assert err.value.code == 401

        run(main())


def test_token_refreshed_before_expiry(tmp_path: Path) -> None:
    """``get_token`` is called ahead of each expiry and the token sent with ``refresh``,
    so a connection with 2-second tokens lives on; a plain-namespace publish cut off
    before its reply raises DeliveryUnknown instead of being retried."""
    secret = "s3cret-for-tests-only-0123456789abcdef"
    auth = f'[auth]\nanonymous = false\nsecret = "{secret}"\nleeway = 0\n'
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES + auth).start() as proc:

        async def main() -> None:
            issued: list[str] = []

            async def get_token() -> str:
                issued.append(make_token(secret, "bob", 2))
                return issued[-1]

            async with connect(proc.url, get_token=get_token, refresh_before=1.0) as client:
                await client.subscribe("news")
                await asyncio.sleep(timeout(5))  # 2.5 lifetimes of one token
                assert client.connects == 1, client.last_close
                assert len(issued) >= 3
                await client.ping()
                assert (await client.publish("news", 1))["ok"]
                # A publish whose link is lost before the reply, in a plain namespace.
                sending = asyncio.create_task(client.publish("news", 2))
                await asyncio.sleep(0)
                assert client._link is not None
                client._link.drop()
                with pytest.raises(DeliveryUnknown):
                    await sending

        run(main())
