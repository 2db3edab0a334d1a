"""pusher-js's browser build (``dist/web/pusher.min.js``) in a real headless Chromium
(Debian's ``chromium``, driven by Playwright's Python package) against a real server.

The test serves a page, pusher-js and the app's channel-auth endpoint (signing with the
official ``pusher`` SDK) from one origin. Two pages on two workers: public, private and
presence channels, a client event from one page to the other (not back to its sender),
then the worker of one page is killed and that page reconnects, resubscribes and gets
events again. Chromium, Playwright, node's pusher-js are required: missing, the test
fails (``.ci/run`` installs them), it never skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest
from playwright import sync_api
from pusherjs import JS, AuthEndpoint, kill_worker, worker_of
from serverproc import ServerProcess
from toolkit import CHROMIUM_ARGS, wait_until

SECRET = "browser-app-secret-0123456789"
APP = f"""
[[pusher.apps]]
id = "7"
key = "browser-key"
secret = "{SECRET}"
client_events = true
"""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
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


@pytest.fixture
def browser() -> Iterator[Any]:
    assert os.access(CHROMIUM, os.X_OK), "no Chromium: apt-get install chromium (.ci/run)"
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def _log(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("window.log"))


def _wait(page: Any, kind: str, seconds: float = 15, **match: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for entry in _log(page):
            if entry.get("type") == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    return wait_until(found, seconds, message=lambda: f"no {kind} {match}: {_log(page)[-10:]}")


def _socket_ids(page: Any) -> list[str]:
    return [e["socket_id"] for e in _log(page) if e["type"] == "connected"]


def test_pusher_js_in_chromium(tmp_path: Path, browser: Any) -> None:
    script = (JS / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js").read_bytes()
    files = {"/": ("text/html", PAGE), "/pusher.min.js": ("text/javascript", script)}
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

            def open_page(user: str) -> tuple[Any, int]:
                page = browser.new_context().new_page()
                page.goto(f"{site.origin}/?key=browser-key&port={proc.ws_port}&user={user}")
                socket_id = _wait(page, "connected")["socket_id"]
                return page, worker_of(socket_id)

            alice, alice_worker = open_page("alice")
            for _ in range(40):  # SO_REUSEPORT picks the worker; a new page re-rolls it
                bob, bob_worker = open_page("bob")
                if bob_worker != alice_worker:
                    break
                bob.context.close()
            else:
                raise AssertionError("no page landed on the other worker")
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

            ok = alice.evaluate(
                "() => pusher.channel('private-desk').trigger('client-note', {n: 1})"
            )
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
                    sum(
                        1 for e in _log(bob) if e["type"] == "subscribed" and e["channel"] == "news"
                    )
                    >= 2
                ),
                15,
                message="bob never resubscribed",
            )
            sdk.trigger("news", "after-kill", {"back": True})
            assert _wait(bob, "event", event="after-kill")["data"] == {"back": True}
