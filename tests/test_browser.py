"""The browser client and the demo in a real headless Chromium (Debian's ``chromium``,
driven by Playwright's Python package; no browser download).

Two pages of the demo land on different workers (reloaded until they do), chat, see each
other in presence; the worker of one page is killed (not the room's channel owner, so
the history survives); that page shows the reconnect and catches up with the messages
the other page sent meanwhile, each exactly once, with no gap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, timeout

from shardws.pure.history import owner_of

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        "no Chromium: apt-get install chromium (.ci/run does) to run the browser test",
        allow_module_level=True,
    )

# As root in a container Chromium needs --no-sandbox; the rest keeps it off the network
# (the machine has none) and quick to start. Playwright adds --headless and a fresh
# temporary profile (--user-data-dir) itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHAT = """
[namespaces.default]

[namespaces.chat]
history_size = 1000
history_ttl = 3600
presence = true
join_leave = true
"""
CHANNEL = "chat:lobby"


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def _worker_of(page: Any) -> int:
    _until(page, "() => !!(window.demo && window.demo.ready)")
    return int(page.evaluate("window.demo.client.worker"))


def _until(page: Any, expression: str, seconds: float = 10, arg: Any = None) -> None:
    """Poll ``expression`` (a JS function of ``arg``) until it is true. Polled from here
    with ``evaluate``: Playwright's in-page polling evaluates strings, which the demo's
    Content-Security-Policy (no 'unsafe-eval') rightly forbids."""
    deadline = time.monotonic() + timeout(seconds)
    while not page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _messages(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#messages li.msg", "els => els.map(e => e.textContent)"))


def _wait_text(page: Any, text: str, count: int = 1) -> None:
    _until(
        page,
        """([text, count]) => Array.from(document.querySelectorAll('#messages li.msg'))
            .filter(e => e.textContent === text).length >= count""",
        arg=[text, count],
    )


def _say(page: Any, name: str, text: str) -> None:
    page.fill("#name", name)
    page.fill("#text", text)
    page.click("#send")


def test_demo_in_two_pages_on_two_workers_survives_a_worker_kill(
    tmp_path: Path, browser: Any
) -> None:
    proc = ServerProcess(tmp_path, workers=2, extra=CHAT, server="demo = true").start()
    base = f"http://127.0.0.1:{proc.ws_port}"
    try:
        with urllib.request.urlopen(base + "/shardws.js", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
        first = browser.new_context().new_page()
        errors: list[str] = []
        first.on("pageerror", lambda e: errors.append(str(e)))
        first.goto(base + "/")
        first_worker = _worker_of(first)
        second = browser.new_context().new_page()
        second.on("pageerror", lambda e: errors.append(str(e)))
        for _ in range(40):  # the kernel's SO_REUSEPORT hash picks; a reload re-rolls it
            second.goto(base + "/")
            if _worker_of(second) != first_worker:
                break
        else:
            raise AssertionError("the second page never landed on the other worker")
        _say(first, "alice", "hello from one")
        _wait_text(second, "alice: hello from one")
        _say(second, "bob", "hello from two")
        _wait_text(first, "bob: hello from two")
        for page in (first, second):
            _until(page, "() => document.querySelector('#online').textContent === '2'")
        # Kill the worker of the page that is not on the room's owner (the history stays).
        owner = owner_of(CHANNEL, [0, 1])
        victim, other = (first, second) if first_worker != owner else (second, first)
        pid = {w["worker"]: w["pid"] for w in proc.wait_healthy()["per_worker"]}[1 - owner]
        os.kill(pid, signal.SIGKILL)
        sent = [f"while away {n}" for n in range(3)]
        for text in sent:
            _say(other, "carol", text)
        _until(victim, "() => window.demo.client.connects >= 2", 15)
        _until(victim, "() => document.querySelector('#status').textContent === 'connected'")
        assert int(victim.text_content("#reconnects")) >= 1
        for text in sent:
            _wait_text(victim, f"carol: {text}")
        _say(victim, "dave", "back again")
        _wait_text(other, "dave: back again")
        for page in (victim, other):
            shown = _messages(page)
            assert len(shown) == len(set(shown)), shown  # nothing twice
            assert shown[-4:] == [f"carol: {t}" for t in sent] + ["dave: back again"], shown
            assert page.query_selector("#messages li.gap") is None  # no gap reported
        assert victim.evaluate("window.demo.client.subscriptions.get('chat:lobby').recoveries") >= 1
        assert errors == []
    finally:
        with contextlib.suppress(Exception):
            proc.stop()
