"""Delta subscriptions on real servers (docs/protocol.md, "Delta subscriptions"): the bars
of the delta issue. A history channel with full and delta subscribers in both formats
over 2 workers, with worker kills and recoveries: every subscriber's decoded data equals
the published data, once, in order. A plain channel with a slow ``drop`` subscriber:
every publication it receives decodes to the published data, the one after a drop full."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import string
import subprocess
from pathlib import Path
from typing import Any

import picows
import pytest
from external import require
from serverproc import ServerProcess
from test_slow_consumers import _Paused  # stops reading once subscribed
from toolkit import run, timeout

import shardws
from shardws.client import Backoff, Client, connect
from shardws.core import delta_apply
from shardws.pure.history import owner_of

NAMESPACES = """
[namespaces.default]

[namespaces.dash]
history_size = 1000
history_ttl = 600
allowed_delta_types = ["fossil"]

[namespaces.lossy]
slow_consumer = "drop"
allowed_delta_types = ["fossil"]
"""
CHANNEL = "dash:plant-3"
FAST = Backoff(initial=0.05, factor=2.0, cap=0.5)


def dashboard(values: dict[int, float]) -> dict[str, Any]:
    """The dashboard state of the MessagePack issue's fixture, ``values`` changed."""
    return {
        "dashboard": "plant-3",
        "records": [
            {
                "id": i,
                "name": f"sensor-{i:03d}",
                "value": values.get(i, round((i * 7919 % 100000) / 100, 2)),
                "status": "ok",
                "unit": "kPa",
            }
            for i in range(40)
        ],
    }


def updates(count: int, seed: int = 33) -> list[dict[str, Any]]:
    """``count`` successive states, each changing the value of 1-3 records."""
    rng = random.Random(seed)
    values: dict[int, float] = {}
    states = []
    for _ in range(count):
        for record in rng.sample(range(40), rng.randint(1, 3)):
            values[record] = round(rng.uniform(0, 1000), 2)
        states.append(dashboard(values))
    return states


def worker_pids(proc: ServerProcess) -> dict[int, int]:
    return {w["worker"]: w["pid"] for w in proc.wait_healthy()["per_worker"]}


def test_full_and_delta_subscribers_in_both_formats_through_worker_kills(tmp_path: Path) -> None:
    count = 120
    states = updates(count)
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:
        victim = 1 - owner_of(CHANNEL, [0, 1])  # killing the owner would lose the history

        async def main() -> None:
            kinds = [(fmt, delta) for fmt in ("json", "msgpack") for delta in (None, "fossil")]
            clients: list[Client] = []
            subs = []
            got: list[list[Any]] = []
            for fmt, delta in kinds * 3:
                client = await connect(proc.url, format=fmt, backoff=FAST)
                received: list[Any] = []
                subs.append(
                    await client.subscribe(
                        CHANNEL, lambda p, r=received: r.append(p.data), delta=delta
                    )
                )
                clients.append(client)
                got.append(received)
            publisher = await connect(proc.url, backoff=FAST)

            async def stream() -> None:
                for n, state in enumerate(states):
                    await publisher.publish(CHANNEL, state)
                    if n % 10 == 9:
                        await asyncio.sleep(0.05)

            streaming = asyncio.create_task(stream())
            for _ in range(2):
                await asyncio.sleep(0.4)
                pid = (await asyncio.to_thread(worker_pids, proc))[victim]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait_healthy, 20.0, {pid})
            await streaming
            deadline = asyncio.get_running_loop().time() + timeout(30)
            while any(len(received) < count for received in got):
                assert asyncio.get_running_loop().time() < deadline, [len(r) for r in got]
                await asyncio.sleep(0.05)
            for (fmt, delta), received, sub in zip(kinds * 3, got, subs, strict=True):
                assert received == states, (fmt, delta, len(received))
                assert sub.gaps == 0 and sub.delta_failures == 0, (fmt, delta)
                if delta:
                    assert sub.deltas > count // 2, (fmt, sub.deltas)
            assert sum(c.connects - 1 for c in clients) >= 1  # the kills did hit some
            assert any(sub.recoveries for sub in subs if sub.delta)
            for client in [*clients, publisher]:
                await client.close()

        run(main(), 90)


def _decode_stream(texts: list[bytes]) -> list[tuple[Any, bool]]:
    """The data of every pub push of a JSON delta subscription, with whether it came as
    a delta (applied to the previous one's bytes)."""
    out = []
    base: bytes | None = None
    for text in texts:
        push = json.loads(text)
        if push.get("type") != "pub":
            continue
        payload = push["data"].encode()
        if push.get("delta"):
            assert base is not None
            payload = delta_apply(base, payload)
        base = payload
        out.append((json.loads(payload), bool(push.get("delta"))))
    return out


def test_a_slow_drop_subscriber_decodes_what_it_receives(tmp_path: Path) -> None:
    messages = 300
    rng = random.Random(7)
    states = []
    for n in range(messages + 4):  # 4 more after the backlog drained: small changes
        if (
            n % 2 == 0 and n < messages
        ):  # fresh 50 KB: a full push; 7.5 MB of them fill the paused socket
            pad = "".join(rng.choices(string.ascii_letters, k=50_000))
        else:  # the previous one with a small change: a delta
            pad = pad[:100] + "changed" + pad[107:]
        states.append({"n": n, "p": pad})
    with ServerProcess(
        tmp_path, workers=1, extra=NAMESPACES, server="max_pending_bytes = 200000"
    ).start() as proc:

        async def main() -> None:
            transport, slow = await picows.ws_connect(_Paused, proc.url, max_frame_size=1 << 22)
            subscribe = {"id": 1, "op": "subscribe", "channel": "lossy:feed", "delta": "fossil"}
            transport.send(picows.WSMsgType.TEXT, json.dumps(subscribe).encode())
            await asyncio.wait_for(slow.subscribed.wait(), timeout(5))
            assert slow.texts[-1] == b'{"id":1,"ok":true}'
            transport.underlying_transport.pause_reading()
            async with connect(proc.url) as reader, connect(proc.url) as publisher:
                fast: list[Any] = []
                sub = await reader.subscribe(
                    "lossy:feed", lambda p: fast.append(p.data), delta="fossil"
                )
                for state in states[:messages]:  # closed loop: a reading client keeps up
                    await publisher.publish("lossy:feed", state)
                deadline = asyncio.get_running_loop().time() + timeout(20)
                while len(fast) < messages:
                    assert asyncio.get_running_loop().time() < deadline, len(fast)
                    await asyncio.sleep(0.05)
                assert fast == states[:messages] and sub.deltas >= messages // 2 - 1
                transport.underlying_transport.resume_reading()
                transport.send(picows.WSMsgType.TEXT, b'{"id":2,"op":"ping"}')
                deadline = asyncio.get_running_loop().time() + timeout(10)
                while b'{"id":2,"ok":true}' not in slow.texts:
                    assert asyncio.get_running_loop().time() < deadline, "no ping reply"
                    await asyncio.sleep(0.05)
                # Caught up: the next one reaches it full (it missed the one before).
                for state in states[messages:]:
                    await publisher.publish("lossy:feed", state)
                while _decode_stream(slow.texts)[-1][0]["n"] != len(states) - 1:
                    assert asyncio.get_running_loop().time() < deadline, "no later pushes"
                    await asyncio.sleep(0.05)
            received = _decode_stream(slow.texts)
            ns = [data["n"] for data, _delta in received]
            assert ns == sorted(ns) and len(ns) < len(states)  # some dropped, order kept
            for data, _delta in received:
                assert data == states[data["n"]]
            # A delta only right after the publication before it: the one after a drop
            # came full.
            for (previous, _), (data, as_delta) in itertools.pairwise(received):
                if as_delta:
                    assert data["n"] == previous["n"] + 1
            assert any(as_delta for _, as_delta in received)
            after_drop = [
                as_delta
                for (previous, _), (data, as_delta) in itertools.pairwise(received)
                if data["n"] != previous["n"] + 1
            ]
            assert after_drop and not any(after_drop)
            await asyncio.to_thread(proc.wait_heartbeat)
            _, body = proc.health()
            assert body["per_worker"][0]["drops"] == len(states) - len(ns)
            transport.disconnect()

        run(main())


#: shardws.js in Node (``--experimental-websocket``: Node 20's WebSocket) with the
#: vendored codec: a full and a delta subscriber in each format; the publications come
#: from the test on stdin's cue.
JS_SCENARIO = """
const [script, codec, url, count] = process.argv.slice(1);
require(script);
const MessagePack = require(codec);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  const got = {}, subs = {};
  for (const format of ["json", "msgpack"]) {
    for (const delta of [null, "fossil"]) {
      const options = format === "msgpack" ? {format, msgpack: MessagePack} : {format};
      const client = new globalThis.ShardWS(url, options);
      const key = format + "/" + (delta || "full");
      got[key] = [];
      subs[key] = await client.subscribe(
        "dash:js", {onPublication: (p) => got[key].push(p.data)}, {delta});
    }
  }
  console.log("ready");
  const done = () => Object.values(got).every((list) => list.length >= Number(count));
  for (let i = 0; i < 800 && !done(); i++) await sleep(25);
  const deltas = {}, failures = {};
  for (const key in subs) {
    deltas[key] = subs[key].deltas;
    failures[key] = subs[key].deltaFailures;
  }
  process.stdout.write(JSON.stringify({got, deltas, failures}) + "\\n", () => process.exit(0));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.needs("node")
def test_shardws_js_applies_deltas_in_both_formats(tmp_path: Path) -> None:
    count = 30
    states = updates(count, seed=5)
    static = Path(shardws.__file__).parent / "static"
    with ServerProcess(tmp_path, workers=2, extra=NAMESPACES).start() as proc:
        node = subprocess.Popen(
            [
                require("node"),
                "--experimental-websocket",
                "--no-warnings",
                "-e",
                JS_SCENARIO,
                str(static / "shardws.js"),
                str(static / "msgpack.min.js"),
                proc.url,
                str(count),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert node.stdout is not None
            assert node.stdout.readline().strip() == "ready", node.stderr

            async def publish() -> None:
                async with connect(proc.url, format="msgpack") as publisher:
                    for state in states:
                        await publisher.publish("dash:js", state)

            run(publish())
            out, err = node.communicate(timeout=timeout(30))
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
        assert node.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        for key, got in result["got"].items():
            assert got == states, key
        assert result["failures"] == dict.fromkeys(result["got"], 0)
        assert result["deltas"]["json/fossil"] >= count - 2
        assert result["deltas"]["msgpack/fossil"] >= count - 2
        assert result["deltas"]["json/full"] == result["deltas"]["msgpack/full"] == 0


def test_recovered_publications_come_full_and_deltas_resume_from_the_last(
    tmp_path: Path,
) -> None:
    from wsclient import Client as Raw

    states = [json.dumps(s, separators=(",", ":")) for s in updates(6, seed=9)]
    with ServerProcess(tmp_path, workers=1, extra=NAMESPACES).start() as proc:

        async def main() -> None:
            keeper = await Raw.connect(proc.url)  # keeps the channel's base on the worker
            await keeper.call("subscribe", channel="dash:r", delta="fossil")
            publisher = await Raw.connect(proc.url)
            first = await Raw.connect(proc.url)
            start = await first.call("subscribe", channel="dash:r", delta="fossil")
            for state in states[:2]:
                await publisher.call("publish", channel="dash:r", data=json.loads(state))
            pushes = [await first.next_push() for _ in range(2)]
            assert [p.get("delta", False) for p in pushes] == [False, True]
            await first.close()
            for state in states[2:4]:
                await publisher.call("publish", channel="dash:r", data=json.loads(state))
            again = await Raw.connect(proc.url)
            recover = {"epoch": start["epoch"], "offset": pushes[-1]["offset"]}
            reply = await again.call("subscribe", channel="dash:r", delta="fossil", recover=recover)
            assert reply["recovered"] is True
            recovered = [await again.next_push() for _ in range(2)]
            # Full, the data as JSON text (the publisher's, byte for byte).
            assert [json.loads(p["data"]) for p in recovered] == [
                json.loads(s) for s in states[2:4]
            ]
            assert not any(p.get("delta") for p in recovered)
            await publisher.call("publish", channel="dash:r", data=json.loads(states[4]))
            live = await again.next_push()
            assert live["delta"] is True and live["offset"] == 5
            rebuilt = delta_apply(recovered[-1]["data"].encode(), live["data"].encode())
            assert json.loads(rebuilt) == json.loads(states[4])
            for client in (keeper, publisher, again):
                await client.close()

        run(main())
