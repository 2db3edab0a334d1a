"""The admin port: /metrics in Prometheus format, /ready and the drain."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess, run_cli, timeout
from wsclient import Client, clients_on_workers


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
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
    proc = ServerProcess(tmp_path, workers=2).start()
    try:

        async def main() -> None:
            subs = await clients_on_workers(proc.url, 2)  # one subscriber per worker
            pub = await Client.connect(proc.url)
            for sub in subs:
                await sub.call("subscribe", channel="m")
            for n in range(5):
                await pub.call("publish", channel="m", data=n)
            for sub in subs:
                assert [(await sub.next_push())["data"] for _ in range(5)] == list(range(5))
            await asyncio.sleep(0.7)  # one heartbeat: counters reach shared memory
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

        asyncio.run(asyncio.wait_for(main(), timeout(30)))
    finally:
        proc.stop()


def test_ready_turns_503_first_and_drain_spreads_closes(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=1, server="").start()
    try:
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

        closed_at = asyncio.run(asyncio.wait_for(main(), timeout(30)))
        assert len(closed_at) == 6
        # drain_timeout = 5: closes are spread over ~2.5 s, not all at once
        assert max(closed_at) - min(closed_at) > 1.0
        assert proc.wait_exit(10) == 0
    finally:
        proc.stop()


API_KEY = "k" * 24


def _post(url: str, body: bytes, key: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_publish_api(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=2, admin=f'api_key = "{API_KEY}"')
    proc.start()
    try:
        url = proc.admin_url + "/api/publish"

        async def main() -> None:
            subs = await clients_on_workers(proc.url, 2)
            for round_ in range(10):  # right after each subscribe reply: the barrier holds
                channel = f"api-{round_}"
                for sub in subs:
                    assert (await sub.call("subscribe", channel=channel))["ok"]
                body = json.dumps({"channel": channel, "data": {"n": round_}}).encode()
                status, reply = await asyncio.to_thread(_post, url, body, API_KEY)
                assert (status, reply) == (200, {"ok": True, "channels": 1})
                for sub in subs:
                    assert await sub.next_push() == {
                        "type": "pub",
                        "channel": channel,
                        "data": {"n": round_},
                    }
            body = json.dumps({"channels": ["api-0", "api-1"], "data": "both"}).encode()
            assert (await asyncio.to_thread(_post, url, body, API_KEY))[0] == 200
            for sub in subs:
                got = {(await sub.next_push())["channel"] for _ in range(2)}
                assert got == {"api-0", "api-1"}
            for sub in subs:
                await sub.close()

        asyncio.run(asyncio.wait_for(main(), timeout(30)))
        good = json.dumps({"channel": "x", "data": 1}).encode()
        assert _post(url, good, None)[0] == 401
        assert _post(url, good, "wrong-key-wrong-key")[0] == 401
        for bad, why in (
            (b"{nope", "not JSON"),
            (b'{"channel":"x"}', "data"),
            (b'{"channel":"bad channel","data":1}', "may contain"),
            (b'{"channel":"ns:x","data":1}', "not configured"),
            (b'{"channels":[],"data":1}', "channels"),
        ):
            status, reply = _post(url, bad, API_KEY)
            assert status == 400 and why in str(reply["error"]), reply
        cli = run_cli("publish", "x", '{"a":1}', "-c", str(proc.config_path))
        assert cli.returncode == 0 and '"ok": true' in cli.stdout, cli.stderr
    finally:
        proc.stop()


def test_http_api_disabled_without_key(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=1).start()
    try:
        body = json.dumps({"channel": "x", "data": 1}).encode()
        status, reply = _post(proc.admin_url + "/api/publish", body, "anything-anything")
        assert status == 403 and "api_key" in str(reply["error"])
    finally:
        proc.stop()
