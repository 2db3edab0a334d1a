"""Pusher channels on the Redis hub, decided in Redis (``server.redispusher``): real
``shardws serve`` hosts joined through the session's ``redis-server``, pusher-js clients,
and webhooks checked with the official SDK's ``validate_webhook``. The two-host suites
of ``test_pusher_server.py`` and ``test_pusher_webhooks_server.py`` run on both engines;
what is here is the hub's own: one user on two hosts, a host SIGKILLed (its members and
channels leave within ``redispusher.BOUND``), and a cache channel's last event outliving
every shardws process. The killed host's test runs on a single Redis and on a Redis
Cluster too (the channels' keys in their own slots, the due index in another)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pusherjs import AuthEndpoint, PusherJs, pusher_clients
from serverproc import ServerProcess, hub_ttl, loopback_cluster, timeout
from test_pusher_server import _children, _members_added, _removed
from test_pusher_server import sdk as server_sdk
from test_pusher_webhooks_server import SECRET, Receiver, _apps
from toolkit import wait_until

from shardws.server.redispusher import bound

#: ``[cluster.redis] presence_ttl`` of these hosts (its default is 30 s): shorter, so
#: a killed host is expired sooner; long enough that a loaded machine's refreshes
#: (every ttl / 3) are never late by a whole TTL.
TTL = 12.0
BOUND = bound(TTL)

ROOM = "presence-room"


def _sigkill(host: ServerProcess) -> None:
    """SIGKILL every process of ``host`` (supervisor, workers, admin, hub) and reap it."""
    assert host.proc is not None
    for pid in [host.proc.pid, *_children(host.proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    host.proc.wait(timeout(10))


def _converged(a: ServerProcess, b: ServerProcess) -> None:
    def hosts(proc: ServerProcess) -> list[str] | None:
        view = proc.health()[1].get("cluster", {}).get("hosts")
        return None if view is None else sorted(view)

    wait_until(lambda: hosts(a) == hosts(b) == ["a", "b"], timeout=30)


def _as_user(endpoint: AuthEndpoint, port: int, user: str) -> PusherJs:
    client = PusherJs("app-key", port, auth_endpoint=endpoint.url, authParams={"user": user})
    client.connected()
    return client


@pytest.mark.engines("redis", "redis-cluster")
def test_one_user_on_two_hosts_and_a_killed_host(tmp_path: Path, engine: str) -> None:
    """User u on hosts a and b: one ``member_added``; its connection on a leaves: no
    ``member_removed``; host b SIGKILLed: one ``member_removed`` and ``channel_vacated``
    for the channel only b had, within the stated bound (measured, printed); occupancy
    webhooks once per channel, every one validated by the SDK."""
    receiver = Receiver()
    extra = _apps(receiver.url) + hub_ttl(engine, TTL)
    a, b = loopback_cluster(tmp_path, extra=extra, engine=engine)
    clients: list[PusherJs] = []
    try:
        a.start()
        b.start()
        _converged(a, b)
        api = server_sdk(a, secret=SECRET)
        with AuthEndpoint(api, server_sdk(a, secret="not-the-app-secret-at-all")) as endpoint:
            watcher, u_on_a, u_on_b, x_on_a = clients[:] = [
                _as_user(endpoint, port, user)
                for port, user in (
                    (a.ws_port, "w"),
                    (a.ws_port, "u"),
                    (b.ws_port, "u"),
                    (a.ws_port, "x"),
                )
            ]
            watcher.subscribe(ROOM)
            u_on_a.subscribe(ROOM)
            assert u_on_b.subscribe(ROOM)["members"]["count"] == 2
            watcher.expect("member_added", channel=ROOM, id="u")
            for client in (watcher, u_on_b):  # occupied on both hosts: one webhook
                client.subscribe("hall")
            u_on_b.subscribe("corner")  # only on host b
            receiver.wait("/all", name="channel_occupied", channel="corner")

            u_on_a.command("unsubscribe", channel=ROOM)  # u is still on host b
            x_on_a.subscribe(ROOM)  # decided after the leave, on the same connection
            watcher.expect("member_added", channel=ROOM, id="x")
            assert _removed(watcher, ROOM, "u") == 0

            killed = time.monotonic()
            _sigkill(b)
            watcher.expect("member_removed", limit=3 * BOUND, channel=ROOM, id="u")
            removed_after = time.monotonic() - killed
            wait_until(
                lambda: receiver.got("/all", name="channel_vacated", channel="corner"),
                timeout=3 * BOUND,
                message="corner never vacated",
            )
            vacated_after = time.monotonic() - killed
            print(
                f"host b SIGKILLed: member_removed after {removed_after:.1f} s, "
                f"channel_vacated after {vacated_after:.1f} s (bound {BOUND:.0f} s)"
            )
            watcher.command("unsubscribe", channel="hall")
            receiver.wait("/all", name="channel_vacated", channel="hall")
            x_on_a.subscribe("barrier")
            receiver.wait("/all", name="channel_occupied", channel="barrier")

        assert _members_added(watcher, ROOM, "u") == 1 and _removed(watcher, ROOM, "u") == 1
        hooks = [(e["name"], e["channel"], e.get("user_id")) for e in receiver.got("/all")]
        for channel in ("hall", "corner"):
            assert [h for h in hooks if h[1] == channel] == [
                ("channel_occupied", channel, None),
                ("channel_vacated", channel, None),
            ], hooks
        members = [h for h in hooks if h[1] == ROOM and h[2] == "u"]
        assert members == [("member_added", ROOM, "u"), ("member_removed", ROOM, "u")], hooks
        assert receiver.invalid == 0
    finally:
        for client in clients:
            client.close()
        b.stop()
        a.stop()
        receiver.close()


@pytest.mark.engines("redis")  # a plain SET/GET: nothing a cluster changes
def test_a_cache_channels_last_event_outlives_every_process(tmp_path: Path, engine: str) -> None:
    """The last event of a cache channel is kept in Redis: after the SIGKILL of every
    process of both hosts and a restart, a new subscriber gets it replayed."""
    a, b = loopback_cluster(tmp_path, extra=_apps("http://127.0.0.1:9"), engine=engine)
    try:
        a.start()
        b.start()
        server_sdk(a, secret=SECRET).trigger("cache-quotes", "quote", {"v": 7})
        with pusher_clients("app-key", b.ws_port, 1) as (client,):  # kept: replayed
            client.subscribe("cache-quotes")
            assert client.expect("event", channel="cache-quotes")["data"] == {"v": 7}
        _sigkill(a)
        _sigkill(b)
        a.start()
        b.start()
        with pusher_clients("app-key", a.ws_port, 1) as (client,):
            client.subscribe("cache-quotes")
            assert client.expect("event", channel="cache-quotes")["data"] == {"v": 7}
            assert not [m for m in client.seen if m.get("type") == "cache_miss"]
    finally:
        b.stop()
        a.stop()
