"""pusher-js's browser build (``dist/web/pusher.min.js``) in a real headless Chromium
(Debian's ``chromium``, driven by Playwright's Python package) against a real server.

The test serves a page, pusher-js and the app's channel-auth endpoint (signing with the
official ``pusher`` SDK) from one origin. Two pages on two workers: public, private and
presence channels, a client event from one page to the other (not back to its sender),
then the worker of one page is killed and that page reconnects, resubscribes and gets
events again. Laravel Echo 2's browser build runs over it the same way
(``test_laravel_echo_in_chromium``).
Chromium is an external tool (``tests/external.py``: missing, the tests skip with the
reason, or fail under CI); pusher-js and laravel-echo are installed into ``tests/js`` from
its lock file on first use (``pusherjs.js_packages``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pusher
from pusherjs import AuthEndpoint, js_packages, kill_worker, worker_of
from serverproc import ServerProcess
from toolkit import wait_until

SECRET = "browser-app-secret-0123456789"
APP = f"""
[[pusher.apps]]
id = "7"
key = "browser-key"
secret = "{SECRET}"
client_events = true
"""
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>pusher-js on shardws</title>
<script src="/pusher.min.js"></script></head>
<body><script>
const query = new URLSearchParams(location.search);
window.log = [];
const pusher = new Pusher(query.get("key"), {
  cluster: "shardws",
  wsHost: "127.0.0.1",
  wsPort: Number(query.get("port")),
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  channelAuthorization: {endpoint: "/pusher/auth", transport: "ajax",
                         params: {user: query.get("user")}},
});
window.pusher = pusher;
pusher.connection.bind("connected", () =>
  log.push({type: "connected", socket_id: pusher.connection.socket_id}));
window.subscribe = (name) => {
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_succeeded", (members) =>
    log.push({type: "subscribed", channel: name,
              count: members && members.count !== undefined ? members.count : null}));
  channel.bind("pusher:subscription_error", (error) =>
    log.push({type: "subscription_error", channel: name, status: error.status}));
  channel.bind("pusher:member_added", (member) =>
    log.push({type: "member_added", channel: name, id: member.id}));
  channel.bind_global((event, data) => {
    if (!event.startsWith("pusher")) log.push({type: "event", channel: name, event, data});
  });
};
</script></body></html>
"""


def _log(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("window.log"))


def _wait(page: Any, kind: str, seconds: float = 15, **match: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for entry in _log(page):
            if entry.get("type") == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    return wait_until(found, seconds, message=lambda: f"no {kind} {match}: {_log(page)[-10:]}")


@contextmanager
def _served(
    tmp_path: Path, files: dict[str, tuple[str, bytes]]
) -> Iterator[tuple[ServerProcess, Any, Any]]:
    """A two-worker server with the app, its SDK (on the admin listener) and the app's
    site: ``files`` and the auth endpoint, signing with that SDK, from one origin."""
    with ServerProcess(tmp_path, workers=2, extra=APP).start() as proc:
        sdk = pusher.Pusher(
            app_id="7",
            key="browser-key",
            secret=SECRET,
            host="127.0.0.1",
            port=proc.admin_port,
            ssl=False,
        )
        forger = pusher.Pusher(app_id="7", key="browser-key", secret="x" * 20)
        with AuthEndpoint(sdk, forger, files) as site:
            yield proc, sdk, site


def _socket_ids(page: Any) -> list[str]:
    return [e["socket_id"] for e in _log(page) if e["type"] == "connected"]


def test_pusher_js_in_chromium(tmp_path: Path, browser: Any) -> None:
    script = (js_packages() / "pusher-js" / "dist" / "web" / "pusher.min.js").read_bytes()
    files = {"/": ("text/html", PAGE), "/pusher.min.js": ("text/javascript", script)}
    with _served(tmp_path, files) as (proc, sdk, site):
        alice, bob = _pages_on_two_workers(browser, site.origin, proc.ws_port, ("alice", "bob"))
        bob_worker = worker_of(_socket_ids(bob)[0])
        for page in (alice, bob):
            for channel in ("news", "private-desk", "presence-office"):
                page.evaluate("(name) => window.subscribe(name)", channel)
            for channel in ("news", "private-desk", "presence-office"):
                _wait(page, "subscribed", channel=channel)
        assert _wait(bob, "subscribed", channel="presence-office")["count"] == 2
        _wait(alice, "member_added", channel="presence-office", id="bob")

        sdk.trigger("news", "headline", {"title": "hello"})
        for page in (alice, bob):
            assert _wait(page, "event", event="headline")["data"] == {"title": "hello"}

        ok = alice.evaluate("() => pusher.channel('private-desk').trigger('client-note', {n: 1})")
        assert ok is True
        assert _wait(bob, "event", event="client-note")["data"] == {"n": 1}
        sdk.trigger("private-desk", "marker", {})
        _wait(alice, "event", event="marker")
        assert not [e for e in _log(alice) if e.get("event") == "client-note"]

        # Kill bob's worker: the page reconnects, resubscribes, and is served again.
        kill_worker(proc, bob_worker)
        wait_until(lambda: len(_socket_ids(bob)) >= 2, 30, message="bob never reconnected")
        wait_until(
            lambda: (
                sum(1 for e in _log(bob) if e["type"] == "subscribed" and e["channel"] == "news")
                >= 2
            ),
            15,
            message="bob never resubscribed",
        )
        sdk.trigger("news", "after-kill", {"back": True})
        assert _wait(bob, "event", event="after-kill")["data"] == {"back": True}


ECHO_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Laravel Echo on shardws</title>
<script src="/pusher.min.js"></script><script src="/echo.iife.js"></script></head>
<body><script>
const query = new URLSearchParams(location.search);
window.log = [];
// As a Laravel app's resources/js/echo.js sets it up for Soketi or Reverb (docs/pusher.md).
window.echo = new Echo.default({
  broadcaster: "pusher",
  key: query.get("key"),
  cluster: "mt1",
  wsHost: "127.0.0.1",
  wsPort: Number(query.get("port")),
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  authEndpoint: "/pusher/auth",
  auth: {params: {user: query.get("user")}},
});
echo.connector.pusher.connection.bind("connected", () =>
  log.push({type: "connected", socket_id: echo.socketId()}));
window.start = () => {
  echo.channel("orders").listen("OrderShipped", (e) => log.push({type: "shipped", data: e}));
  echo.private("chat")
    .listen(".Message", (e) => log.push({type: "message", data: e}))
    .listenForWhisper("typing", (e) => log.push({type: "whisper", data: e}));
  echo.join("room")
    .here((users) => log.push({type: "here", names: users.map((u) => u.name).sort()}))
    .joining((user) => log.push({type: "joining", name: user.name}))
    .leaving((user) => log.push({type: "leaving", name: user.name}));
};
</script></body></html>
"""


def test_laravel_echo_in_chromium(tmp_path: Path, browser: Any) -> None:
    """Laravel Echo 2 (its browser build, over pusher-js) as a Laravel app uses it, on two
    pages on two workers: ``Echo.channel().listen`` with Laravel's event namespace,
    ``Echo.private().listen`` authorized by a real auth endpoint, ``whisper`` /
    ``listenForWhisper``, and ``Echo.join()``'s ``here``, ``joining`` and ``leaving``."""
    dist = js_packages()
    files = {
        "/": ("text/html", ECHO_PAGE),
        "/pusher.min.js": (
            "text/javascript",
            (dist / "pusher-js" / "dist" / "web" / "pusher.min.js").read_bytes(),
        ),
        "/echo.iife.js": (
            "text/javascript",
            (dist / "laravel-echo" / "dist" / "echo.iife.js").read_bytes(),
        ),
    }
    with _served(tmp_path, files) as (proc, sdk, site):
        pages = _pages_on_two_workers(browser, site.origin, proc.ws_port, ("alice", "bob"))
        alice, bob = pages
        alice.evaluate("() => window.start()")
        assert _wait(alice, "here")["names"] == ["Alice"]
        bob.evaluate("() => window.start()")
        assert _wait(bob, "here")["names"] == ["Alice", "Bob"]
        _wait(alice, "joining", name="Bob")

        # What Laravel broadcasts: the event class's name, App\Events by default.
        sdk.trigger("orders", "App\\Events\\OrderShipped", {"order": 5})
        sdk.trigger("private-chat", "Message", {"text": "hi"})
        for page in pages:
            assert _wait(page, "shipped")["data"] == {"order": 5}
            assert _wait(page, "message")["data"] == {"text": "hi"}

        alice.evaluate("() => echo.private('chat').whisper('typing', {name: 'Alice'})")
        assert _wait(bob, "whisper")["data"] == {"name": "Alice"}

        bob.context.close()
        _wait(alice, "leaving", name="Bob")
        assert not [e for e in _log(alice) if e.get("type") == "whisper"]  # not echoed


def _pages_on_two_workers(
    browser: Any, origin: str, port: int, users: tuple[str, str]
) -> tuple[Any, Any]:
    """A page for each of ``users``, the two on different workers (SO_REUSEPORT picks;
    a new page re-rolls it, at most 40 times)."""

    def open_page(user: str) -> tuple[Any, int]:
        page = browser.new_context().new_page()
        page.goto(f"{origin}/?key=browser-key&port={port}&user={user}")
        return page, worker_of(_wait(page, "connected")["socket_id"])

    first, first_worker = open_page(users[0])
    for _ in range(40):
        second, second_worker = open_page(users[1])
        if second_worker != first_worker:
            return first, second
        second.context.close()
    raise AssertionError("no page landed on the other worker")
