"""The event tap (``pure.tap``, ``server.tap``, ``server.tapstream``; docs/api.md, "Event
tap").

Its rules without a server (targets, the rate cap's sampling, the open request), then one
two-worker server with the console and a Pusher app: a tool's stream (``X-API-Key``)
sees a subscribe, a publication from another worker, one through the HTTP API and an
unsubscribe, and once the stream is gone no worker does any tap work; then the console's
panel in a headless Chromium shows the same, a pusher-js client event on an app's private
channel, and a flood sampled "1 in N" while the page keeps answering.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pusher
import pytest
from pusherjs import AuthEndpoint, PusherJs
from serverproc import ServerProcess, http_json, loopback_cluster
from test_console import API_KEY, Load, SyncClient, _screenshot, _signed_in, _until
from toolkit import timeout, wait_until

from shardws.pure import tap as rules
from shardws.pure import wiredata
from shardws.pure.cluster import host_of
from shardws.pure.tap import BadTarget, Sampling, Target, decode_open, parse_target, preview

SECRET = "tap-app-secret-0123456789"
SERVER = {
    "workers": 2,
    "admin": f'api_key = "{API_KEY}"\nconsole = true',
    "extra": f"""
[auth]
anonymous = true

[namespaces.default]

[[pusher.apps]]
id = "7"
key = "tap-key"
secret = "{SECRET}"
client_events = true
""",
}

# ------------------------------------------------------------------ rules, no server


def test_a_target_is_a_channel_or_a_prefix_native_or_an_apps() -> None:
    apps = frozenset({"7"})
    news = parse_target({"channel": "news"}, apps)
    assert news == Target("news", False) and news.matches("news")
    assert not news.matches("news2") and not news.sees_connections("")
    chat = parse_target({"prefix": "chat:"}, apps)
    assert chat.matches("chat:a") and not chat.matches("news")
    every = parse_target({"prefix": ""}, apps)
    assert every.matches("x") and every.sees_connections("") and not every.sees_connections("7")
    private = parse_target({"channel": "private-a", "app": "7"}, apps)
    assert private.name == "|7|private-a" and private.matches("|7|private-a")
    assert private.describe() == {"app": "7", "channel": "private-a"}
    app = parse_target({"prefix": "", "app": "7"}, apps)
    assert app.sees_connections("7") and not app.matches("news")
    for query, wanted in (
        ({}, "one of channel="),
        ({"channel": "a", "prefix": "b"}, "one of channel="),
        ({"channel": ""}, "empty"),
        ({"channel": "x", "app": "9"}, "not a configured"),
        ({"channel": "|7|a"}, "app=ID"),
        ({"prefix": "x" * 256}, "255"),
    ):
        with pytest.raises(BadTarget, match=wanted):
            parse_target(query, apps)


def test_the_rate_cap_samples_one_in_n_after_a_busy_second() -> None:
    sampling = Sampling(rate=10)
    taken = [sampling.take(100.0 + i / 1000) for i in range(50)]  # 50 in one second
    assert sum(taken) == 10 and taken[:10] == [True] * 10 and sampling.dropped == 40
    assert sampling.every == 1
    taken = [sampling.take(101.0 + i / 1000) for i in range(50)]  # the next second
    assert sampling.every == 5 and sum(taken) == 10 and taken[:6] == [True] + [False] * 4 + [True]
    sampling.take(105.0)  # a quiet gap: back to every event
    assert sampling.every == 1


def test_open_requests_and_previews() -> None:
    args = rules.encode_open(5, Target("|7|a", True), 10.0, 200)
    request = decode_open({**args, "op": rules.OPEN, "id": 1, "reply_to": 3})
    assert (request.tap, request.target, request.admin, request.rate) == (
        5,
        Target("|7|a", True),
        3,
        200,
    )
    for bad in ({"tap": "5"}, {"lease": 0}, {"rate": 0}, {"prefix": 1}):
        with pytest.raises(ValueError):
            decode_open({**args, "reply_to": 3, **bad})
    assert preview(b'{"a":1}') == ('{"a":1}', 7)
    packed = wiredata.carried(wiredata.pack({"a": [1, "x"]}))
    assert preview(packed) == ('{"a":[1,"x"]}', len(packed) - 1)
    assert preview(wiredata.carried(wiredata.pack(b"\x00\x01")))[0].startswith('"AAE=')
    text, size = preview(("é" * 200).encode())
    assert size == 400 and text.endswith("…") and len(text.encode()) <= rules.PREVIEW_BYTES + 3


# ------------------------------------------------------------------ a tool's stream


class Stream:
    """``GET /api/tap`` read by a thread: its server-sent events, in order."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout(30)
        )
        self.events: list[tuple[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name = ""
        for _ in range(100_000):  # bounded; ends when the stream is closed
            try:
                line = self._response.readline()
            except (OSError, ValueError, AttributeError):  # (closed under it)
                return
            if not line:
                return
            if line.startswith(b"event: "):
                name = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                self.events.append((name, json.loads(line[6:])))

    def tapped(self, **match: Any) -> dict[str, Any]:
        """The first tap event whose fields equal ``match`` (waits, bounded)."""

        def found() -> dict[str, Any] | None:
            for name, data in list(self.events):
                for event in data["events"] if name == "events" else ():
                    if all(event.get(k) == v for k, v in match.items()):
                        return dict(event)
            return None

        return wait_until(found, 15, message=lambda: f"no {match} in {self.events[-5:]}")

    def close(self) -> None:
        self._response.close()
        self._thread.join(timeout(5))


def _on_worker(url: str, slot: int) -> SyncClient:
    for _ in range(100):  # the kernel's SO_REUSEPORT hash decides; bounded
        client = SyncClient(url)
        if client.hello["worker"] == slot:
            return client
        client.ws.close()
    raise AssertionError(f"no connection landed on worker {slot}")


def _tap_status(server: ServerProcess) -> dict[str, Any]:
    status, body = http_json(server.admin_url + "/api/tap/status", key=API_KEY)
    assert status == 200, body
    return dict(body)


def test_a_tool_taps_a_channel_and_a_closed_tap_leaves_nothing(server: ServerProcess) -> None:
    assert http_json(server.admin_url + "/api/tap?channel=x")[0] == 401  # the API key
    status, body = http_json(server.admin_url + "/api/tap?app=9&channel=x", key=API_KEY)
    assert status == 400 and "not a configured" in body["error"]
    subscriber, publisher = _on_worker(server.url, 0), _on_worker(server.url, 1)
    stream = Stream(server.admin_url + "/api/tap?channel=news", {"X-API-Key": API_KEY})
    try:
        opened = wait_until(lambda: next((d for n, d in stream.events if n == "opened"), None))
        assert opened["workers"] == 2 and opened["target"] == {"app": None, "channel": "news"}
        assert subscriber.call("subscribe", channel="news")["ok"]
        who = stream.tapped(type="subscribe", client=subscriber.hello["client"])
        assert who["worker"] == 0
        assert publisher.call("publish", channel="news", data={"text": "from worker 1"})["ok"]
        published = stream.tapped(type="publish", client=publisher.hello["client"])
        assert (published["worker"], published["origin"]) == (1, "client")
        assert json.loads(published["data"]) == {"text": "from worker 1"}
        body = json.dumps({"channel": "news", "data": {"big": "x" * 500}}).encode()
        assert http_json(server.admin_url + "/api/publish", body, key=API_KEY)[0] == 200
        api = stream.tapped(type="publish", origin="http")
        assert api["size"] > 500 and api["data"].endswith("…")
        assert publisher.call("publish", channel="other", data=1)["ok"]  # not tapped
        assert subscriber.call("unsubscribe", channel="news")["ok"]
        stream.tapped(type="unsubscribe", client=subscriber.hello["client"])
        assert not any(
            e.get("channel") == "other"
            for n, d in stream.events
            if n == "events"
            for e in d["events"]
        )
        assert len(_tap_status(server)["taps"]) == 1
    finally:
        stream.close()

    # The reader is gone: the admin closes the tap on every worker (or the lease ends it).
    def closed() -> dict[str, Any] | None:
        body = _tap_status(server)
        workers = body["workers"].values()
        return body if not body["taps"] and all(w["open"] == 0 for w in workers) else None

    before = wait_until(closed, rules.LEASE + 10, interval=0.2)
    assert len(before["workers"]) == 2 and not before["missing"]
    # Publications, subscribes and connections after it: no worker looks at them.
    assert subscriber.call("subscribe", channel="news")["ok"]
    for n in range(50):
        assert publisher.call("publish", channel="news", data=n)["ok"]
    assert subscriber.call("unsubscribe", channel="news")["ok"]
    _on_worker(server.url, 1).ws.close()
    after = _tap_status(server)
    assert {m: w["work"] for m, w in after["workers"].items()} == {
        m: w["work"] for m, w in before["workers"].items()
    }
    metrics = urllib.request.urlopen(server.admin_url + "/metrics", timeout=timeout(5)).read()
    assert b"shardws_tap_open 0.0" in metrics and b"shardws_tap_events_sent_total" in metrics
    subscriber.ws.close()
    publisher.ws.close()


# ------------------------------------------------------------------ the console's panel


@contextmanager
def _pusher_pair(server: ServerProcess) -> Iterator[tuple[PusherJs, PusherJs]]:
    """Two pusher-js clients on the app's private channel ``private-orders``."""
    sdk = pusher.Pusher(
        app_id="7",
        key="tap-key",
        secret=SECRET,
        host="127.0.0.1",
        port=server.admin_port,
        ssl=False,
    )
    forger = pusher.Pusher(app_id="7", key="tap-key", secret="x" * 20)
    with AuthEndpoint(sdk, forger) as auth:
        clients = [PusherJs("tap-key", server.ws_port, auth.url) for _ in range(2)]
        try:
            for client in clients:
                client.connected()
                client.subscribe("private-orders")
            yield clients[0], clients[1]
        finally:
            for client in clients:
                client.close()


def _tap(page: Any, kind: str, name: str, app: str = "") -> None:
    page.click("#tabs button[data-tab='Tap']")
    page.select_option("#tap-kind", kind)
    page.fill("#tap-name", name)
    page.fill("#tap-app", app)
    page.click("#tap-start")
    _until(page, "() => window.shardwsConsole.tap.open")
    page.click("#tap-clear")


def _row(page: Any, *texts: str) -> None:
    """Wait until a row of the panel's table holds every one of ``texts``."""
    _until(
        page,
        """(texts) => [...document.querySelectorAll('#tap-events tbody tr')]
            .some((row) => texts.every((t) => row.textContent.includes(t)))""",
        arg=list(texts),
    )


@pytest.mark.needs("node")
def test_the_tap_panel_in_a_browser(server: ServerProcess, browser: Any) -> None:
    page = _signed_in(browser, server.admin_url)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # A native channel: a subscribe on worker 0, a publication from worker 1, unsubscribe.
    _tap(page, "channel", "lobby")
    _until(page, "() => /on 2 worker/.test(document.getElementById('tap-status').textContent)")
    subscriber, publisher = _on_worker(server.url, 0), _on_worker(server.url, 1)
    assert subscriber.call("subscribe", channel="lobby")["ok"]
    _row(page, "subscribe", "lobby", subscriber.hello["client"])
    assert publisher.call("publish", channel="lobby", data={"hello": "from worker 1"})["ok"]
    _row(page, "publish", "lobby", "client", publisher.hello["client"], "from worker 1")
    assert subscriber.call("unsubscribe", channel="lobby")["ok"]
    _row(page, "unsubscribe", subscriber.hello["client"])
    page.fill("#tap-filter", "unsubscribe")
    _until(page, "() => window.shardwsConsole.tap.rows === 1")
    page.fill("#tap-filter", "")
    subscriber.ws.close()
    publisher.ws.close()

    # A Pusher app's private channel: a pusher-js client event.
    _tap(page, "channel", "private-orders", app="7")
    with _pusher_pair(server) as (sender, _receiver):
        sender.command("trigger", channel="private-orders", event="client-moved", data={"x": 1})
        assert sender.expect("triggered", channel="private-orders")["ok"]
        _row(page, "publish client-moved", "app 7: private-orders", sender.socket_id, '"x"')

    # A flood: sampled, said on screen, and the page keeps answering.
    _tap(page, "channel", "load")
    with Load(server.url, limit=20_000):
        _until(page, "() => window.shardwsConsole.tap.every > 1", 30)
        _until(
            page,
            "() => /showing 1 in \\d+/.test(document.getElementById('tap-sampling').textContent)",
        )
        _screenshot(page, "console-tap.png", (1200, 800))
        page.click("#tap-pause")
        assert page.text_content("#tap-pause") == "Resume"
        assert page.evaluate("() => window.shardwsConsole.tap.rows") <= 500
        page.click("#tap-pause")
        page.fill("#tap-filter", "publish load")
        _until(page, "() => window.shardwsConsole.tap.rows > 0")
    page.click("#tap-stop")
    assert errors == []
    metrics = urllib.request.urlopen(server.admin_url + "/metrics", timeout=timeout(5)).read()
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith(b"shardws_tap_events_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[1]) > 0


# ------------------------------------------------------------------ across hosts


def test_a_tap_sees_what_happens_on_another_host(tmp_path: Path) -> None:
    """On the mesh the tap reaches every worker of every host: host b's subscribe and a
    publication made there reach host a's tap, marked as from another host."""
    extra = "[auth]\nanonymous = true\n\n[namespaces.default]\n"
    a, b = loopback_cluster(tmp_path, extra=extra, admin=f'api_key = "{API_KEY}"')
    with a.start(), b.start():

        def opened_on_both() -> Stream | None:
            stream = Stream(a.admin_url + "/api/tap?channel=news", {"X-API-Key": API_KEY})
            opened = wait_until(lambda: next((d for n, d in stream.events if n == "opened"), None))
            if opened["workers"] == 2:
                return stream
            stream.close()  # host b's worker not in a's view yet
            return None

        stream = wait_until(opened_on_both, 30, interval=0.5)
        try:
            remote = SyncClient(b.url)
            assert remote.call("subscribe", channel="news")["ok"]
            subscribed = stream.tapped(type="subscribe", client=remote.hello["client"])
            assert subscribed["host"] == host_of(subscribed["member"])
            assert remote.call("publish", channel="news", data={"from": "b"})["ok"]
            published = stream.tapped(type="publish", client=remote.hello["client"])
            assert published["origin"] == "another host" and "host" in published
            local = SyncClient(a.url)
            assert local.call("publish", channel="news", data={"from": "a"})["ok"]
            here = stream.tapped(type="publish", client=local.hello["client"])
            assert here["origin"] == "client" and "host" not in here
            remote.ws.close()
            local.ws.close()
        finally:
            stream.close()
