"""The ``shardws.msgpack`` subprotocol on real servers: the upgrade, commands and replies
in MessagePack, data across formats (docs/protocol.md, "Data across formats"), hostile
input, user messages, join/leave, presence and the admin's publications, and the bar:
JSON and MessagePack subscribers and publishers over 2 workers with history and
recovery, every publication once, in order, with equal decoded data."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
import websockets
from external import CHROMIUM_ARGS, require
from playwright import sync_api
from serverproc import ServerProcess, http_json
from toolkit import run, timeout, wait_until_async
from wsclient import Client, clients_on_workers

import shardws
from shardws.client import connect
from shardws.pure.auth import make_token
from shardws.pure.msgpackwire import SUBPROTOCOL

SECRET = "s3cret-for-msgpack-tests-0123456789"
#: Namespaces, tokens optional (user messages), and every message compressed (binary
#: frames through permessage-deflate too: websockets offers it).
NAMESPACES = f"""
[namespaces.default]

[namespaces.chat]
history_size = 1000
history_ttl = 600
presence = true
join_leave = true

[auth]
anonymous = true
secret = "{SECRET}"

[compression]
enabled = true
threshold = 0
"""


API_KEY = "msgpack-test-api-key"


#: The module's server (conftest ``server``), started once per engine of ``ENGINES``:
#: the data paths cross workers. The mesh only: the module's history namespace is not
#: served on the Redis hub yet (``check-config`` refuses it there).
ENGINES = ("mesh",)
SERVER = {
    "workers": 2,
    "extra": NAMESPACES,
    "admin": f'api_key = "{API_KEY}"',
    "server": "demo = true",  # a page that loads /shardws.js, for the Chromium test
}


def test_upgrade_chooses_msgpack_and_every_message_is_binary(server: ServerProcess) -> None:
    async def scenario() -> None:
        ws = await websockets.connect(server.url, subprotocols=[SUBPROTOCOL], ping_interval=None)
        assert ws.subprotocol == SUBPROTOCOL
        hello = await asyncio.wait_for(ws.recv(), timeout(5))
        assert isinstance(hello, bytes)
        assert msgpack.unpackb(hello)["type"] == "connected"
        await ws.send(msgpack.packb({"id": 1, "op": "ping"}))
        reply = await asyncio.wait_for(ws.recv(), timeout(5))
        assert msgpack.unpackb(reply) == {"id": 1, "ok": True}
        await ws.close()
        plain = await websockets.connect(server.url, ping_interval=None)
        assert plain.subprotocol is None
        assert isinstance(await asyncio.wait_for(plain.recv(), timeout(5)), str)
        await plain.close()

    run(scenario())


def test_msgpack_publisher_bytes_reach_msgpack_subscribers_unchanged(
    server: ServerProcess,
) -> None:
    # A float32, which the server's own encoder would never produce: it must not re-encode.
    data = b"\x82\xa1v\xca\x3f\xc0\x00\x00\xa1b\xc4\x02\x00\xff"
    whole = b"\xc4\x03\x01\x02\x03"

    async def scenario() -> None:
        subs = await clients_on_workers(server.url, 2, msgpack=True)
        json_subs = await clients_on_workers(server.url, 2)
        for client in subs + json_subs:
            assert (await client.call("subscribe", channel="raw"))["ok"]
        pub = await Client.connect(server.url, msgpack=True)  # not subscribed
        command = b"\x84\xa2id\x07\xa2op\xa7publish\xa7channel\xa3raw\xa4data"
        await pub.ws.send(command + whole)
        assert (await pub.reply(7))["ok"]
        for client in subs:
            raw = await asyncio.wait_for(client.ws.recv(), timeout(5))
            assert raw.endswith(b"\xa4data" + whole)
            assert msgpack.unpackb(raw)["data"] == b"\x01\x02\x03"
        for client in json_subs:
            push = await client.next_push()
            assert push == {"type": "pub", "channel": "raw", "b64data": "AQID"}
        # Nested binary is refused (it has no JSON form), with the command's id.
        await pub.ws.send(command.replace(b"\x07", b"\x08") + data)
        error = await pub.reply(8)
        assert error["error"]["code"] == 107 and "binary" in error["error"]["message"]
        for client in [*subs, *json_subs, pub]:
            await client.close()

    run(scenario())


def test_recovered_and_history_pushes_keep_the_msgpack_publishers_bytes(
    server: ServerProcess,
) -> None:
    """Recovery and the history op hand a MessagePack subscriber the publisher's bytes
    too (a float32 stays a float32), not a re-encoding through JSON."""
    data = b"\x81\xa1v\xca\x3f\xc0\x00\x00"  # {"v": 1.5} with v a float32
    marker = b"\xa4data" + data

    async def scenario() -> None:
        pub = await Client.connect(server.url, msgpack=True)
        head = b"\x84\xa2id%c\xa2op\xa7publish\xa7channel\xaachat:exact\xa4data"
        positions = []
        for command_id in (7, 8, 9):
            await pub.ws.send(head % command_id + data)
            positions.append(await pub.reply(command_id))
        first = positions[0]
        sub = await Client.connect(server.url, msgpack=True)
        since = {"epoch": first["epoch"], "offset": first["offset"] - 1}
        await sub.send({"id": 1, "op": "subscribe", "channel": "chat:exact", "recover": since})
        raws = [await asyncio.wait_for(sub.ws.recv(), timeout(5)) for _ in range(4)]
        reply = msgpack.unpackb(raws[0])
        assert reply["recovered"] is True and reply["offset"] == positions[-1]["offset"]
        assert all(raw.endswith(marker) for raw in raws[1:]), raws
        await sub.send({"id": 2, "op": "history", "channel": "chat:exact", "limit": 10})
        page = await asyncio.wait_for(sub.ws.recv(), timeout(5))
        assert page.count(marker) == 3, page
        decoded = msgpack.unpackb(page)
        assert decoded["id"] == 2 and decoded["ok"] is True
        assert [p["data"] for p in decoded["publications"]] == [{"v": 1.5}] * 3
        assert [p["offset"] for p in decoded["publications"]] == [p["offset"] for p in positions]
        for client in (pub, sub):
            await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({1: "a"}, "keys must be strings"),
        (float("nan"), "NaN"),
        ([msgpack.ExtType(5, b"x")], "extension"),
    ],
)
def test_data_without_a_json_form_is_refused_at_publish(
    server: ServerProcess, data: Any, words: str
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url, msgpack=True)
        reply = await client.call("publish", channel="x", data=data)
        assert reply["error"]["code"] == 107 and words in reply["error"]["message"]
        await client.close()

    run(scenario())


def test_hostile_messages_get_error_replies_and_the_connection_stays(
    server: ServerProcess,
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url, msgpack=True)
        for bad in (b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa2op", b"\x81\xa2op\x01", b"\x80\x80"):
            await client.ws.send(bad)
            assert (await client.recv())["error"]["code"] == 107
        await client.ws.send('{"op":"ping"}')  # text on a MessagePack connection
        assert (await client.recv())["error"]["code"] == 113
        assert (await client.call("ping"))["ok"]
        plain = await Client.connect(server.url)
        await plain.ws.send(msgpack.packb({"op": "ping"}))  # binary on a JSON connection
        assert (await plain.recv())["error"]["code"] == 113
        await client.close()
        await plain.close()

    run(scenario())


def test_json_data_reaches_msgpack_subscribers_as_values(server: ServerProcess) -> None:
    async def scenario() -> None:
        sub = await Client.connect(server.url, msgpack=True)
        assert (await sub.call("subscribe", channel="conv"))["ok"]
        pub = await Client.connect(server.url)
        big = 2**70
        await pub.ws.send(f'{{"id":1,"op":"publish","channel":"conv","data":[1.5,"é",{big}]}}')
        assert (await pub.reply(1))["ok"]
        assert (await sub.next_push())["data"] == [1.5, "é", float(big)]
        status, _ = http_json(
            f"{server.admin_url}/api/publish",
            json.dumps({"channel": "conv", "data": {"n": 2**60}}).encode(),
            key=API_KEY,
        )
        assert status == 200
        assert (await sub.next_push())["data"] == {"n": 2**60}
        await sub.close()
        await pub.close()

    run(scenario())


def test_join_leave_and_presence(server: ServerProcess) -> None:
    async def scenario() -> None:
        watcher = await Client.connect(server.url, msgpack=True)
        assert (await watcher.call("subscribe", channel="chat:room"))["ok"]
        other = await Client.connect(server.url)
        assert (await other.call("subscribe", channel="chat:room"))["ok"]
        join = await watcher.next_push()
        assert join["type"] == "join" and join["client"] == other.client_id
        presence = await watcher.call("presence", channel="chat:room")
        clients = {member["client"] for member in presence["members"]}
        assert clients == {watcher.client_id, other.client_id}
        history = await watcher.call("history", channel="chat:room")
        assert history["ok"] and history["publications"] == []
        await other.close()
        leave = await watcher.next_push()
        assert leave["type"] == "leave" and leave["client"] == other.client_id
        await watcher.close()

    run(scenario())


def _decoded(push: dict[str, Any]) -> Any:
    # What an application gets: b64data is whole-binary data for a JSON subscriber.
    return base64.b64decode(push["b64data"]) if "b64data" in push else push["data"]


class Reader:
    """A subscriber of ``chat:bar`` in one format that keeps (offset, data) of every
    push; ``reconnect_after`` pushes it reconnects once and recovers."""

    def __init__(self, url: str, client: Client, reconnect_after: int = 0) -> None:
        self.url = url
        self.client = client
        self.reconnect_after = reconnect_after
        self.got: list[tuple[int, Any]] = []
        self.epoch = ""

    async def subscribe(self, recover: bool = False) -> None:
        fields: dict[str, Any] = {"channel": "chat:bar"}
        if recover:
            fields["recover"] = {"epoch": self.epoch, "offset": self.got[-1][0]}
        reply = await self.client.call("subscribe", **fields)
        assert reply["ok"] and reply.get("recovered", True), reply
        self.epoch = reply["epoch"]

    async def read(self, total: int) -> None:
        for _ in range(total * 2):  # bounded: a push at most twice the total
            if self.got and self.got[-1][0] >= total:
                return
            push = await self.client.next_push(10)
            if push["type"] != "pub":
                continue
            self.got.append((push["offset"], _decoded(push)))
            if len(self.got) == self.reconnect_after:
                await self.client.close()
                self.client = await Client.connect(self.url, msgpack=self.client.msgpack)
                await self.subscribe(recover=True)


def test_json_and_msgpack_subscribers_and_publishers_over_two_workers_with_recovery(
    server: ServerProcess,
) -> None:
    total = 60

    async def publish(client: Client, numbers: range) -> list[Any]:
        sent = []
        for n in numbers:
            data: Any = {"n": n, "by": "msgpack" if client.msgpack else "json", "x": 0.5}
            if client.msgpack and n % 4 == 0:
                data = bytes([n]) * 3  # whole-binary: b64data for JSON subscribers
            if not client.msgpack and n % 5 == 0:
                data = {"n": n, "big": 2**60 + n}  # exact in both formats
            reply = await client.call("publish", channel="chat:bar", data=data)
            assert reply["ok"], reply
            sent.append(data)
        return sent

    async def scenario() -> None:
        readers = []
        for fmt in (False, True):
            clients = await clients_on_workers(server.url, 2, per_worker=2, msgpack=fmt)
            for i, client in enumerate(clients):
                readers.append(Reader(server.url, client, reconnect_after=20 if i == 0 else 0))
        for reader in readers:
            await reader.subscribe()
        json_pub = await Client.connect(server.url)
        msgpack_pub = await Client.connect(server.url, msgpack=True)
        reading = [asyncio.create_task(reader.read(total)) for reader in readers]
        sent = await asyncio.gather(
            publish(json_pub, range(0, total, 2)), publish(msgpack_pub, range(1, total, 2))
        )
        await asyncio.wait_for(asyncio.gather(*reading), timeout(30))
        expected = readers[0].got
        assert [offset for offset, _ in expected] == list(range(1, total + 1))
        assert sorted(map(repr, (d for _, d in expected))) == sorted(map(repr, sent[0] + sent[1]))
        for reader in readers:
            assert reader.got == expected
        for client in [json_pub, msgpack_pub, *(reader.client for reader in readers)]:
            await client.close()

    run(scenario())


def test_python_client_speaks_either_format_and_hands_decoded_data(
    server: ServerProcess,
) -> None:
    async def scenario() -> None:
        received: dict[str, list[Any]] = {"json": [], "msgpack": []}
        clients = {}
        for fmt in ("json", "msgpack"):
            client = clients[fmt] = await connect(server.url, format=fmt)
            await client.subscribe("chat:py", lambda item, f=fmt: received[f].append(item.data))
        sent = [b"\x00\x01binary", {"from": "json", "n": 2**60}, {"from": "msgpack"}]
        await clients["msgpack"].publish("chat:py", sent[0])
        await clients["json"].publish("chat:py", sent[1])
        await clients["msgpack"].publish("chat:py", sent[2])
        await wait_until_async(lambda: all(len(got) == 3 for got in received.values()) or None)
        assert received == {"json": sent, "msgpack": sent}
        for client in clients.values():
            pubs, _epoch, _offset = await client.history("chat:py")
            assert [pub.data for pub in pubs] == sent
            await client.close()

    run(scenario())


#: shardws.js in Node (``--experimental-websocket``: Node 20's WebSocket), given the
#: vendored codec: a JSON and a MessagePack client on one channel, publishers of both.
JS_SCENARIO = """
const [script, codec, url] = process.argv.slice(1);
require(script);
const MessagePack = require(codec);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const plain = (d) => (d instanceof Uint8Array ? {bytes: Array.from(d)} : d);
(async () => {
  const got = {json: [], msgpack: []};
  const clients = {};
  for (const format of ["json", "msgpack"]) {
    const options = format === "msgpack" ? {format, msgpack: MessagePack} : {format};
    clients[format] = new globalThis.ShardWS(url, options);
    await clients[format].subscribe("chat:js", {onPublication: (p) => got[format].push(p.data)});
  }
  await clients.msgpack.publish("chat:js", new Uint8Array([0, 1, 2]));
  await clients.json.publish("chat:js", {from: "json"});
  await clients.msgpack.publish("chat:js", {from: "msgpack", f: 1.5});
  for (let i = 0; i < 400 && (got.json.length < 3 || got.msgpack.length < 3); i++) await sleep(25);
  const history = {};
  for (const format of ["json", "msgpack"]) {
    const reply = await clients[format].history("chat:js");
    history[format] = reply.publications.map((p) => plain(p.data));
    clients[format].close();
  }
  const live = {json: got.json.map(plain), msgpack: got.msgpack.map(plain)};
  console.log(JSON.stringify({...live, history}));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.needs("node")
def test_shardws_js_speaks_either_format_and_hands_decoded_data(server: ServerProcess) -> None:
    static = Path(shardws.__file__).parent / "static"
    done = subprocess.run(
        [
            require("node"),
            "--experimental-websocket",
            "--no-warnings",
            "-e",
            JS_SCENARIO,
            str(static / "shardws.js"),
            str(static / "msgpack.min.js"),
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sent = [{"bytes": [0, 1, 2]}, {"from": "json"}, {"from": "msgpack", "f": 1.5}]
    assert result == {"json": sent, "msgpack": sent, "history": {"json": sent, "msgpack": sent}}


def test_user_messages_reach_msgpack_connections(server: ServerProcess) -> None:
    async def scenario() -> None:
        url = f"{server.url}?token={make_token(SECRET, 'dora', 3600)}"
        doras = await clients_on_workers(url, 2, msgpack=True)
        doras.append(await Client.connect(url))
        body = json.dumps({"user": "dora", "data": {"n": 1}}).encode()
        status, _ = http_json(f"{server.admin_url}/api/publish", body, key=API_KEY)
        assert status == 200
        for client in doras:
            assert await client.next_push() == {"type": "pub", "user": "dora", "data": {"n": 1}}
            await client.close()

    run(scenario())


#: In the demo page (which loads /shardws.js and speaks JSON itself): a MessagePack client
#: makes the page load the codec from /msgpack.min.js, which was not there before.
BROWSER_SCENARIO = """async () => {
  const before = typeof window.MessagePack;
  const client = new ShardWS("ws://" + location.host + "/ws", {format: "msgpack"});
  const got = [];
  await client.subscribe("chat:web", {onPublication: (p) => got.push(p.data)});
  await client.publish("chat:web", new Uint8Array([7, 8]));
  await client.publish("chat:web", {a: 1.5});
  for (let i = 0; i < 400 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 25));
  client.close();
  const plain = (d) => (d instanceof Uint8Array ? {bytes: Array.from(d)} : d);
  return {before, after: typeof window.MessagePack, got: got.map(plain)};
}"""


@pytest.mark.needs("chromium")
def test_shardws_js_in_chromium_loads_the_codec_only_when_msgpack_is_chosen(
    server: ServerProcess,
) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.ws_port}/")
            result = page.evaluate(BROWSER_SCENARIO)
        finally:
            browser.close()
    assert result == {
        "before": "undefined",
        "after": "object",
        "got": [{"bytes": [7, 8]}, {"a": 1.5}],
    }
