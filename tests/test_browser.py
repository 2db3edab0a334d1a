"""The browser client and the demo in a real headless Chromium (Debian's ``chromium``,
driven by Playwright's Python package; no browser download).

Two pages of the demo land on different workers (reloaded until they do), chat, see each
other in presence; the worker of one page is killed (not the room's channel owner, so
the history survives); that page shows the reconnect and catches up with the messages
the other page sent meanwhile, each exactly once, with no gap.

The demo's layout at a desktop and a phone window size: a one-line header, the chat
filling the rest, presence right (and readable) from the first paint; the screenshots go
to ``$SHARDWS_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repository root).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

from serverproc import ServerProcess
from toolkit import timeout, wait_until

from shardws.pure.history import owner_of

CHAT = """
[namespaces.default]

[namespaces.chat]
history_size = 1000
history_ttl = 3600
presence = true
join_leave = true
"""
CHANNEL = "chat:lobby"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SHARDWS_TEST_ARTIFACTS") or REPO / "test-artifacts")


def _worker_of(page: Any) -> int:
    _until(page, "() => !!(window.demo && window.demo.ready)")
    return int(page.evaluate("window.demo.client.worker"))


def _until(page: Any, expression: str, seconds: float = 10, arg: Any = None) -> None:
    """Poll ``expression`` (a JS function of ``arg``) until it is true. Polled from here
    with ``evaluate``: Playwright's in-page polling evaluates strings, which the demo's
    Content-Security-Policy (no 'unsafe-eval') rightly forbids."""
    wait_until(lambda: page.evaluate(expression, arg), seconds, message=f"timed out: {expression}")


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
        with urllib.request.urlopen(base + "/shardws.js", timeout=timeout(5)) as response:
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


# Installed before the page's own scripts: every value #online holds while #status says
# "connected". A MutationObserver runs before the next paint, so it sees whatever the
# page could paint (and possibly more), including the first connected frame.
WATCH_ONLINE = """
window.onlineWhileConnected = [];
new MutationObserver(() => {
  const status = document.getElementById("status");
  const online = document.getElementById("online");
  if (!status || !online || status.textContent !== "connected") return;
  const seen = window.onlineWhileConnected;
  if (seen.length === 0 || seen[seen.length - 1] !== online.textContent) {
    seen.push(online.textContent);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
# Boxes in CSS pixels of the viewport.
LAYOUT = """() => {
  const box = (selector) => {
    const r = document.querySelector(selector).getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height,
            width: r.width};
  };
  const shown = Array.from(document.querySelectorAll("header > *"))
    .filter((e) => e.getClientRects().length && e.textContent.trim());
  return {
    width: innerWidth, height: innerHeight,
    scrollWidth: document.documentElement.scrollWidth,
    scrollHeight: document.documentElement.scrollHeight,
    header: box("header"), main: box("main"), messages: box("#messages"), form: box("#form"),
    headerItems: shown.map((e) => {
      const r = e.getBoundingClientRect();
      return {text: e.textContent.trim(), top: r.top, bottom: r.bottom, right: r.right,
              middle: (r.top + r.bottom) / 2, clipped: e.scrollWidth > e.clientWidth + 1};
    }),
  };
}"""
PRESENCE = """() => Array.from(document.querySelectorAll('#presence li'))
  .map((li) => [li.firstChild.textContent, li.classList.contains('me')])"""
SIZES = {"desktop": (1200, 800), "phone": (390, 844)}


def _presence(page: Any) -> list[tuple[str, bool]]:
    return sorted((name, me) for name, me in page.evaluate(PRESENCE))


def test_demo_layout_and_presence_from_the_first_paint(tmp_path: Path, browser: Any) -> None:
    proc = ServerProcess(tmp_path, workers=1, extra=CHAT, server="demo = true").start()
    base = f"http://127.0.0.1:{proc.ws_port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        errors: list[str] = []
        friend = browser.new_context().new_page()
        friend.on("pageerror", lambda e: errors.append(str(e)))
        friend.goto(base + "/")
        _until(friend, "() => !!(window.demo && window.demo.ready)")
        _say(friend, "alice", "hi, anyone here?")
        _wait_text(friend, "alice: hi, anyone here?")
        for kind, (width, height) in SIZES.items():
            phone = kind == "phone"
            context = browser.new_context(
                viewport={"width": width, "height": height},
                device_scale_factor=2 if phone else 1,
                is_mobile=phone,
                has_touch=phone,
            )
            context.add_init_script(WATCH_ONLINE)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            _until(page, "() => !!(window.demo && window.demo.ready)")
            _until(page, "() => document.querySelector('#status').textContent === 'connected'")
            # The count's first value while connected already holds both pages.
            assert page.evaluate("window.onlineWhileConnected")[0] == "2", kind
            # Readable names: the friend by the name its message carried, this page by a
            # guest label of its connection, which the friend shows the same way.
            me = page.get_attribute("#name", "placeholder")
            assert me is not None and re.fullmatch(r"guest [0-9a-f]{4}", me), me
            assert _presence(page) == [("alice", False), (me, True)], kind
            _until(
                friend,
                "(me) => Array.from(document.querySelectorAll('#presence li'))"
                ".some((li) => li.textContent === me)",
                arg=me,
            )
            _say(page, "", f"hello from a {kind}")
            _wait_text(friend, f"{me}: hello from a {kind}")
            _say(friend, "alice", f"welcome, {me}!")
            _wait_text(page, f"alice: welcome, {me}!")

            layout = page.evaluate(LAYOUT)
            header, main = layout["header"], layout["main"]
            viewport = layout["width"] * layout["height"]
            assert (layout["width"], layout["height"]) == (width, height)
            assert header["top"] == 0 and header["height"] <= min(64, 0.1 * height), layout
            items = layout["headerItems"]
            assert {"shardws", "lobby", "connected"} <= {i["text"] for i in items}, items
            for item in items:  # one line: side by side, inside the header, none cut off
                assert abs(item["middle"] - items[0]["middle"]) <= 4, items
                assert header["top"] <= item["top"] and item["bottom"] <= header["bottom"], items
                assert item["right"] <= width and not item["clipped"], items
            assert main["width"] * main["height"] >= 0.7 * viewport, layout
            assert main["bottom"] <= height and layout["form"]["bottom"] <= height, layout
            assert layout["messages"]["height"] >= main["height"] - layout["form"]["height"] - 1
            assert layout["scrollWidth"] <= width and layout["scrollHeight"] <= height, layout
            page.screenshot(path=str(ARTIFACTS / f"demo-{kind}-{width}x{height}.png"))
            context.close()
            _until(friend, "() => document.querySelector('#online').textContent === '1'")
        assert errors == []
    finally:
        with contextlib.suppress(Exception):
            proc.stop()
