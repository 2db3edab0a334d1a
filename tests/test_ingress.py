"""The ZeroMQ ingress of a real server, fed by shardws.Publisher (and by hand, with junk)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess, free_port
from toolkit import run, timeout, wait_until_async
from wsclient import Client, clients_on_workers

from shardws import Publisher, PublisherError

API_KEY = "k" * 24


def _stats(proc: ServerProcess) -> dict[str, Any]:
    request = urllib.request.Request(proc.admin_url + "/api/stats", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(request, timeout=timeout(5)) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def _server(tmp_path: Path, ingress: str) -> tuple[ServerProcess, str]:
    bind = f"tcp://127.0.0.1:{free_port()}"
    proc = ServerProcess(
        tmp_path,
        workers=2,
        admin=f'api_key = "{API_KEY}"',
        extra=f'[ingress]\nbind = "{bind}"\n{ingress}\n[namespaces.default]\n[namespaces.chat]\n',
    )
    return proc.start(), bind


async def _subscribers(proc: ServerProcess, *channels: str) -> list[Client]:
    subs = await clients_on_workers(proc.url, 2)
    for sub in subs:
        for channel in channels:
            assert (await sub.call("subscribe", channel=channel))["ok"]
    return subs


async def _silent(client: Client, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        print("unexpected:", await client.next_push(limit=seconds))


def _metrics(proc: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_publisher_over_tcp_reaches_both_workers_and_junk_is_counted(tmp_path: Path) -> None:
    proc, bind = _server(tmp_path, "")
    try:

        async def main() -> None:
            subs = await _subscribers(proc, "news", "chat:lobby")
            with Publisher(bind) as pub:
                for n in range(200):  # two-frame form
                    pub.publish("news", {"n": n})
                pub.publish("news", b'{"raw" :  [1, 2.50]}')  # bytes: passed on as is
                pub.publish_many(["news", "chat:lobby"], "both")  # one-frame JSON form
            for sub in subs:
                assert [(await sub.next_push())["data"] for _ in range(200)] == [
                    {"n": n} for n in range(200)
                ]
                raw = await sub.ws.recv()
                assert raw == '{"type":"pub","channel":"news","data":{"raw" :  [1, 2.50]}}'
                got = {(await sub.next_push())["channel"] for _ in range(2)}
                assert got == {"news", "chat:lobby"}

            # Junk from a raw PUSH socket: each refused and counted, the admin keeps going.
            junk: list[list[bytes]] = [
                [b"{nope"],
                [b"[1]"],
                [b'{"channel":"nope:x","data":1}'],
                [b'{"channel":"news","data":NaN}'],
                [b"news", b"{"],
                [b"news", b'1,"x":2'],
                [b"news", b"\xff"],
                [b"bad channel", b"1"],
                [b"a", b"1", b"2"],
            ]
            with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
                push.connect(bind)
                for frames in junk:
                    push.send_multipart(frames)
                push.send_multipart([b"news", b'"after the junk"'])
                for sub in subs:
                    assert (await sub.next_push())["data"] == "after the junk"
            ingress = _stats(proc)["admin"]["ingress"]
            assert ingress == {"received": 200 + 2 + len(junk) + 1, "rejected": len(junk)}
            assert "ingress: message refused" in proc.logs()

            # The HTTP transport of the same class: acknowledged, errors raised.
            with Publisher(proc.admin_url, api_key=API_KEY) as http:
                assert http.publish("news", {"via": "http"}) == {"ok": True, "channels": 1}
                assert http.publish_many(["news"], 1) == {"ok": True, "channels": 1}
                with pytest.raises(PublisherError, match="not configured") as info:
                    http.publish("nope:x", 1)
                assert info.value.status == 400
            for sub in subs:
                assert (await sub.next_push())["data"] == {"via": "http"}
                assert (await sub.next_push())["data"] == 1
            await wait_until_async(  # an admin heartbeat: its counters reach /metrics
                lambda: (
                    _metrics(proc).get("shardws_backend_publications_total", 0) >= 200 + 2 + 1 + 2
                ),
                message="the admin's counters did not reach /metrics",
            )
            metrics = _metrics(proc)
            assert metrics["shardws_ingress_messages_total"] == 200 + 2 + len(junk) + 1
            assert metrics["shardws_ingress_rejected_total"] == len(junk)
            assert metrics["shardws_backend_publications_total"] == 200 + 2 + 1 + 2
            with (
                Publisher(proc.admin_url, api_key="wrong-wrong-wrong") as wrong,
                pytest.raises(PublisherError) as info,
            ):
                wrong.publish("news", 1)
            assert info.value.status == 401
            for sub in subs:
                await sub.close()

        run(main())
    finally:
        proc.stop()


def test_curve_ingress_only_delivers_from_authorized_keys(tmp_path: Path) -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    _, stranger_secret = zmq.curve_keypair()
    key_file = tmp_path / "ingress.key_secret"
    key_file.write_bytes(server_secret + b"\n")
    client_key_file = tmp_path / "client.key_secret"
    client_key_file.write_bytes(client_secret)
    proc, bind = _server(
        tmp_path,
        f'curve_secret_key_file = "{key_file}"\n'
        f'curve_authorized_keys = ["{client_public.decode()}"]',
    )
    try:

        async def main() -> None:
            subs = await _subscribers(proc, "news")
            intruders = [
                Publisher(  # a valid key pair the server does not know
                    bind, curve_server_key=server_public, curve_secret_key=stranger_secret
                ),
                Publisher(  # an authorized public key without its secret
                    bind,
                    curve_server_key=server_public,
                    curve_public_key=client_public,
                    curve_secret_key=stranger_secret,
                ),
                Publisher(bind, linger=0),  # no Curve at all
            ]
            for intruder in intruders:
                intruder.publish("news", "intruder")
            started = time.monotonic()
            with Publisher(
                bind,
                curve_server_key=server_public.decode(),
                curve_secret_key=str(client_key_file),  # a key file works too
            ) as pub:
                pub.publish("news", "welcome")
            for sub in subs:
                assert (await sub.next_push())["data"] == "welcome"
            # Give the intruders' handshakes time to have failed, then check nothing came.
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
            for sub in subs:
                await _silent(sub, 0.3)
            for intruder in intruders:
                intruder.close()
            assert _stats(proc)["admin"]["ingress"] == {"received": 1, "rejected": 0}
            for sub in subs:
                await sub.close()

        run(main())
    finally:
        proc.stop()


def test_publisher_arguments() -> None:
    with pytest.raises(ValueError, match="tcp://"):
        Publisher("ws://127.0.0.1:1")
    with pytest.raises(ValueError, match="curve_secret_key"):
        Publisher("tcp://127.0.0.1:1", curve_server_key="x" * 40)
    with pytest.raises(ValueError, match="40 Z85"):
        Publisher("tcp://127.0.0.1:1", curve_server_key="x" * 40, curve_secret_key="short")
    pub = Publisher("tcp://127.0.0.1:1", hwm=1, send_timeout=0.05, linger=0)
    pub.publish("a", 1)  # queued while nobody listens
    with pytest.raises(PublisherError, match="queue is full"):
        pub.publish("a", 2)
    pub.close()
    pub.close()
    with pytest.raises(PublisherError, match="closed"):
        pub.publish("a", 3)


HISTORY = "[namespaces.hist]\nhistory_size = 1000\nhistory_ttl = 600\n"


def test_acknowledged_ingress_answers_where_each_publication_is_stored(tmp_path: Path) -> None:
    """``[ingress] acked_bind`` (ROUTER) and ``Publisher(..., acknowledged=True)``
    (DEALER): a publication to a history channel is answered with its offset once its
    owner stored it, a plain one once queued, a bad one with 400 and the field at
    fault; a repeated request id (the idempotency key) is stored once; junk is counted
    and answered where it has a request id, and never stops the socket."""
    acked = f"tcp://127.0.0.1:{free_port()}"
    proc, _bind = _server(tmp_path, f'acked_bind = "{acked}"\n' + HISTORY)
    try:

        async def main() -> None:
            subs = await _subscribers(proc, "hist:a", "news")
            with Publisher(acked, acknowledged=True, timeout=5) as pub:
                answers = [pub.publish("hist:a", {"n": n}) for n in range(50)]
                assert [a["offset"] for a in answers if a] == list(range(1, 51))
                assert len({a["epoch"] for a in answers if a}) == 1
                assert pub.publish("news", b'{"plain" : 1}') == {"ok": True, "channels": 1}
                first = pub.publish("hist:a", "once", idem="key-1")
                assert pub.publish("hist:a", "once", idem="key-1") == first
                many = pub.publish_many(["hist:a", "news"], "both", idem="key-2")
                assert many is not None and many["positions"]["hist:a"]["offset"] == 52
                with pytest.raises(PublisherError, match="not configured") as info:
                    pub.publish("nope:x", 1)
                assert info.value.status == 400
            for sub in subs:
                got = [await sub.next_push() for _ in range(50 + 1 + 1 + 2)]
                history = [p["data"] for p in got if p["channel"] == "hist:a"]
                assert history == [{"n": n} for n in range(50)] + ["once", "both"]
                assert [p["data"] for p in got if p["channel"] == "news"] == [{"plain": 1}, "both"]
            with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
                dealer.connect(acked)
                dealer.send_multipart([b"r1"])  # a request id and no message: answered
                dealer.send_multipart([b"x" * 65, b"news", b"1"])  # no id to answer: dropped
                dealer.send_multipart([b"r2", b"news", b"1", b"2"])
                dealer.send_multipart([b"r3", b"hist:a", b"{"])
                dealer.send_multipart([b"r4", b"news", b'"after the junk"'])
                answers = {}
                for _ in range(4):
                    assert dealer.poll(int(timeout(5) * 1000))
                    request_id, body = dealer.recv_multipart()
                    answers[request_id] = json.loads(body)
            assert {k: v["status"] for k, v in answers.items()} == {
                b"r1": 400,
                b"r2": 400,
                b"r3": 400,
                b"r4": 200,
            }
            assert "2 (channel, data)" in answers[b"r2"]["error"]
            for sub in subs:
                assert (await sub.next_push())["data"] == "after the junk"
            stats = _stats(proc)["admin"]["acked_ingress"]
            # 55 from the Publisher (the 400 among them), 5 junk (4 answered, 4 refused)
            assert stats == {"received": 55 + 5, "rejected": 1 + 4, "answered": 55 + 4}
            for sub in subs:
                await sub.close()

        run(main())
    finally:
        proc.stop()


def test_acknowledged_ingress_retries_with_its_key_while_the_owner_cannot_answer(
    tmp_path: Path,
) -> None:
    """The history channel's owner stopped (SIGSTOP) for longer than the admin waits: the
    publisher gets 503s and asks again with the same request id; once the owner runs
    again the publication is answered with its position and stored once."""
    import os
    import signal
    import threading

    from shardws.pure.history import owner_of

    acked = f"tcp://127.0.0.1:{free_port()}"
    proc, _bind = _server(tmp_path, f'acked_bind = "{acked}"\n' + HISTORY)
    try:
        owner = owner_of("hist:a", [0, 1])
        pid = next(w["pid"] for w in proc.wait_healthy()["per_worker"] if w["worker"] == owner)
        with Publisher(acked, acknowledged=True, timeout=10, retry_timeout=60) as pub:
            assert pub.publish("hist:a", "before")["offset"] == 1  # type: ignore[index]
            os.kill(pid, signal.SIGSTOP)
            resume = threading.Timer(7.0, os.kill, (pid, signal.SIGCONT))
            resume.start()
            try:
                answer = pub.publish("hist:a", "through the stop")
            finally:
                resume.join()
                os.kill(pid, signal.SIGCONT)
            assert answer is not None and answer["offset"] == 2, answer
            assert pub.retries >= 1  # it was answered 503 at least once
        request = urllib.request.Request(
            proc.admin_url + "/api/history?channel=hist:a", headers={"X-API-Key": API_KEY}
        )
        with urllib.request.urlopen(request, timeout=timeout(5)) as response:
            history = json.loads(response.read())
        assert [p["data"] for p in history["publications"]] == ["before", "through the stop"]
    finally:
        proc.stop()
