"""The operator console (``server.console``, ``pure.console``; docs/api.md, "Console").

Its rules without a server (sessions, CSRF, expiry, quantiles, the config check), then one
server with the console on, driven over HTTP and by a headless Chromium: refused without
signing in, a forged action without the CSRF token refused, the page loads with the key,
its graphs move while a load runs, its publish form reaches a subscribed WebSocket
client, its disconnect closes a user's connection. Screenshots at 1200x800 and 390x844 go
to ``$SHARDWS_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import json
import os
import threading
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets
from serverproc import ServerProcess, http_json, loopback_cluster
from toolkit import timeout, wait_until
from websockets.sync.client import connect
from wsclient import Client, clients_on_workers

from shardws.config import ConfigError, parse_config
from shardws.pure.auth import make_token
from shardws.pure.console import MAX_SESSIONS, Refused, Sessions, per_second, quantile

API_KEY = "console-test-key-0123456789"
SECRET = "console-test-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SHARDWS_TEST_ARTIFACTS") or REPO / "test-artifacts")
SERVER = {
    "workers": 2,
    "admin": f'api_key = "{API_KEY}"\nconsole = true\nconsole_session_ttl = 600',
    "extra": f"""
[auth]
anonymous = true
secret = "{SECRET}"

[namespaces.default]

[namespaces.chat]
history_size = 100
history_ttl = 600
presence = true
""",
}

# ------------------------------------------------------------------ rules, no server


def _sessions(ttl: float = 10.0) -> Sessions:
    counter = itertools.count()
    return Sessions(ttl, lambda: f"token-{next(counter)}")


def _refused(sessions: Sessions, *args: Any) -> Refused:
    with pytest.raises(Refused) as info:
        sessions.check(*args)
    return info.value


def test_a_session_reads_freely_acts_with_its_token_and_expires() -> None:
    sessions = _sessions(ttl=10.0)
    session = sessions.sign_in(now=100.0)
    assert session.id != session.csrf
    assert sessions.check(session.id, "GET", "", 105.0) == session
    assert sessions.check(session.id, "POST", session.csrf, 105.0) == session
    for csrf in ("", "wrong", session.id):
        assert _refused(sessions, session.id, "POST", csrf, 105.0).status == 403
    assert _refused(sessions, "", "GET", "", 105.0).status == 401
    assert _refused(sessions, "forged", "GET", "", 105.0).status == 401
    expired = _refused(sessions, session.id, "GET", "", 110.0)
    assert (expired.status, "expired" in expired.message) == (401, True)
    assert len(sessions) == 0  # an expired session is forgotten


def test_signing_out_forgets_and_sessions_are_bounded() -> None:
    sessions = _sessions()
    first = sessions.sign_in(now=0.0)
    kept = [sessions.sign_in(now=1.0) for _ in range(MAX_SESSIONS)]
    assert len(sessions) == MAX_SESSIONS
    assert _refused(sessions, first.id, "GET", "", 2.0).status == 401  # the oldest went
    sessions.sign_out(kept[0].id)
    assert _refused(sessions, kept[0].id, "GET", "", 2.0).status == 401
    assert sessions.check(kept[-1].id, "GET", "", 2.0) == kept[-1]


def test_quantiles_from_bucket_counts() -> None:
    bounds = (0.001, 0.01, 0.1)
    assert quantile([0, 0, 0, 0], bounds, 0.5) is None
    assert quantile([10, 0, 0, 0], bounds, 0.5) == pytest.approx(0.0005)
    assert quantile([50, 50, 0, 0], bounds, 0.99) == pytest.approx(0.001 + 0.009 * 0.98)
    assert quantile([0, 0, 0, 3], bounds, 0.99) == 0.1  # +Inf: the last finite bound
    assert per_second(150, 100, 0.5) == 100.0
    assert per_second(3, 100, 1.0) == 0.0  # the process restarted


def test_the_console_needs_an_api_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[admin]\nconsole = true\n", "s.toml")
    assert "[admin] console" in str(info.value) and "api_key" in str(info.value)
    config = parse_config(f'[admin]\napi_key = "{API_KEY}"\nconsole = true\n', "s.toml")
    assert config.admin.console and not parse_config("", "s.toml").admin.console


def test_the_console_files_ship_in_the_wheel_with_the_chart_licence() -> None:
    package = REPO / "shardws"
    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["shardws"]
    files = sorted((package / "static" / "console").iterdir())
    assert {f.name for f in files} >= {"console.html", "uPlot.iife.min.js", "uPlot.LICENSE"}
    for path in files:
        name = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(name, pattern) for pattern in shipped), name
    licence = (package / "static" / "console" / "uPlot.LICENSE").read_text()
    assert licence.startswith("The MIT License") and "Leon Sorokin" in licence


# ------------------------------------------------------------------ over HTTP


def _request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout(5)) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _sign_in(admin_url: str) -> tuple[str, str]:
    """(the cookie header value, the CSRF token) of a new session."""
    status, headers, body = _request(
        admin_url + "/console/login", "POST", json.dumps({"key": API_KEY}).encode()
    )
    assert status == 200, body
    cookie = headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie, cookie
    assert API_KEY.encode() not in body
    return cookie.split(";", 1)[0], json.loads(body)["csrf"]


def test_console_endpoints_refuse_what_they_should(server: ServerProcess) -> None:
    admin = server.admin_url
    publish = json.dumps({"channel": "news", "data": 1}).encode()
    assert _request(admin + "/api/console/samples")[0] == 401
    status, _, body = _request(admin + "/console/login", "POST", b"{not json")
    assert (status, b"body must be JSON" in body) == (400, True)
    assert _request(admin + "/console/login", "POST", b'{"key": 12}')[0] == 400
    status, _, body = _request(admin + "/console/login", "POST", b'{"key": "wrong-key-000000"}')
    assert (status, json.loads(body)) == (401, {"error": "wrong API key"})
    assert _request(admin + "/console/session")[0] == 401

    cookie, csrf = _sign_in(admin)
    status, _, body = _request(admin + "/console/session", headers={"Cookie": cookie})
    assert (status, json.loads(body)["csrf"]) == (200, csrf)
    status, _, body = _request(admin + "/api/publish", "POST", publish, {"Cookie": cookie})
    assert status == 403 and b"X-CSRF-Token" in body  # a forged action
    forged = {"Cookie": cookie, "X-CSRF-Token": "forged"}
    assert _request(admin + "/api/publish", "POST", publish, forged)[0] == 403
    good = {"Cookie": cookie, "X-CSRF-Token": csrf}
    assert _request(admin + "/api/publish", "POST", publish, good)[0] == 200
    assert _request(admin + "/api/publish", "POST", b"[", good)[0] == 400
    status, _, body = _request(admin + "/api/console/samples", headers={"Cookie": cookie})
    samples = json.loads(body)["samples"]
    assert status == 200 and samples and samples[-1]["workers"][0]["rss"] > 0
    # A tool with the key needs no cookie and no token; a wrong key is not saved by one.
    assert http_json(admin + "/api/console/samples", key=API_KEY)[0] == 200
    wrong = {"X-API-Key": "wrong", "Cookie": cookie}
    assert _request(admin + "/api/console/samples", headers=wrong)[0] == 401
    # Signing out (an action: with the token) ends the session.
    assert _request(admin + "/console/logout", "POST", b"", {"Cookie": cookie})[0] == 403
    assert _request(admin + "/console/logout", "POST", b"", good)[0] == 200
    assert _request(admin + "/api/console/samples", headers={"Cookie": cookie})[0] == 401
    # The page and its files hold no secret.
    for path in ("", "/console.js", "/console.css", "/uPlot.iife.min.js", "/uPlot.LICENSE"):
        status, _, body = _request(admin + "/console" + path)
        assert status == 200 and API_KEY.encode() not in body


def test_an_expired_session_ends_its_stream_and_is_refused(tmp_path: Path) -> None:
    admin = f'api_key = "{API_KEY}"\nconsole = true\nconsole_session_ttl = 2'
    with ServerProcess(tmp_path, workers=1, admin=admin).start() as proc:
        cookie, _csrf = _sign_in(proc.admin_url)
        live = urllib.request.Request(
            proc.admin_url + "/api/console/live", headers={"Cookie": cookie}
        )
        events = []
        with urllib.request.urlopen(live, timeout=timeout(10)) as stream:
            for _ in range(200):  # a backlog, a sample a second, then the end
                line = stream.readline()
                if not line:
                    break
                if line.startswith(b"event: "):
                    events.append(line[7:].strip().decode())
                elif events[-1:] == ["signed-out"] and line.startswith(b"data: "):
                    assert b"expired" in line
        assert events[0] == "backlog" and events[-1] == "signed-out", events
        assert (
            _request(proc.admin_url + "/api/console/samples", headers={"Cookie": cookie})[0] == 401
        )


# ------------------------------------------------------------------ in Chromium


class Load:
    """Two subscribers of ``load`` (one per worker) and a publisher, in a thread of their
    own, publishing until stopped (bounded: at most ``limit`` messages or 60 s)."""

    def __init__(self, url: str, limit: int = 60_000) -> None:
        self._url = url
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.sent = 0

    async def _run(self) -> None:
        subscribers = await clients_on_workers(self._url, 2)
        for client in subscribers:
            assert (await client.call("subscribe", channel="load"))["ok"]
        readers = [asyncio.create_task(_consume(client)) for client in subscribers]
        publisher = await Client.connect(self._url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not self._stop.is_set() and self.sent < self._limit and loop.time() < deadline:
            for n in range(20):
                await publisher.send({"op": "publish", "channel": "load", "data": n})
            self.sent += 20
            await asyncio.sleep(0.02)
        for client in [*subscribers, publisher]:
            await client.close()
        await asyncio.gather(*readers)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout(70))


async def _consume(client: Client) -> None:
    """Read whatever ``client`` is sent until it is closed."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _message in client.ws:
            pass


class SyncClient:
    """A protocol client on websockets' blocking API, for the browser test's thread
    (Playwright's sync API cannot run inside an asyncio loop)."""

    def __init__(self, url: str) -> None:
        self.ws = connect(url, open_timeout=timeout(5), legacy=True)
        self.hello = self.next(lambda m: m.get("type") == "connected")
        self._ids = itertools.count(1)

    def next(self, wanted: Any, limit: int = 100) -> dict[str, Any]:
        """The next message ``wanted(message)`` is true of, skipping at most ``limit``."""
        for _ in range(limit):
            message = json.loads(self.ws.recv(timeout=timeout(10)))
            if wanted(message):
                return dict(message)
        raise AssertionError(f"none of {limit} messages was wanted")

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        self.ws.send(json.dumps({"id": command_id, "op": op, **fields}))
        return self.next(lambda m: m.get("id") == command_id)


def _until(page: Any, expression: str, seconds: float = 15, arg: Any = None) -> Any:
    """Poll ``expression`` (a JS function of ``arg``) from here until it is truthy (the
    page's Content-Security-Policy forbids Playwright's in-page string polling)."""
    return wait_until(
        lambda: page.evaluate(expression, arg), seconds, message=f"timed out: {expression}"
    )


def _screenshot(page: Any, name: str, size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def _signed_in(browser: Any, admin_url: str) -> Any:
    """A new page of the console at ``admin_url``, signed in, showing samples."""
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.goto(admin_url + "/console")
    page.fill("#key", API_KEY)
    page.click("#signin-form button")
    _until(page, "() => window.shardwsConsole.signedIn && window.shardwsConsole.samples > 0")
    return page


def _fetch_status(page: Any, method: str, path: str, headers: dict[str, str]) -> int:
    return int(
        page.evaluate(
            """async ([method, path, headers]) => (await fetch(path, {method, headers,
                credentials: 'same-origin', body: method === 'GET' ? undefined :
                JSON.stringify({channel: 'chat:lobby', data: 'forged'})})).status""",
            [method, path, headers],
        )
    )


def test_the_console_in_a_browser(server: ServerProcess, browser: Any) -> None:
    admin = server.admin_url
    errors: list[str] = []
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(admin + "/console")
    _until(page, "() => !document.getElementById('signin').hidden")
    assert page.is_hidden("#overview")
    assert _fetch_status(page, "GET", "/api/console/samples", {}) == 401  # not signed in
    page.fill("#key", "not-the-key-at-all")
    page.click("#signin-form button")
    _until(page, "() => document.getElementById('signin-error').textContent === 'wrong API key'")

    page.fill("#key", API_KEY)
    page.click("#signin-form button")
    _until(page, "() => window.shardwsConsole.signedIn && window.shardwsConsole.samples > 0")
    assert page.input_value("#key") == ""  # the key is not kept in the page
    # A forged action: the cookie goes with it, the CSRF token does not.
    assert _fetch_status(page, "POST", "/api/publish", {"Content-Type": "application/json"}) == 403
    csrf = {"X-CSRF-Token": "guessed"}
    assert _fetch_status(page, "POST", "/api/publish", csrf) == 403

    # The graphs move while a load runs: deliveries per second above 0 on the page.
    with Load(server.url) as load:
        delivering = """() => { const s = window.shardwsConsole.last;
            return s && s.total.deliveries > 0 && s.workers.every((w) => w.deliveries > 0); }"""
        _until(page, delivering, 20)
        _until(page, "() => window.shardwsConsole.last.total.p99_ms !== null")
        # A few seconds of it on the graphs, for the screenshots.
        _until(page, "() => window.shardwsConsole.delivering >= 6", 20)
        chart = "() => document.querySelectorAll('#charts .chart canvas').length"
        assert _until(page, chart) == 6
        _until(
            page,
            """() => { const t = document.querySelectorAll('#charts .chart .title b')[1];
                return t && t.textContent !== '0'; }""",
        )
        _screenshot(page, "console-desktop.png", (1200, 800))
        _screenshot(page, "console-phone.png", (390, 844))
        page.set_viewport_size({"width": 1200, "height": 800})
    assert load.sent > 0

    reader = SyncClient(server.url)
    assert reader.call("subscribe", channel="chat:lobby")["ok"]
    alice = SyncClient(f"{server.url}?token={make_token(SECRET, 'alice', 3600)}")

    # The publish form reaches the subscribed client.
    page.click("#tabs button[data-tab='Publish']")
    page.fill("#publish-name", "chat:lobby")
    page.fill("#publish-data", '{"text": "from the console"}')
    page.click("#publish-form button")
    push = reader.next(lambda m: m.get("type") == "pub")
    assert (push["channel"], push["data"]) == ("chat:lobby", {"text": "from the console"})
    _until(page, "() => document.getElementById('publish-result').textContent.startsWith('200')")

    # The channels tab lists it, with its presence and history position.
    page.click("#tabs button[data-tab='Channels']")
    page.fill("#prefix", "chat:")
    page.click("#channel-search button")
    _until(page, "() => document.querySelectorAll('#channel-list tbody tr').length === 1")
    page.click("#channel-list tbody tr")
    _until(page, "() => /offset/.test(document.getElementById('channel-detail').textContent)")
    assert "1 client · 0 users" in page.text_content("#channel-detail")
    _screenshot(page, "console-channels.png", (1200, 800))

    # Disconnect closes the user's connection (4009: do not reconnect).
    page.click("#tabs button[data-tab='Publish']")
    page.fill("#disconnect-user", "alice")
    page.click("#disconnect-form button")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        alice.next(lambda _m: False)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4009
    _until(page, "() => document.getElementById('disconnect-result').textContent.startsWith('200')")
    _screenshot(page, "console-publish.png", (1200, 800))
    reader.ws.close()
    assert errors == []


def test_the_console_shows_the_cluster_as_the_mesh_sees_it(tmp_path: Path, browser: Any) -> None:
    a, b = loopback_cluster(tmp_path, admin=SERVER["admin"])
    with a.start(), b.start():

        def both_up() -> dict[str, Any] | None:
            status, body = http_json(a.admin_url + "/api/console/samples", key=API_KEY)
            cluster = body["samples"][-1]["cluster"] if status == 200 and body["samples"] else None
            if cluster and sorted(cluster.get("hosts") or {}) == ["a", "b"]:
                return dict(cluster)
            return None

        cluster = wait_until(both_up, 30, message="the console never saw both hosts")
        assert cluster["engine"] == "mesh" and cluster["host_id"] == "a"
        assert cluster["peers"]["b"]["up"] and cluster["peers_up"] == 1
        page = _signed_in(browser, a.admin_url)
        _until(page, "() => !!document.querySelector('#cluster [data-host=b][data-up=true]')")
        assert "(this host)" in page.text_content("#cluster [data-host=a]")
        _screenshot(page, "console-cluster.png", (1200, 800))
