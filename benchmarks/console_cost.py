"""What an open console costs the server: deliveries per server CPU-second of a fan-out
in three modes:

* ``closed``: ``[admin] console = false``;
* ``open``: the console on and its page open in a headless Chromium, signed in, on the
  Overview (graphs redrawn once a second from the live stream);
* ``stream``: the console on and its live stream read by a plain HTTP client (the
  server's side of an open page without a browser sharing the cores).

    python -m benchmarks.console_cost --rounds 7

Rounds of the three modes, the order rotating from round to round, each on a fresh
2-worker server: ``loadgen`` fan-out to ``--connections`` subscribers, publisher flat
out, ``--duration`` s, server CPU over the measured window from every thread of the
server's process tree (the admin's, which serves the console, included). Reported: the
median of each mode, its spread (min..max), and the median of the differences to
``closed`` within each round. Results: ``benchmarks/results/console-*.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

from playwright import sync_api

from benchmarks.macro import (
    against_baseline,
    fanout_cost,
    interleaved_rounds,
    save_medians,
    serve,
)

API_KEY = "console-benchmark-key-0123456789"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("needs chromium on PATH")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def _open_console(browser: Any, admin_url: str) -> Iterator[Any]:
    """A page signed in to the console, showing live samples, while inside."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        page.goto(admin_url + "/console")
        page.fill("#key", API_KEY)
        page.click("#signin-form button")
        page.wait_for_function("() => window.shardwsConsole && window.shardwsConsole.samples > 0")
        yield page
    finally:
        page.close()


@contextlib.contextmanager
def _read_stream(admin_url: str) -> Iterator[list[int]]:
    """Read ``/api/console/live`` in a thread while inside; yields [events read]."""
    request = urllib.request.Request(
        admin_url + "/api/console/live", headers={"X-API-Key": API_KEY}
    )
    response = urllib.request.urlopen(request, timeout=5)
    events = [0]
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            line = response.readline()
            if not line:
                break
            events[0] += line.startswith(b"event: ")

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield events
    finally:
        stop.set()
        thread.join(10)  # a sample arrives every second: the reader sees stop
        response.close()


def one_round(args: argparse.Namespace, browser: Any, mode: str) -> dict[str, float]:
    admin = f'api_key = "{API_KEY}"\nconsole = {"false" if mode == "closed" else "true"}'
    with serve("shardws", 2, admin=admin) as server, contextlib.ExitStack() as viewers:
        if mode == "open":
            page = viewers.enter_context(_open_console(browser, server.admin_url))
        if mode == "stream":
            events = viewers.enter_context(_read_stream(server.admin_url))
        figures = fanout_cost(server, args.connections, args.duration)
        if mode == "open":  # the page kept up: it was drawing during the run
            samples = page.evaluate("window.shardwsConsole.delivering")
            assert samples >= args.duration / 2, f"the page drew {samples} busy samples"
        if mode == "stream":
            assert events[0] >= args.duration / 2, f"the stream sent {events[0]} events"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the three modes")
    parser.add_argument("--connections", type=int, default=500, help="fan-out subscribers")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load a round")
    args = parser.parse_args()
    with _chromium() as browser:
        runs = interleaved_rounds(
            args.rounds, ("closed", "open", "stream"), lambda m: one_round(args, browser, m)
        )
    summary, path = save_medians("console", args, runs)
    for line in against_baseline(runs, summary, "closed"):
        print(line)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
