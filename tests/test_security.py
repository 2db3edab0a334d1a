"""Who may connect, subscribe and publish: every rule against a real 2-worker server."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from serverproc import ServerProcess
from toolkit import run, timeout
from wsclient import Client, clients_on_workers

from benchmarks.tlscert import self_signed
from shardws.pure.auth import make_token

SECRET = "s3cret-for-tests-only-0123456789abcdef"
AUTH = f"""
[auth]
anonymous = false
secret = "{SECRET}"
leeway = 0

[namespaces.default]
[namespaces.chat]
[namespaces.news]
[namespaces.readonly]
publish = false
[namespaces.private]
subscribe_token = true
[namespaces.tiny]
max_subscribers = 2

[limits]
subscriptions_per_connection = 5
"""


def token(sub: str, ttl: float = 3600, **claims: Any) -> str:
    return make_token(SECRET, sub, ttl, **claims)


SERVER = {"workers": 2, "server": "handshake_timeout = 1.5", "extra": AUTH}


async def authed(url: str, sub: str, **claims: Any) -> Client:
    return await Client.connect(f"{url}?token={token(sub, **claims)}")


# -- way 1: token before the upgrade ------------------------------------------------------


def test_bad_token_gets_401_before_upgrade(server: ServerProcess) -> None:
    async def main() -> None:
        expired = make_token(SECRET, "alice", 10, now=time.time() - 60)
        for bad in ("garbage", expired, make_token("x" * 40, "alice", 60)):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"{server.url}?token={bad}")
            assert info.value.response.status_code == 401
        client = await Client.connect(
            server.url, additional_headers={"Authorization": f"Bearer {token('alice')}"}
        )
        assert (await client.call("ping"))["ok"]
        await client.close()

    run(main())


# -- way 2: first message -------------------------------------------------------------------


def test_browser_connect_message(server: ServerProcess) -> None:
    async def main() -> None:
        client = await Client.connect(server.url)  # no token: must connect first
        assert (await client.call("subscribe", channel="news:a"))["error"]["code"] == 101
        reply = await client.call("connect", token=token("alice"))
        assert reply["ok"] and reply["user"] == "alice" and reply["expires"] > 0
        assert (await client.call("subscribe", channel="news:a"))["ok"]
        await client.close()

        bad = await Client.connect(server.url)
        await bad.send({"id": 1, "op": "connect", "token": "forged"})
        with pytest.raises(websockets.ConnectionClosed) as info:
            await bad.recv()  # no reply at all: only the close
        assert info.value.rcvd is not None and info.value.rcvd.code == 4001

        silent = await Client.connect(server.url)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await silent.recv(limit=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4504

    run(main())


def test_token_expiry_and_refresh(server: ServerProcess) -> None:
    async def main() -> None:
        expiring = await authed(server.url, "alice", ttl=1.5)
        refreshed = await authed(server.url, "alice", ttl=1.5)
        reply = await refreshed.call("refresh", token=token("alice", ttl=60))
        assert reply["ok"] and reply["expires"] > 0
        mallory = await refreshed.call("refresh", token=token("mallory", ttl=60))
        assert mallory["error"]["code"] == 101  # another user's token is refused
        with pytest.raises(websockets.ConnectionClosed) as info:
            await expiring.recv(limit=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4503
        assert (await refreshed.call("ping"))["ok"]
        await refreshed.close()

    run(main())


def test_connect_timeout_closes_at_handshake_timeout_not_at_the_next_sweep(
    server: ServerProcess,
) -> None:
    """The server's handshake_timeout is 1.5 s and its sweep runs every 5 s (ping_interval
    25 s / 4, capped). Three silent connections opened 1.7 s apart sit at three phases of
    that sweep, so a close that waited for the sweep would be at least 3.3 s late for one
    of them; each must close with 4504 within 1.5 s (scaled) of its deadline."""
    handshake_timeout = 1.5

    async def silent(delay: float) -> float:
        await asyncio.sleep(delay)
        client = await Client.connect(server.url)
        opened = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.recv(limit=15)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4504
        return time.monotonic() - opened

    async def main() -> list[float]:
        return list(await asyncio.gather(*(silent(i * 1.7) for i in range(3))))

    for waited in run(main()):
        assert handshake_timeout - 0.1 <= waited <= handshake_timeout + timeout(1.5), waited


def test_connect_and_refresh_replies_give_expires_as_integer_seconds(
    server: ServerProcess,
) -> None:
    async def main() -> None:
        exp = int(time.time()) + 3600
        client = await Client.connect(server.url)
        reply = await client.call("connect", token=jwt.encode({"sub": "alice", "exp": exp}, SECRET))
        assert reply == {"id": 1, "ok": True, "user": "alice", "expires": exp}
        assert type(reply["expires"]) is int
        # A fractional exp (RFC 7519 allows it) is rounded down: never later than the token.
        reply = await client.call(
            "refresh", token=jwt.encode({"sub": "alice", "exp": exp + 0.75}, SECRET)
        )
        assert reply["expires"] == exp and type(reply["expires"]) is int
        await client.close()

    run(main())


# -- namespaces and channel rules -----------------------------------------------------------


def test_user_only_channels(server: ServerProcess) -> None:
    async def main() -> None:
        alice = await authed(server.url, "alice")
        bob = await authed(server.url, "bob")
        assert (await alice.call("subscribe", channel="chat:#alice"))["ok"]
        assert (await bob.call("subscribe", channel="chat:#alice"))["error"]["code"] == 103
        assert (await bob.call("publish", channel="chat:#alice", data=1))["error"]["code"] == 103
        assert (await bob.call("subscribe", channel="chat:room#alice,bob"))["ok"]
        await alice.close()
        await bob.close()

    run(main())


def test_namespace_rules(server: ServerProcess) -> None:
    async def main() -> None:
        alice = await authed(server.url, "alice")
        assert (await alice.call("subscribe", channel="nowhere:x"))["error"]["code"] == 102
        assert (await alice.call("subscribe", channel="readonly:x"))["ok"]
        assert (await alice.call("publish", channel="readonly:x", data=1))["error"]["code"] == 103
        assert (await alice.call("subscribe", channel="private:x"))["error"]["code"] == 103
        forged = make_token("y" * 40, "alice", 60, channel="private:x")
        reply = await alice.call("subscribe", channel="private:x", token=forged)
        assert reply["error"]["code"] == 103
        other = token("bob", channel="private:x")  # bob's channel token is not alice's
        assert (await alice.call("subscribe", channel="private:x", token=other))["error"]
        good = token("alice", channel="private:x")
        assert (await alice.call("subscribe", channel="private:x", token=good))["ok"]
        await alice.close()

    run(main())


def test_token_channel_patterns(server: ServerProcess) -> None:
    async def main() -> None:
        limited = await authed(server.url, "carol", channels=["news:*"])
        assert (await limited.call("subscribe", channel="news:sport"))["ok"]
        assert (await limited.call("subscribe", channel="chat:lobby"))["error"]["code"] == 103
        await limited.close()

    run(main())


# -- limits ---------------------------------------------------------------------------------


def test_subscription_limits(server: ServerProcess) -> None:
    async def main() -> None:
        alice = await authed(server.url, "alice")
        for n in range(5):
            assert (await alice.call("subscribe", channel=f"news:{n}"))["ok"]
        assert (await alice.call("subscribe", channel="news:5"))["error"]["code"] == 106
        await alice.call("unsubscribe", channel="news:0")
        assert (await alice.call("subscribe", channel="news:5"))["ok"]  # a slot freed
        # max_subscribers counts per channel per worker: three clients on each worker
        clients = await clients_on_workers(f"{server.url}?token={token('u')}", 2, per_worker=3)
        for worker in (0, 1):
            mine = [c for c in clients if c.worker == worker]
            replies = [await c.call("subscribe", channel="tiny:room") for c in mine]
            assert [r.get("ok") for r in replies[:2]] == [True, True]
            assert replies[2]["error"]["code"] == 106
        for client in [alice, *clients]:
            await client.close()

    run(main())


def test_command_flood_is_limited_and_others_unaffected(tmp_path: Path) -> None:
    limits = "[limits]\ncommands_per_second = 20\ncommand_burst = 20\nabuse_close_after = 40\n"
    with ServerProcess(tmp_path, workers=2, extra=limits).start() as proc:

        async def main() -> None:
            flooder, bystander = await clients_on_workers(proc.url, 2)
            publisher = await Client.connect(proc.url)
            await bystander.call("subscribe", channel="calm")
            for _ in range(200):
                await flooder.send({"op": "ping"})
            codes = []
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    codes.append(await flooder.recv())
            assert info.value.rcvd is not None and info.value.rcvd.code == 4008
            assert any(m.get("error", {}).get("code") == 111 for m in codes)
            for n in range(20):  # every other client still gets every message
                await publisher.call("publish", channel="calm", data=n)
            got = [(await bystander.next_push())["data"] for _ in range(20)]
            assert got == list(range(20))

        run(main())
        _, body = proc.health()
        assert body["workers_alive"] == 2 and all(w["restarts"] == 0 for w in body["per_worker"])


def test_connections_per_ip_across_workers_and_after_a_kill(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path, workers=2, extra="[limits]\nconnections_per_ip = 3\n"
    ).start() as proc:

        async def main() -> None:
            held = [await Client.connect(proc.url) for _ in range(3)]
            for _ in range(8):  # whichever worker the kernel picks, the 4th is refused
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await Client.connect(proc.url)
                assert info.value.rcvd is not None and info.value.rcvd.code == 4029
            # A worker dies: the supervisor zeroes its column, so its share is freed.
            victim = held[0].worker
            _, body = proc.health()
            pid = body["per_worker"][victim]["pid"]
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait_healthy, 20.0, {pid})
            lost = sum(1 for c in held if c.worker == victim)
            again = [await Client.connect(proc.url) for _ in range(lost)]
            assert len(again) == lost
            with pytest.raises(websockets.ConnectionClosed):
                await Client.connect(proc.url)

        run(main())


def test_trusted_proxy_forwarded_for(tmp_path: Path) -> None:
    extra = '[limits]\nconnections_per_ip = 1\ntrusted_proxies = ["127.0.0.1"]\n'
    with ServerProcess(tmp_path, workers=1, extra=extra).start() as proc:

        async def main() -> None:
            def via(ip: str) -> dict[str, str]:
                return {"X-Forwarded-For": f"6.6.6.6, {ip}"}  # left-most is forgeable

            first = await Client.connect(proc.url, additional_headers=via("203.0.113.1"))
            second = await Client.connect(proc.url, additional_headers=via("203.0.113.2"))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await Client.connect(proc.url, additional_headers=via("203.0.113.1"))
            assert info.value.rcvd is not None and info.value.rcvd.code == 4029
            # A forged first header line and the proxy's own second line: the proxy's
            # (right-most) address counts, so this is 203.0.113.2 again, refused.
            two_lines = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "203.0.113.2")]
            with pytest.raises(websockets.ConnectionClosed) as info:
                await Client.connect(proc.url, additional_headers=two_lines)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4029
            await first.close()
            await second.close()

        run(main())


def test_origin_allowlist_and_full_worker(tmp_path: Path) -> None:
    extra = '[limits]\nallowed_origins = ["https://good.example"]\nconnections_per_worker = 2\n'
    with ServerProcess(tmp_path, workers=1, extra=extra).start() as proc:

        async def main() -> None:
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(proc.url, origin="https://evil.example")  # type: ignore[arg-type]
            assert info.value.response.status_code == 403
            good = [await Client.connect(proc.url, origin="https://good.example") for _ in range(2)]
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(proc.url, origin="https://good.example")  # type: ignore[arg-type]
            assert info.value.response.status_code == 503
            for client in good:
                await client.close()

        run(main())


def open_files_limit(nofile: int) -> Callable[[], None]:
    """A ``preexec_fn``: the server gets an open-files limit of ``nofile``, soft and hard,
    so the supervisor cannot raise it."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return lower


def test_a_worker_short_of_open_files_refuses_with_503_instead_of_resetting(
    tmp_path: Path,
) -> None:
    """The workers get an open-files limit of 300 (soft and hard, so the supervisor
    cannot raise it), far below the connections_per_worker = 20000 the file sets: the log
    says so once with both numbers, and the connection past the effective limit gets the
    documented 503 (never a reset, a timeout or EOF), while the open ones keep working."""
    nofile = 300
    limits = "[limits]\nconnections_per_worker = 20000\n"
    proc = ServerProcess(tmp_path, workers=1, server="max_workers = 2", extra=limits)
    proc.start(preexec_fn=open_files_limit(nofile))
    try:
        warnings = [line for line in proc.logs().splitlines() if "connections_per_worker" in line]
        assert len(warnings) == 1, proc.logs()
        found = re.search(
            rf"connections_per_worker = 20000 .* at most (\d+) connections"
            rf" \(RLIMIT_NOFILE {nofile},",
            warnings[0],
        )
        assert found is not None and "LimitNOFILE" in warnings[0], warnings[0]
        most = int(found[1])
        assert nofile // 2 < most < nofile

        async def main() -> None:
            clients: list[Client] = []
            refused = None
            while refused is None:
                assert len(clients) <= most, "not refused at the limit"
                try:
                    clients.append(await Client.connect(proc.url))
                except websockets.InvalidStatus as exc:
                    refused = exc.response
            assert len(clients) == most
            assert refused.status_code == 503
            assert refused.body == b"server full, try again later\n"
            for client in (clients[0], clients[-1]):  # the open ones still work
                assert (await client.call("ping"))["ok"]
            with pytest.raises(websockets.InvalidStatus) as info:  # still a 503, not EMFILE
                await websockets.connect(proc.url)
            assert info.value.response.status_code == 503
            await clients.pop().close()
            await asyncio.sleep(0.2 * timeout(1))  # the server sees the close
            clients.append(await Client.connect(proc.url))  # room for one again
            for client in clients:
                await client.close()

        run(main())
    finally:
        proc.stop()


def test_the_default_follows_a_low_open_files_limit_without_a_warning(tmp_path: Path) -> None:
    """With the default connections_per_worker ("auto") and an open-files limit of 300,
    below the 20000 that used to be the default, the server logs no warning at all, and
    a worker still takes what the limit leaves room for, then answers 503."""
    nofile = 300
    with ServerProcess(tmp_path, workers=1).start(preexec_fn=open_files_limit(nofile)) as proc:
        proc.wait_log(r"worker 0 ready")
        assert not [
            line
            for line in proc.logs().splitlines()
            if " WARNING " in line or " ERROR " in line or "connections_per_worker" in line
        ], proc.logs()

        async def main() -> int:
            clients: list[Client] = []
            try:
                for _ in range(nofile):  # the limit refuses one well before that
                    try:
                        clients.append(await Client.connect(proc.url))
                    except websockets.InvalidStatus as exc:
                        assert exc.response.status_code == 503
                        return len(clients)
                raise AssertionError(f"{len(clients)} connections and none refused")
            finally:
                for client in clients:
                    await client.close()

        held = run(main())
        assert nofile // 2 < held < nofile


# -- TLS ----------------------------------------------------------------------------------


def test_wss_round_trip(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with ServerProcess(
        tmp_path, workers=2, extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    ).start() as proc:
        context = ssl.create_default_context(cafile=str(cert))
        url = proc.url.replace("ws://127.0.0.1", "wss://localhost")

        async def main() -> None:
            sub = await Client.connect(url, ssl=context)
            pub = await Client.connect(url, ssl=context)
            await sub.call("subscribe", channel="secure")
            for n in range(50):
                await pub.send({"op": "publish", "channel": "secure", "data": n})
            assert [(await sub.next_push())["data"] for _ in range(50)] == list(range(50))
            await sub.close()
            await pub.close()

        run(main())
