"""Pusher webhooks end to end: real ``shardws serve`` processes, pusher-js clients, and a
small HTTP receiver in the test; every webhook received is checked with the official
SDK's ``validate_webhook`` (signature, key, the 300 s window)."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pusher
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pusherjs import AuthEndpoint, on_workers, pusher_clients
from serverproc import ServerProcess, free_port, hub_ttl, loopback_cluster, timeout
from test_pusher_server import _children
from test_pusher_server import sdk as server_sdk
from toolkit import wait_until

from shardws.pure.cluster import host_number, member_id
from shardws.pure.history import owner_of
from shardws.pure.pusher.channels import internal_name

SECRET = "hooks-app-secret-0123456789"


def sdk(server: ServerProcess) -> pusher.Pusher:
    """The official server SDK for this module's app, on the admin listener."""
    return server_sdk(server, secret=SECRET)


class Receiver:
    """An HTTP receiver of webhooks: each path keeps the events of the requests it took
    (validated with the SDK, or counted in ``invalid``); ``failures[path]`` requests to
    a path are answered 500 before it takes one."""

    def __init__(self) -> None:
        self.validator = pusher.Pusher(app_id="1", key="app-key", secret=SECRET)
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.requests: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.invalid = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                with receiver.lock:
                    receiver.requests[self.path] = receiver.requests.get(self.path, 0) + 1
                    failing = receiver.failures.get(self.path, 0)
                    if failing:
                        receiver.failures[self.path] = failing - 1
                    else:
                        checked = receiver.validator.validate_webhook(
                            self.headers.get("X-Pusher-Key", ""),
                            self.headers.get("X-Pusher-Signature", ""),
                            body,
                        )
                        if checked is None:
                            receiver.invalid += 1
                        else:
                            receiver.events.setdefault(self.path, []).extend(checked["events"])
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def got(self, path: str, **match: Any) -> list[dict[str, Any]]:
        with self.lock:
            events = list(self.events.get(path, []))
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    def wait(self, path: str, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        """The matching events once there are ``count`` of them (at most 30 s)."""
        wait_until(
            lambda: len(self.got(path, **match)) >= count,
            timeout=30,
            message=f"no {count} webhook(s) {match} at {path}: {self.events}",
        )
        return self.got(path, **match)


def _apps(url: str, extra: str = "") -> str:
    return f"""
[pusher]
{extra}

[[pusher.apps]]
id = "1"
key = "app-key"
secret = "{SECRET}"
client_events = true

[[pusher.apps.webhooks]]
url = "{url}/all"
event_types = ["channel_occupied", "channel_vacated", "member_added", "member_removed",
               "client_event", "cache_miss"]

[[pusher.apps.webhooks]]
url = "{url}/filtered"
event_types = ["channel_occupied"]
filter = {{ channel_name_starts_with = "filtered-" }}

[[pusher.apps.webhooks]]
url = "{url}/flaky"
event_types = ["channel_occupied"]
filter = {{ channel_name_starts_with = "flaky-" }}
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    try:
        yield hooks
    finally:
        hooks.close()


@pytest.fixture(scope="module")
def server(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("hooks")
    with ServerProcess(directory, workers=2, extra=_apps(receiver.url)).start() as proc:
        yield proc


@pytest.fixture
def auth(server: ServerProcess) -> Iterator[AuthEndpoint]:
    forger = pusher.Pusher(app_id="1", key="app-key", secret="not-the-app-secret-at-all")
    with AuthEndpoint(sdk(server), forger) as endpoint:
        yield endpoint


def _metrics(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("shardws_pusher_webhook")
    }


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, got), v in _metrics(server).items() if n == name and wanted <= got)


def test_occupied_once_for_subscribers_on_two_workers_then_vacated(
    server: ServerProcess, receiver: Receiver
) -> None:
    with on_workers("app-key", server.ws_port, (0, 1)) as (first, second):
        first.subscribe("lobby")
        second.subscribe("lobby")
        receiver.wait("/all", name="channel_occupied", channel="lobby")
        first.close()
        sdk(server).trigger("lobby", "still-here", {})
        second.expect("event", event="still-here")
        second.close()
        receiver.wait("/all", name="channel_vacated", channel="lobby")
    # The owner decided the occupied of both workers before the vacated it sent after.
    assert len(receiver.got("/all", name="channel_occupied", channel="lobby")) == 1
    assert len(receiver.got("/all", name="channel_vacated", channel="lobby")) == 1
    assert receiver.invalid == 0


def test_member_added_and_removed_once_per_user(
    server: ServerProcess, receiver: Receiver, auth: AuthEndpoint
) -> None:
    room = "presence-hooks"
    with on_workers(
        "app-key", server.ws_port, (0, 1), auth_endpoint=auth.url, authParams={"user": "alice"}
    ) as (first, second):
        first.subscribe(room)
        second.subscribe(room)
        receiver.wait("/all", name="member_added", channel=room, user_id="alice")
        first.close()
        second.close()
        receiver.wait("/all", name="member_removed", channel=room, user_id="alice")
        receiver.wait("/all", name="channel_vacated", channel=room)
    assert len(receiver.got("/all", name="member_added", channel=room)) == 1
    assert len(receiver.got("/all", name="member_removed", channel=room)) == 1
    assert receiver.invalid == 0


def test_client_events_and_cache_misses(
    server: ServerProcess, receiver: Receiver, auth: AuthEndpoint
) -> None:
    with pusher_clients(
        "app-key", server.ws_port, 2, auth_endpoint=auth.url, authParams={"user": "bob"}
    ) as (sender, other):
        sender.subscribe("private-typing")
        other.subscribe("private-typing")
        sender.command("trigger", channel="private-typing", event="client-typing", data={"on": 1})
        other.expect("event", event="client-typing")
        (event,) = receiver.wait("/all", name="client_event", channel="private-typing")
        assert event["event"] == "client-typing" and json.loads(event["data"]) == {"on": 1}
        assert event["socket_id"] == sender.socket_id and "user_id" not in event
        sender.subscribe("presence-typing")
        other.subscribe("presence-typing")
        sender.command("trigger", channel="presence-typing", event="client-hi", data={})
        (event,) = receiver.wait("/all", name="client_event", channel="presence-typing")
        assert event["user_id"] == "bob" and event["socket_id"] == sender.socket_id
        sender.subscribe("cache-prices")
        sender.expect("cache_miss", channel="cache-prices")
        receiver.wait("/all", name="cache_miss", channel="cache-prices")
    assert receiver.invalid == 0


def test_event_types_and_channel_filter(server: ServerProcess, receiver: Receiver) -> None:
    with pusher_clients("app-key", server.ws_port, 1) as (client,):
        client.subscribe("unfiltered-1")
        client.subscribe("filtered-1")
        receiver.wait("/filtered", name="channel_occupied", channel="filtered-1")
        receiver.wait("/all", name="channel_occupied", channel="unfiltered-1")
    receiver.wait("/all", name="channel_vacated", channel="filtered-1")
    # Both vacated events reached /all: had /filtered wanted anything else, the same
    # admin would have queued it for /filtered by then (one inbox, read in order).
    receiver.wait("/all", name="channel_vacated", channel="unfiltered-1")
    assert {e["channel"] for e in receiver.got("/filtered")} == {"filtered-1"}
    assert {e["name"] for e in receiver.got("/filtered")} == {"channel_occupied"}


def test_a_failing_receiver_gets_the_batch_again(server: ServerProcess, receiver: Receiver) -> None:
    with receiver.lock:
        receiver.failures["/flaky"] = 2
    with pusher_clients("app-key", server.ws_port, 1) as (client,):
        client.subscribe("flaky-1")
        receiver.wait("/flaky", name="channel_occupied", channel="flaky-1")
    assert receiver.requests["/flaky"] >= 3
    assert _metric(server, "shardws_pusher_webhook_failed_requests_total", app="1") >= 2
    assert _metric(server, "shardws_pusher_webhook_events_sent_total", app="1") >= 1
    assert receiver.invalid == 0


def test_a_dead_receiver_never_blocks_delivery_and_old_events_are_dropped(
    tmp_path: Path,
) -> None:
    """Every webhook goes to a port nobody listens on, with ``webhook_max_age = 1``: the
    clients are served as usual, and the events are dropped once too old, counted."""
    dead = f"http://127.0.0.1:{free_port()}"
    config = _apps(dead, "webhook_max_age = 1\nwebhook_timeout = 2")
    with ServerProcess(tmp_path, workers=1, extra=config).start() as proc:
        with pusher_clients("app-key", proc.ws_port, 2) as (first, second):
            for n in range(5):
                first.subscribe(f"room-{n}")
                second.subscribe(f"room-{n}")
                sdk(proc).trigger(f"room-{n}", "hello", {"n": n})
                assert first.expect("event", event="hello", channel=f"room-{n}")["data"] == {"n": n}
                assert second.expect("event", event="hello", channel=f"room-{n}")["data"] == {
                    "n": n
                }
        wait_until(
            lambda: (
                _metric(
                    proc, "shardws_pusher_webhook_events_dropped_total", app="1", reason="expired"
                )
                >= 5
            ),
            timeout=30,
            message="the old events were never dropped",
        )
        assert _metric(proc, "shardws_pusher_webhook_events_sent_total", app="1") == 0
        assert _metric(proc, "shardws_pusher_webhook_failed_requests_total", app="1") >= 1


def test_a_host_taken_for_gone_and_back_vacates_then_occupies_again(
    tmp_path: Path, engine: str
) -> None:
    """The channel's owner is on host a, its only subscriber on host b. Host b is stopped
    (SIGSTOP) past ``REMOTE_GRACE``: a takes its subscriber for gone and sends
    ``channel_vacated``; b resumed, a asks b's worker which channels it has and sends
    ``channel_occupied`` again; when the subscriber leaves, ``channel_vacated``. On the
    hub: b's entry expires (``presence_ttl``), a's sweep vacates the channel, and b's
    next refresh finds its entry gone and tells it again (occupied)."""
    receiver = Receiver()
    a, b = loopback_cluster(tmp_path, extra=_apps(receiver.url) + hub_ttl(engine), engine=engine)
    on_a, on_b = member_id(host_number("a"), 0), member_id(host_number("b"), 0)
    room = next(
        name
        for name in (f"split{i}" for i in range(100))
        if owner_of(internal_name("1", name), [on_a, on_b]) == on_a
    )

    def hosts(proc: ServerProcess) -> list[str] | None:
        view = proc.health()[1].get("cluster", {}).get("hosts")
        return None if view is None else sorted(view)

    def names() -> list[str]:
        return [e["name"] for e in receiver.got("/all", channel=room)]

    try:
        a.start()
        b.start()
        wait_until(lambda: hosts(a) == hosts(b) == ["a", "b"], timeout=30)
        with pusher_clients("app-key", b.ws_port, 1) as (client,):
            client.subscribe(room)
            receiver.wait("/all", name="channel_occupied", channel=room)
            assert b.proc is not None
            stopped = [b.proc.pid, *_children(b.proc.pid)]
            try:
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
                receiver.wait("/all", name="channel_vacated", channel=room)
            finally:
                for pid in reversed(stopped):  # the supervisor last
                    os.kill(pid, signal.SIGCONT)
            receiver.wait("/all", 2, name="channel_occupied", channel=room)
            client.close()
            receiver.wait("/all", 2, name="channel_vacated", channel=room)
        assert names() == ["channel_occupied", "channel_vacated"] * 2
        assert receiver.invalid == 0
    finally:
        b.stop()
        a.stop()
        receiver.close()
