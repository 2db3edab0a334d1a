"""The admin port: /metrics in Prometheus format, /ready and the drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import websockets
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess, http_json, loopback_cluster, run_cli
from toolkit import run, timeout
from wsclient import Client, clients_on_workers

from shardws.pure.auth import make_token


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout(2)) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[str, float]:
    """Sum of every sample by name and (sorted) labels other than ``worker``."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "worker")
            key = f"{sample.name}{{{labels}}}"
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def test_metrics_count_what_clients_did(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2).start() as proc:

        async def main() -> None:
            subs = await clients_on_workers(proc.url, 2)  # one subscriber per worker
            pub = await Client.connect(proc.url)
            for sub in subs:
                await sub.call("subscribe", channel="m")
            for n in range(5):
                await pub.call("publish", channel="m", data=n)
            for sub in subs:
                assert [(await sub.next_push())["data"] for _ in range(5)] == list(range(5))
            await asyncio.to_thread(proc.wait_heartbeat)  # counters reach shared memory
            status, text = _get(proc.admin_url + "/metrics")
            assert status == 200
            got = _samples(text)
            assert got["websocket_active_connections{}"] == 3
            assert got["websocket_messages_total{direction=in}"] == 7  # 2 subscribes, 5 publishes
            assert got["websocket_messages_total{direction=out}"] == 10  # 5 x 2 subscribers
            assert got["shardws_publications_total{}"] == 5
            assert got["shardws_worker_up{}"] == 2
            assert got["shardws_worker_restarts_total{}"] == 0
            assert got["process_open_fds_by_worker{}"] > 0
            # One latency observation per publication per worker with subscribers:
            # 5 delivered locally on the publisher's worker, 5 through the bus.
            assert got["websocket_message_latency_seconds_count{}"] == 10
            assert got["websocket_message_latency_seconds_bucket{le=+Inf}"] == 10
            assert 0 < got["websocket_message_latency_seconds_sum{}"] < 10
            buckets = sorted(
                (float(key.split("le=")[1].rstrip("}")), value)
                for key, value in got.items()
                if key.startswith("websocket_message_latency_seconds_bucket")
            )
            counts = [value for _, value in buckets]
            assert counts == sorted(counts) and len(counts) > 10  # cumulative
            for client in [*subs, pub]:
                await client.close()

        run(main(), 30)


def test_ready_turns_503_first_and_drain_spreads_closes(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1, server="").start() as proc:
        assert _get(proc.admin_url + "/ready")[0] == 200

        async def main() -> list[float]:
            clients = [await Client.connect(proc.url) for _ in range(6)]

            async def closed(client: Client) -> float:
                assert (await client.recv(limit=10))["type"] == "reconnect"
                try:
                    await client.recv(limit=10)
                except websockets.ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code == 1001
                    return time.monotonic()
                raise AssertionError("expected the 1001 close after the reconnect hint")

            watchers = [asyncio.create_task(closed(client)) for client in clients]
            proc.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout(2)
            status = 200
            while status == 200 and time.monotonic() < deadline:
                status = (await asyncio.to_thread(_get, proc.admin_url + "/ready"))[0]
            assert status == 503  # the load balancer is told before clients are closed
            return list(await asyncio.gather(*watchers))

        closed_at = run(main(), 30)
        assert len(closed_at) == 6
        # drain_timeout = 5: closes are spread over ~2.5 s, not all at once
        assert max(closed_at) - min(closed_at) > 1.0
        assert proc.wait_exit(10) == 0


API_KEY = "k" * 24


def test_http_publish_api(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2, admin=f'api_key = "{API_KEY}"').start() as proc:
        url = proc.admin_url + "/api/publish"

        async def main() -> None:
            subs = await clients_on_workers(proc.url, 2)
            for round_ in range(10):  # right after each subscribe reply: the barrier holds
                channel = f"api-{round_}"
                for sub in subs:
                    assert (await sub.call("subscribe", channel=channel))["ok"]
                body = json.dumps({"channel": channel, "data": {"n": round_}}).encode()
                status, reply = await asyncio.to_thread(http_json, url, body, API_KEY)
                assert (status, reply) == (200, {"ok": True, "channels": 1})
                for sub in subs:
                    assert await sub.next_push() == {
                        "type": "pub",
                        "channel": channel,
                        "data": {"n": round_},
                    }
            body = json.dumps({"channels": ["api-0", "api-1"], "data": "both"}).encode()
            assert (await asyncio.to_thread(http_json, url, body, API_KEY))[0] == 200
            for sub in subs:
                got = {(await sub.next_push())["channel"] for _ in range(2)}
                assert got == {"api-0", "api-1"}
            for sub in subs:
                await sub.close()

        run(main(), 30)
        good = json.dumps({"channel": "x", "data": 1}).encode()
        assert http_json(url, good, None)[0] == 401
        assert http_json(url, good, "wrong-key-wrong-key")[0] == 401
        for bad, why in (
            (b"{nope", "not JSON"),
            (b'{"channel":"x"}', "data"),
            (b'{"channel":"bad channel","data":1}', "may contain"),
            (b'{"channel":"ns:x","data":1}', "not configured"),
            (b'{"channels":[],"data":1}', "channels"),
        ):
            status, reply = http_json(url, bad, API_KEY)
            assert status == 400 and why in str(reply["error"]), reply
        cli = run_cli("publish", "x", '{"a":1}', "-c", str(proc.config_path))
        assert cli.returncode == 0 and '"ok": true' in cli.stdout, cli.stderr


def test_http_api_disabled_without_key(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1).start() as proc:
        body = json.dumps({"channel": "x", "data": 1}).encode()
        for path in ("/api/publish", "/api/disconnect"):
            status, reply = http_json(proc.admin_url + path, body, "anything-anything")
            assert status == 403 and "api_key" in str(reply["error"])
        for path in ("/api/channels", "/api/stats"):
            status, reply = _get_json(proc.admin_url + path, "anything-anything")
            assert status == 403 and "api_key" in str(reply["error"])


def test_http_api_disabled_says_how_to_enable_it(tmp_path: Path) -> None:
    # A user with curl sees the two config lines and how to start the server with them.
    with ServerProcess(tmp_path, workers=1).start() as proc:
        body = json.dumps({"channel": "news", "data": 1}).encode()
        status, reply = http_json(proc.admin_url + "/api/publish", body)
    error = str(reply["error"])
    assert status == 403, reply
    assert "[admin]" in error and 'api_key = "' in error and "shardws serve -c" in error, error


def _get_json(url: str, key: str | None) -> tuple[int, dict[str, Any]]:
    return http_json(url, key=key)


SECRET = "s3cret-for-tests-only-0123456789abcdef"
AUTH = f'''
[auth]
anonymous = false
secret = "{SECRET}"
'''


def _as(url: str, user: str) -> str:
    return f"{url}?token={make_token(SECRET, user, 3600)}"


async def _closed_with(client: Client) -> tuple[int, str]:
    """The close code and reason the server closed ``client`` with (pushes skipped)."""
    try:
        while True:
            await client.recv(limit=5)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason


async def _quiet(client: Client) -> None:
    """Nothing was pushed to ``client`` before the reply to a ping sent now."""
    reply = await client.call("ping")
    assert reply["ok"] and not client.pushes, client.pushes


def test_disconnect_and_publish_by_user(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path, workers=2, admin=f'api_key = "{API_KEY}"', extra=AUTH
    ).start() as proc:
        publish, disconnect = proc.admin_url + "/api/publish", proc.admin_url + "/api/disconnect"

        async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
            status, reply = await asyncio.to_thread(
                http_json, url, json.dumps(body).encode(), API_KEY
            )
            assert status == 200, reply
            return reply

        async def main() -> None:
            alice = await clients_on_workers(_as(proc.url, "alice"), 2, per_worker=2)
            late = await Client.connect(proc.url)  # way 2: the token in a connect message
            assert (await late.call("connect", token=make_token(SECRET, "alice", 60)))["ok"]
            alice.append(late)
            bob = await clients_on_workers(_as(proc.url, "bob"), 2)
            carol = await clients_on_workers(_as(proc.url, "carol"), 2)
            for client in carol:
                assert (await client.call("subscribe", channel="after"))["ok"]

            reply = await post(publish, {"user": "alice", "data": {"n": 1}})
            assert reply == {"ok": True, "user": "alice"}
            for client in alice:
                assert await client.next_push() == {
                    "type": "pub",
                    "user": "alice",
                    "data": {"n": 1},
                }
            for client in bob + carol:
                await _quiet(client)

            assert await post(disconnect, {"user": "alice"}) == {"ok": True}
            for client in alice:
                assert await _closed_with(client) == (4009, "disconnected by the server")
            custom = {"user": "bob", "code": 4500, "reason": "maintenance"}
            assert await post(disconnect, custom) == {"ok": True}
            for client in bob:
                assert await _closed_with(client) == (4500, "maintenance")

            # Everyone else is untouched and still served.
            await post(publish, {"channel": "after", "data": 2})
            for client in carol:
                assert (await client.next_push())["data"] == 2
                await _quiet(client)
            # The last alice connection left, so the workers dropped her topic; a new one
            # resubscribes it before its connected push.
            again = await clients_on_workers(_as(proc.url, "alice"), 2)
            await post(publish, {"user": "alice", "data": "back"})
            for client in again:
                assert (await client.next_push())["data"] == "back"
            for client in again + carol:
                await client.close()

        run(main())
        assert http_json(disconnect, b'{"user":"x"}', None)[0] == 401
        for bad, why in (
            (b"{nope", "not JSON"),
            (b"{}", '"user"'),
            (b'{"user":""}', "non-empty"),
            (b'{"user":"a","code":1000}', "4000 to 4999"),
            (b'{"user":"a","reason":"' + b"x" * 200 + b'"}', "120 bytes"),
        ):
            status, reply = http_json(disconnect, bad, API_KEY)
            assert status == 400 and why in str(reply["error"]), reply
        cli = run_cli("publish", "--user", "alice", '{"a":1}', "-c", str(proc.config_path))
        assert cli.returncode == 0 and '"user": "alice"' in cli.stdout, cli.stderr


def test_channels_and_stats(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2, admin=f'api_key = "{API_KEY}"').start() as proc:
        channels_url, stats_url = proc.admin_url + "/api/channels", proc.admin_url + "/api/stats"

        async def channels(query: str = "") -> dict[str, Any]:
            status, body = await asyncio.to_thread(_get_json, channels_url + query, API_KEY)
            assert status == 200, body
            return body

        async def main() -> None:
            w0a, w0b, w1a, w1b = await clients_on_workers(proc.url, 2, per_worker=2)
            for client, names in ((w0a, "ab"), (w0b, "a"), (w1a, "ac"), (w1b, "")):
                for name in names:
                    assert (await client.call("subscribe", channel=f"ch-{name}"))["ok"]
            assert await channels() == {
                "channels": {"ch-a": 3, "ch-b": 1, "ch-c": 1},
                "workers": 2,
                "complete": True,
                "truncated": False,
            }
            assert (await channels("?prefix=ch-a"))["channels"] == {"ch-a": 3}
            limited = await channels("?limit=2")
            assert (limited["channels"], limited["truncated"]) == ({"ch-a": 3, "ch-b": 1}, True)
            await w0b.close()
            assert (await channels())["channels"] == {"ch-a": 2, "ch-b": 1, "ch-c": 1}
            for n in range(3):
                await w1b.call("publish", channel="ch-c", data=n)
            for n in range(3):
                assert (await w1a.next_push())["data"] == n
            await asyncio.to_thread(
                http_json, proc.admin_url + "/api/publish", b'{"channel":"ch-b","data":0}', API_KEY
            )
            assert (await w0a.next_push())["channel"] == "ch-b"
            await asyncio.to_thread(proc.wait_heartbeat)  # counters reach shared memory
            status, stats = await asyncio.to_thread(_get_json, stats_url, API_KEY)
            assert status == 200, stats
            total = stats["total"]
            assert total["connections"] == 3
            assert [w["connections"] for w in stats["per_worker"]] == [1, 2]
            assert total["publications"] == 3  # from clients; the API's are the admin's
            assert total["messages_out"] == 3 + 1
            assert total["messages_in"] == 5 + 3  # subscribes, publishes
            assert total["bytes_out"] > 0 and total["closed"] >= 1  # + surplus connections
            assert stats["admin"]["publications"] == 1
            assert stats["admin"]["ingress"] is None  # [ingress] bind not set

            # A worker that is READY but does not answer (stopped) is reported, not waited for.
            pid = proc.health()[1]["per_worker"][1]["pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                partial = await channels()
                assert time.monotonic() - started < timeout(3)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert partial["complete"] is False and partial["missing"] == [1]
            assert partial["workers"] == 1 and partial["channels"] == {"ch-a": 1, "ch-b": 1}
            for client in (w0a, w1a, w1b):
                await client.close()

        run(main())
        for query, why in (("?limit=0", "limit"), ("?limit=x", "limit")):
            status, body = _get_json(channels_url + query, API_KEY)
            assert status == 400 and why in body["error"], body
        assert _get_json(channels_url, None)[0] == 401
        assert _get_json(stats_url, "wrong-key-wrong-key")[0] == 401


OPERATIONS_DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def documented_series(hub: bool = True) -> dict[str, tuple[str, frozenset[str]]]:
    """docs/operations.md's series table: name -> (type, label names); without ``hub``,
    not the series it says are the Redis hub's only."""
    text = OPERATIONS_DOC.read_text()
    table = text.split("<!-- series:begin -->", 1)[1].split("<!-- series:end -->", 1)[0]
    series = {}
    for line in table.strip().splitlines()[2:]:  # past the header and its rule
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name, kind, labels = cells[0].strip("`"), cells[1], cells[2]
        names = (
            frozenset() if labels == "—" else frozenset(x.strip(" `") for x in labels.split(","))
        )
        assert name not in series, f"{name} listed twice"
        if hub or not cells[3].startswith("Redis hub only"):
            series[name] = (kind, names)
    return series


def test_every_exported_series_is_documented_with_its_labels(tmp_path: Path, engine: str) -> None:
    """Two hosts in a cluster on loopback (on each engine), so the cluster series exist
    too: every series of host a's /metrics is in docs/operations.md with the same type
    and label names, and every series there is exported."""
    a, b = loopback_cluster(tmp_path, engine=engine)
    try:
        a.start()
        b.start()
        deadline = time.monotonic() + timeout(20)
        while True:
            with urllib.request.urlopen(a.admin_url + "/metrics", timeout=5) as response:
                text = response.read().decode()
            if 'shardws_cluster_peer_up{peer="b"} 1.0' in text:
                break
            assert time.monotonic() < deadline, f"peer b never up:\n{text}"
            time.sleep(0.1)
    finally:
        a.stop()
        b.stop()
    exported: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(sample.labels)
            previous = exported.setdefault(sample.name, (family.type, labels))
            assert previous == (family.type, labels), sample.name  # one label set a series
    documented = documented_series(hub=engine != "mesh")
    for name, (kind, labels) in exported.items():
        assert name in documented, f"{name} is exported but not in docs/operations.md"
        assert documented[name] == (kind, labels), (name, documented[name], (kind, labels))
    assert set(documented) == set(exported), set(documented) - set(exported)
