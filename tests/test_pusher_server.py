"""The Pusher protocol served end to end: a real ``shardws serve``, pusher-js in Node
(``tests/pusherjs.py``), the official ``pusher`` Python SDK against the HTTP API on the
admin listener, and raw WebSocket clients for the input pusher-js never sends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pusher
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pusherjs import (
    AuthEndpoint,
    PusherJs,
    kill_worker,
    on_workers,
    presence_channel_owned_by,
    pusher_clients,
    worker_of,
)
from redisproc import REDIS_CLUSTER
from serverproc import ServerProcess, hub_ttl, loopback_cluster, timeout
from toolkit import ENGINES, run, wait_until
from wsclient import Client

from shardws.pure.cluster import host_number, member_id
from shardws.pure.history import owner_of
from shardws.pure.pusher.channels import internal_name

SECRET = "app-one-secret-0123456789"
OTHER_SECRET = "app-two-secret-0123456789"
APPS = f"""
[[pusher.apps]]
id = "1"
key = "app-key"
secret = "{SECRET}"
client_events = true
max_client_events_per_second = 2

[[pusher.apps]]
id = "2"
key = "other-key"
secret = "{OTHER_SECRET}"

[[pusher.apps]]
id = "3"
key = "tiny-key"
secret = "{SECRET}"
max_presence_members = 1
"""
SERVER = {"workers": 2, "extra": APPS, "admin": 'api_key = "admin-api-key-0123456789"'}


def sdk(
    server: ServerProcess, app_id: str = "1", key: str = "app-key", secret: str = SECRET
) -> pusher.Pusher:
    """The official server SDK, pointed at the admin listener (docs/pusher.md)."""
    return pusher.Pusher(
        app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=server.admin_port, ssl=False
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[PusherJs]:
    js = PusherJs("app-key", server.ws_port)
    try:
        js.connected()
        yield js
    finally:
        js.close()


# -- connect, public channels, HTTP trigger ----------------------------------------------


def test_pusher_js_receives_an_event_triggered_by_the_sdk(
    server: ServerProcess, client: PusherJs
) -> None:
    assert worker_of(client.socket_id) in (0, 1)
    client.subscribe("news")
    assert sdk(server).trigger("news", "greeting", {"hello": "world", "n": 1}) == {}
    event = client.expect("event", channel="news", event="greeting")
    assert event["data"] == {"hello": "world", "n": 1}


def test_a_trigger_reaches_every_worker_and_many_channels(server: ServerProcess) -> None:
    with on_workers("app-key", server.ws_port, (0, 1)) as (first, second):
        first.subscribe("room-a")
        second.subscribe("room-b")
        sdk(server).trigger(["room-a", "room-b"], "tick", "plain text")
        assert first.expect("event", event="tick")["data"] == "plain text"
        assert second.expect("event", event="tick")["channel"] == "room-b"


def test_batch_trigger(server: ServerProcess, client: PusherJs) -> None:
    client.subscribe("batched")
    batch = [
        {"channel": "batched", "name": "one", "data": {"n": 1}},
        {"channel": "batched", "name": "two", "data": {"n": 2}},
    ]
    assert sdk(server).trigger_batch(batch) == {}
    assert client.expect("event", event="one")["data"] == {"n": 1}
    assert client.expect("event", event="two")["data"] == {"n": 2}


def test_socket_id_excludes_that_connection(server: ServerProcess) -> None:
    with pusher_clients("app-key", server.ws_port, 2) as (sender, other):
        sender.subscribe("excluding")
        other.subscribe("excluding")
        sdk(server).trigger("excluding", "not-to-sender", {}, socket_id=sender.socket_id)
        other.expect("event", event="not-to-sender")
        sdk(server).trigger("excluding", "marker", {})
        sender.expect("event", event="marker")
        assert not [m for m in sender.seen if m.get("event") == "not-to-sender"]


def test_apps_and_native_channels_are_isolated(server: ServerProcess) -> None:
    """The same channel name in two apps and in the native protocol: three channels."""

    async def native_client() -> Client:
        native = await Client.connect(server.url)
        assert (await native.call("subscribe", channel="shared"))["ok"]
        return native

    with (
        pusher_clients("app-key", server.ws_port, 1) as (mine,),
        pusher_clients("other-key", server.ws_port, 1) as (theirs,),
    ):
        mine.subscribe("shared")
        theirs.subscribe("shared")

        async def scenario() -> list[dict[str, Any]]:
            native = await native_client()
            try:
                sdk(server).trigger("shared", "for-app-1", {})
                mine.expect("event", event="for-app-1")
                # The native API reaches native channels only, and the last push
                # the native client gets is its own marker.
                status, _ = _native_publish(server, "shared", {"marker": True})
                assert status == 200
                return [await native.next_push()]
            finally:
                await native.close()

        pushes = run(scenario())
        assert pushes[0]["data"] == {"marker": True}
        sdk(server, "2", "other-key", OTHER_SECRET).trigger("shared", "for-app-2", {})
        theirs.expect("event", event="for-app-2")
        assert not [m for m in theirs.seen if m.get("event") == "for-app-1"]
        assert not [m for m in mine.seen if m.get("event") == "for-app-2"]


def _native_publish(server: ServerProcess, channel: str, data: Any) -> tuple[int, Any]:
    from serverproc import http_json

    body = json.dumps({"channel": channel, "data": data}).encode()
    return http_json(server.admin_url + "/api/publish", body, key="admin-api-key-0123456789")


def test_native_channel_listing_shows_no_pusher_channel(
    server: ServerProcess, client: PusherJs
) -> None:
    from serverproc import http_json

    client.subscribe("listed-only-for-pusher")
    status, body = http_json(server.admin_url + "/api/channels", key="admin-api-key-0123456789")
    assert status == 200
    assert not [name for name in body["channels"] if "listed-only-for-pusher" in name]


# -- the HTTP API's refusals ---------------------------------------------------------------


def test_wrong_signature_is_refused_and_nothing_is_published(
    server: ServerProcess, client: PusherJs
) -> None:
    client.subscribe("guarded")
    forger = sdk(server, secret="not-the-app-secret-at-all")
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.trigger("guarded", "forged", {})
    with pytest.raises(pusher.errors.PusherBadStatus, match=r"^413"):
        sdk(server).trigger("guarded", "too-big", "x" * 10241)  # the SDK allows 30 KB
    with pytest.raises(pusher.errors.PusherBadRequest, match="presence-"):
        sdk(server).channels_info("private-", ["user_count"])  # Pusher: presence- only
    sdk(server).trigger("guarded", "marker", {})
    client.expect("event", event="marker")
    assert not [m for m in client.seen if m.get("event") in ("forged", "too-big")]


def test_unknown_app_id_is_404(server: ServerProcess) -> None:
    with pytest.raises(pusher.errors.PusherBadStatus, match=r"^404.*could not be found"):
        sdk(server, app_id="99").trigger("news", "e", {})


# -- the WebSocket endpoint's refusals and pings (raw clients) -------------------------


async def _raw(server: ServerProcess, path: str) -> Any:
    return await websockets.connect(
        f"ws://127.0.0.1:{server.ws_port}{path}", ping_interval=None, max_size=None
    )


async def _raw_on_worker(server: ServerProcess, slot: int) -> tuple[Any, str]:
    """A raw Pusher connection of app 1 on worker ``slot`` (connecting until one lands
    there, at most 40 times) and its socket id."""
    for _ in range(40):
        ws = await _raw(server, "/app/app-key?protocol=7")
        socket_id = json.loads((await _next(ws))["data"])["socket_id"]
        if worker_of(socket_id) == slot:
            return ws, socket_id
        await ws.close()
    raise AssertionError(f"no raw connection landed on worker {slot}")


async def _next(ws: Any) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
    assert isinstance(message, dict)
    return message


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/app/no-such-key?protocol=7", 4001),
        ("/app/app-key?protocol=3", 4007),
        ("/app/app-key?protocol=8", 4007),
        ("/app/app-key?protocol=seven", 4006),
        ("/app/app-key", 4008),
        ("/app/", 4005),
    ],
)
def test_refused_upgrades_get_the_pusher_code(server: ServerProcess, path: str, code: int) -> None:
    async def scenario() -> None:
        ws = await _raw(server, path)
        error = await _next(ws)
        assert error["event"] == "pusher:error" and error["data"]["code"] == code
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code

    run(scenario())


def test_established_ping_and_bad_input(server: ServerProcess, client: PusherJs) -> None:
    client.subscribe("still-served")

    async def scenario() -> None:
        ws = await _raw(server, "/app/app-key?protocol=7&client=js&version=8.6.0")
        try:
            hello = await _next(ws)
            assert hello["event"] == "pusher:connection_established"
            data = json.loads(hello["data"])
            assert data["activity_timeout"] == 120 and worker_of(data["socket_id"]) in (0, 1)
            await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
            assert (await _next(ws))["event"] == "pusher:pong"
            for bad in ("not json", "[]", '{"event":"pusher:subscribe","data":{}}'):
                await ws.send(bad)
                error = await _next(ws)
                assert error["event"] == "pusher:error" and error["data"]["code"] is None
            await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "a" * 201}}))
            refused = await _next(ws)
            assert refused["event"] == "pusher:subscription_error"
            assert refused["data"]["status"] == 4009
            # Still served: a public subscription succeeds after all that.
            await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "ok"}}))
            succeeded = await _next(ws)
            assert succeeded == {
                "event": "pusher_internal:subscription_succeeded",
                "channel": "ok",
                "data": "{}",
            }
        finally:
            await ws.close()

    run(scenario())
    sdk(server).trigger("still-served", "after-bad-input", {})
    client.expect("event", event="after-bad-input")


def test_unsubscribed_channel_gets_nothing_more(server: ServerProcess, client: PusherJs) -> None:
    client.subscribe("leaving")
    client.command("unsubscribe", channel="leaving")
    client.subscribe("staying")
    sdk(server).trigger("leaving", "gone", {})
    sdk(server).trigger("staying", "marker", {})
    client.expect("event", event="marker")
    assert not [m for m in client.seen if m.get("event") == "gone"]


def test_quiet_connection_is_pinged_then_closed_with_4201(tmp_path: Any) -> None:
    apps = APPS.replace("max_client_events_per_second = 2", "activity_timeout = 1")
    with ServerProcess(tmp_path, workers=1, extra=apps, server="ping_interval = 1").start() as proc:

        async def scenario() -> None:
            ws = await _raw(proc, "/app/app-key?protocol=7")
            hello = await _next(ws)
            assert hello["event"] == "pusher:connection_established"
            ping = await asyncio.wait_for(_next(ws), timeout(10))
            assert ping["event"] == "pusher:ping"
            error = await asyncio.wait_for(_next(ws), timeout(10))
            assert error["event"] == "pusher:error" and error["data"]["code"] == 4201
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), timeout(10))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4201

        run(scenario())


# -- private channels and client events ---------------------------------------------------


@pytest.fixture
def auth(server: ServerProcess) -> Iterator[AuthEndpoint]:
    forger = sdk(server, secret="not-the-app-secret-at-all")
    with AuthEndpoint(sdk(server), forger) as endpoint:
        yield endpoint


def test_private_channel_through_a_real_auth_endpoint(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    with pusher_clients("app-key", server.ws_port, 1, auth_endpoint=auth.url) as (js,):
        js.subscribe("private-orders")
        assert auth.requests >= 1
        sdk(server).trigger("private-orders", "placed", {"id": 7})
        assert js.expect("event", event="placed")["data"] == {"id": 7}
        js.command("subscribe", channel="private-forged")
        error = js.expect("subscription_error", channel="private-forged")["error"]
        assert error["status"] == 401 and error["type"] == "AuthError"
        sdk(server).trigger("private-forged", "secret", {})
        sdk(server).trigger("private-orders", "marker", {})
        js.expect("event", event="marker")
        assert not [m for m in js.seen if m.get("event") == "secret"]


def test_client_events_between_workers_are_not_echoed(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    with on_workers("app-key", server.ws_port, (0, 1), auth_endpoint=auth.url) as (
        sender,
        receiver,
    ):
        sender.subscribe("private-chat")
        receiver.subscribe("private-chat")
        sender.command("trigger", channel="private-chat", event="client-typing", data={"who": 1})
        assert sender.expect("triggered")["ok"] is True
        event = receiver.expect("event", event="client-typing")
        assert event["data"] == {"who": 1}
        # The sender's own event never comes back: the next thing it gets is a marker.
        receiver.command("trigger", channel="private-chat", event="client-reply", data={})
        sender.expect("event", event="client-reply")
        assert not [m for m in sender.seen if m.get("event") == "client-typing"]


def test_client_events_are_rate_limited_and_refused_where_not_allowed(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    async def scenario() -> None:
        ws = await _raw(server, "/app/app-key?protocol=7")
        other = await _raw(server, "/app/other-key?protocol=7")
        try:
            socket_id = json.loads((await _next(ws))["data"])["socket_id"]
            signed = sdk(server).authenticate("private-fast", socket_id)
            await ws.send(
                json.dumps(
                    {"event": "pusher:subscribe", "data": {"channel": "private-fast", **signed}}
                )
            )
            assert (await _next(ws))["event"] == "pusher_internal:subscription_succeeded"
            await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "open"}}))
            assert (await _next(ws))["event"] == "pusher_internal:subscription_succeeded"
            # A public channel takes no client events (4009).
            await ws.send(json.dumps({"event": "client-x", "channel": "open", "data": {}}))
            refused = await _next(ws)
            assert refused["event"] == "pusher:error" and refused["data"]["code"] == 4009
            # max_client_events_per_second = 2: the burst passes, then 4301.
            codes = []
            for _ in range(6):
                await ws.send(
                    json.dumps({"event": "client-x", "channel": "private-fast", "data": {}})
                )
            await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
            for _ in range(10):
                message = await _next(ws)
                if message["event"] == "pusher:pong":
                    break
                codes.append(message["data"]["code"])
            assert codes and set(codes) == {4301}
            # App 2 has client events switched off (4301 too, Soketi's answer).
            await _next(other)  # connection_established
            await other.send(json.dumps({"event": "client-x", "channel": "private-a", "data": {}}))
            off = await _next(other)
            assert off["data"]["code"] == 4301 and "client messaging" in off["data"]["message"]
        finally:
            await ws.close()
            await other.close()

    run(scenario())


# -- presence ------------------------------------------------------------------------------


def _members_added(client: PusherJs, channel: str, user: str) -> int:
    return sum(
        1
        for m in client.seen
        if m.get("type") == "member_added" and m["channel"] == channel and m["id"] == user
    )


def _removed(client: PusherJs, channel: str, user: str) -> int:
    return sum(
        1
        for m in client.seen
        if m.get("type") == "member_removed" and m["channel"] == channel and m["id"] == user
    )


def test_presence_announces_a_user_once_across_workers(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    room = "presence-room"
    with pusher_clients(
        "app-key", server.ws_port, 1, auth_endpoint=auth.url, authParams={"user": "watcher"}
    ) as (watcher,):
        joined = watcher.subscribe(room)["members"]
        assert joined["count"] == 1 and joined["me"]["id"] == "watcher"
        with on_workers(
            "app-key", server.ws_port, (0, 1), auth_endpoint=auth.url, authParams={"user": "alice"}
        ) as (first, second):
            first.subscribe(room)
            members = second.subscribe(room)["members"]
            assert members["count"] == 2
            assert members["all"] == {"watcher": {"name": "Watcher"}, "alice": {"name": "Alice"}}
            watcher.expect("member_added", channel=room, id="alice")
            # A presence client event carries the sender's user id.
            second.command("bind", channel=room, event="client-hi")
            second.expect("bind_done")
            watcher.command("trigger", channel=room, event="client-hi", data={"x": 1})
            assert second.expect("bound", event="client-hi")["user_id"] == "watcher"
            first.close()
            sdk(server).trigger(room, "marker-1", {})
            watcher.expect("event", event="marker-1")
            assert _removed(watcher, room, "alice") == 0  # alice is still on `second`
            second.close()
            watcher.expect("member_removed", channel=room, id="alice")
        sdk(server).trigger(room, "marker-2", {})
        watcher.expect("event", event="marker-2")
        assert _members_added(watcher, room, "alice") == 1
        assert _removed(watcher, room, "alice") == 1


def test_presence_drops_the_members_of_a_killed_worker(tmp_path: Any, engine: str) -> None:
    """bob (a raw client, which does not reconnect) is on worker 1, which is killed:
    the channel's owner, worker 0, announces that bob left. On the hub, worker 1's next
    process expires its predecessor's entries when it connects: at once, not after
    ``presence_ttl`` (600 s here)."""
    room = presence_channel_owned_by(0, "k")
    # (The owner's own death: test_presence_survives_the_death_of_the_channels_owner.)
    extra = APPS + hub_ttl(engine, 600)
    with ServerProcess(tmp_path, workers=2, extra=extra, engine=engine).start() as proc:
        signer = sdk(proc)
        endpoint = AuthEndpoint(signer, sdk(proc, secret="not-the-app-secret-at-all"))
        with (
            endpoint,
            on_workers(
                "app-key", proc.ws_port, (0,), auth_endpoint=endpoint.url, authParams={"user": "w"}
            ) as (watcher,),
        ):
            watcher.subscribe(room)

            async def scenario() -> None:
                ws, socket_id = await _raw_on_worker(proc, 1)
                signed = signer.authenticate(room, socket_id, {"user_id": "bob"})
                subscribe = {"event": "pusher:subscribe", "data": {"channel": room, **signed}}
                await ws.send(json.dumps(subscribe))
                succeeded = await _next(ws)
                assert succeeded["event"] == "pusher_internal:subscription_succeeded"
                presence = json.loads(succeeded["data"])["presence"]
                assert presence["count"] == 2 and set(presence["ids"]) == {"w", "bob"}
                await asyncio.to_thread(watcher.expect, "member_added", channel=room, id="bob")
                kill_worker(proc, 1)
                await asyncio.to_thread(
                    watcher.expect, "member_removed", limit=20, channel=room, id="bob"
                )

            run(scenario(), limit=60)


# -- the HTTP API's reads ------------------------------------------------------------------


def test_sdk_reads_cluster_wide_counts_and_users(server: ServerProcess, auth: AuthEndpoint) -> None:
    room, public = "presence-api", "api-public"
    with (
        pusher_clients(
            "app-key", server.ws_port, 1, auth_endpoint=auth.url, authParams={"user": "u1"}
        ) as (first_user,),
        on_workers(
            "app-key", server.ws_port, (0, 1), auth_endpoint=auth.url, authParams={"user": "alice"}
        ) as (one, two),
    ):
        for client in (first_user, one, two):
            client.subscribe(room)
        one.subscribe(public)
        two.subscribe(public)
        api = sdk(server)
        listed = api.channels_info("presence-", ["user_count"])["channels"]
        assert listed[room] == {"user_count": 2}
        assert api.channel_info(room, ["user_count", "subscription_count"]) == {
            "occupied": True,
            "user_count": 2,
            "subscription_count": 3,
        }
        users = api.users_info(room)["users"]
        assert sorted(user["id"] for user in users) == ["alice", "u1"]
        assert api.channel_info(public, ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 2,  # one on each worker
        }
        everything = api.channels_info()["channels"]
        assert everything[public] == {} and room in everything
        assert api.channels_info("api-")["channels"] == {public: {}}
        assert api.channel_info("nobody-here") == {"occupied": False}
        # Another app sees none of them.
        other = sdk(server, "2", "other-key", OTHER_SECRET)
        assert public not in other.channels_info()["channels"]


def test_a_full_presence_channel_refuses_new_users_only(server: ServerProcess) -> None:
    tiny = sdk(server, "3", "tiny-key", SECRET)

    async def join(user: str) -> tuple[Any, dict[str, Any]]:
        ws = await _raw(server, "/app/tiny-key?protocol=7")
        socket_id = json.loads((await _next(ws))["data"])["socket_id"]
        signed = tiny.authenticate("presence-tiny", socket_id, {"user_id": user})
        subscribe = {"event": "pusher:subscribe", "data": {"channel": "presence-tiny", **signed}}
        await ws.send(json.dumps(subscribe))
        return ws, await _next(ws)

    async def scenario() -> None:
        first, answer = await join("ann")
        again, second_answer = await join("ann")  # the same user: always in
        other, refused = await join("bob")
        try:
            assert answer["event"] == "pusher_internal:subscription_succeeded"
            assert second_answer["event"] == "pusher_internal:subscription_succeeded"
            assert refused["event"] == "pusher:subscription_error"
            assert refused["data"]["type"] == "LimitReached" and refused["data"]["status"] == 4100
        finally:
            for ws in (first, again, other):
                await ws.close()

    run(scenario())
    # Once ann has gone, bob gets in: the refusal left nothing behind at the owner.
    wait_until(lambda: tiny.users_info("presence-tiny") == {"users": []})

    async def bob_again() -> None:
        ws, answer = await join("bob")
        await ws.close()
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer

    run(bob_again())


# -- reconnects ----------------------------------------------------------------------------


def _resubscribed(client: PusherJs, channel: str, old_socket: str) -> str:
    """Wait until ``client`` is connected again with a new socket id and subscribed to
    ``channel`` again (pusher-js resubscribes by itself); returns the new socket id."""
    while True:
        socket_id = client.expect("connected", limit=30)["socket_id"]
        if socket_id != old_socket:
            break
    client.expect("subscribed", channel=channel, limit=15)
    return socket_id


def test_pusher_js_reconnects_after_its_worker_is_killed(tmp_path: Any) -> None:
    with (
        ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc,
        pusher_clients("app-key", proc.ws_port, 1) as (client,),
    ):
        client.subscribe("survivor")
        kill_worker(proc, client.worker)
        _resubscribed(client, "survivor", client.socket_id)
        sdk(proc).trigger("survivor", "after-kill", {"ok": True})
        assert client.expect("event", event="after-kill")["data"] == {"ok": True}


def test_pusher_js_reconnects_at_once_after_a_drain(tmp_path: Any) -> None:
    with (
        ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc,
        pusher_clients("app-key", proc.ws_port, 1) as (client,),
    ):
        client.subscribe("drained")
        proc.wait_log(r"all \d+ process\(es\) ready")  # a SIGHUP during the boot is ignored
        proc.signal(signal.SIGHUP)  # a reload: every worker drains and is replaced
        error = client.expect("error", limit=30)["error"]
        assert error["data"]["code"] == 4200  # reconnect at once (closecodes: 1001 -> 4200)
        _resubscribed(client, "drained", client.socket_id)
        proc.wait_log("reload complete", 1, 60)
        # It may have reached an old worker that drained after it: then it reconnected
        # once more, and must be subscribed since its last connect.
        client.take_pending()
        states = [m["current"] for m in client.seen if m.get("type") == "state"]
        if states[-1] != "connected":
            client.expect("connected", limit=30)
        last = max(i for i, m in enumerate(client.seen) if m.get("type") == "connected")
        if not any(m.get("type") == "subscribed" for m in client.seen[last:]):
            client.expect("subscribed", channel="drained", limit=15)
        sdk(proc).trigger("drained", "after-drain", {"ok": True})
        assert client.expect("event", event="after-drain")["data"] == {"ok": True}


# -- cache channels ------------------------------------------------------------------------


def test_cache_channels_replay_the_last_event_or_say_miss(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    with on_workers("app-key", server.ws_port, (0, 1), auth_endpoint=auth.url) as (
        early,
        late,
    ):
        early.subscribe("cache-prices")
        early.expect("cache_miss", channel="cache-prices")
        sdk(server).trigger("cache-prices", "price", {"v": 1})
        sdk(server).trigger("cache-prices", "price", {"v": 2})
        assert early.expect("event", event="price")["data"] == {"v": 1}
        assert early.expect("event", event="price")["data"] == {"v": 2}
        # A later subscriber on another worker gets the last one right after subscribing.
        late.subscribe("cache-prices")
        assert late.expect("event", channel="cache-prices")["data"] == {"v": 2}
        assert not [m for m in late.seen if m.get("type") == "cache_miss"]
        # A private cache channel, through the auth endpoint, and apps stay apart.
        sdk(server).trigger("private-cache-desk", "note", "kept")
        late.subscribe("private-cache-desk")
        assert late.expect("event", channel="private-cache-desk")["data"] == "kept"
    with pusher_clients("other-key", server.ws_port, 1) as (other,):
        other.subscribe("cache-prices")
        other.expect("cache_miss", channel="cache-prices")


# -- metrics -------------------------------------------------------------------------------


PUSHER_DOC = Path(__file__).resolve().parent.parent / "docs" / "pusher.md"


def test_metrics_per_app_are_exported_and_documented(
    server: ServerProcess, auth: AuthEndpoint
) -> None:
    with on_workers("app-key", server.ws_port, (0, 1), auth_endpoint=auth.url) as (
        sender,
        receiver,
    ):
        sender.subscribe("private-metered")
        receiver.subscribe("private-metered")
        sender.command("trigger", channel="private-metered", event="client-m", data={})
        receiver.expect("event", event="client-m")
        sdk(server).trigger("private-metered", "api-m", {})
        receiver.expect("event", event="api-m")
        with urllib.request.urlopen(server.admin_url + "/metrics", timeout=timeout(5)) as r:
            text = r.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    exported: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("shardws_pusher_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                exported.setdefault(sample.name, (family.type, frozenset(sample.labels)))

    def total(name: str, app: str) -> float:
        return sum(v for (n, labels), v in samples.items() if n == name and ("app", app) in labels)

    assert total("shardws_pusher_connections", "1") >= 2
    assert total("shardws_pusher_connections_accepted_total", "1") >= 2
    assert total("shardws_pusher_client_events_total", "1") >= 1
    assert total("shardws_pusher_messages_total", "1") >= 3
    assert total("shardws_pusher_api_events_total", "1") >= 1
    assert total("shardws_pusher_connections", "2") == 0  # app 2 has nobody now
    assert samples[("shardws_pusher_metrics_complete", frozenset())] == 1.0
    table = PUSHER_DOC.read_text().split("<!-- pusher-series:begin -->", 1)[1]
    documented = {}
    for line in table.split("<!-- pusher-series:end -->", 1)[0].strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        labels = cells[2]
        names = (
            frozenset() if labels == "—" else frozenset(x.strip(" `") for x in labels.split(","))
        )
        documented[cells[0].strip("`")] = (cells[1], names)
    assert documented == exported


def test_presence_survives_the_death_of_the_channels_owner(tmp_path: Any) -> None:
    """The owner (worker 1) is killed with the roster; the members on worker 0 are told
    to its new process (restored, not announced again), so it lists them again."""
    room = presence_channel_owned_by(1, "o")
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        api = sdk(proc)
        endpoint = AuthEndpoint(api, sdk(proc, secret="not-the-app-secret-at-all"))

        def users() -> set[str] | None:
            try:
                return {user["id"] for user in api.users_info(room)["users"]}
            except pusher.errors.PusherError:  # 503 while the owner restarts
                return None

        with (
            endpoint,
            on_workers(
                "app-key", proc.ws_port, (0,), auth_endpoint=endpoint.url, authParams={"user": "w"}
            ) as (watcher,),
            on_workers(
                "app-key", proc.ws_port, (0,), auth_endpoint=endpoint.url, authParams={"user": "a"}
            ) as (alice,),
        ):
            watcher.subscribe(room)
            alice.subscribe(room)
            watcher.expect("member_added", channel=room, id="a")
            assert users() == {"w", "a"}
            pid = kill_worker(proc, 1)
            proc.wait_healthy(exclude_pids={pid})
            wait_until(lambda: users() == {"w", "a"}, timeout=20)
            with pusher_clients(
                "app-key", proc.ws_port, 1, auth_endpoint=endpoint.url, authParams={"user": "c"}
            ) as (carol,):
                members = carol.subscribe(room)["members"]
                assert members["count"] == 3
                watcher.expect("member_added", channel=room, id="c")
            assert _members_added(watcher, room, "a") == 1  # the restore announced nothing


# -- a cluster -----------------------------------------------------------------------------


def _as_user(endpoint: AuthEndpoint, port: int, user: str) -> Any:
    """One pusher-js client on ``port`` whose channels ``endpoint`` authorizes as ``user``
    (a context manager yielding ``[client]``)."""
    return pusher_clients("app-key", port, 1, auth_endpoint=endpoint.url, authParams={"user": user})


@pytest.mark.engines(*ENGINES, REDIS_CLUSTER)  # the Pusher scripts routed to their master too
def test_two_hosts_share_pusher_channels_counts_and_presence(tmp_path: Path, engine: str) -> None:
    """Two hosts on loopback: an event triggered on host b's admin reaches pusher-js on
    host a; counts and presence users are cluster-wide; one user on both hosts is
    announced once; ``send_to_user`` and ``terminate_user_connections`` reach its
    connections on both hosts."""
    a, b = loopback_cluster(tmp_path, extra=APPS, engine=engine)
    try:
        a.start()
        b.start()

        def converged() -> bool:
            views = [proc.health()[1].get("cluster", {}).get("hosts") for proc in (a, b)]
            return all(view is not None and sorted(view) == ["a", "b"] for view in views)

        wait_until(converged, timeout=30, message="the two hosts never saw each other")
        on_b = sdk(b)
        with (
            AuthEndpoint(sdk(a), sdk(a, secret="not-the-app-secret-at-all")) as endpoint,
            _as_user(endpoint, a.ws_port, "w") as (watcher,),
            _as_user(endpoint, a.ws_port, "u") as (u_on_a,),
            _as_user(endpoint, b.ws_port, "u") as (u_on_b,),
        ):
            assert worker_of(watcher.socket_id) == 0 and u_on_a.socket_id != u_on_b.socket_id
            watcher.subscribe("presence-hosts")
            u_on_a.subscribe("presence-hosts")
            assert u_on_b.subscribe("presence-hosts")["members"]["count"] == 2
            on_b.trigger("presence-hosts", "from-b", {"host": "b"})
            assert watcher.expect("event", event="from-b")["data"] == {"host": "b"}
            assert _members_added(watcher, "presence-hosts", "u") == 1
            assert on_b.channel_info("presence-hosts", ["subscription_count", "user_count"]) == {
                "occupied": True,
                "subscription_count": 3,
                "user_count": 2,
            }
            assert {u["id"] for u in on_b.users_info("presence-hosts")["users"]} == {"w", "u"}
            # A user's connections on both hosts: send_to_user reaches both, and
            # terminate_user_connections closes both (4009), from either host's API.
            for client in (u_on_a, u_on_b):
                client.command("signin")
                client.expect("signed_in")
            on_b.send_to_user("u", "note", {"n": 1})
            for client in (u_on_a, u_on_b):
                assert client.expect("user_event", event="note")["data"] == {"n": 1}
            assert sdk(a).terminate_user_connections("u") == {}
            for client in (u_on_a, u_on_b):
                assert client.expect("error")["error"]["data"]["code"] == 4009
    finally:
        a.stop()
        b.stop()


def test_a_reload_adds_an_app(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1, extra=APPS).start() as proc:
        new_secret = "new-app-secret-0123456789"
        text = proc.config_path.read_text()
        proc.config_path.write_text(
            text + f'\n[[pusher.apps]]\nid = "42"\nkey = "new-key"\nsecret = "{new_secret}"\n'
        )
        proc.wait_log(r"all \d+ process\(es\) ready")  # a SIGHUP during the boot is ignored
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload complete", 1, 60)
        with pusher_clients("new-key", proc.ws_port, 1) as (client,):
            client.subscribe("fresh")
            sdk(proc, "42", "new-key", new_secret).trigger("fresh", "hello", "new app")
            assert client.expect("event", event="hello")["data"] == "new app"


def test_trigger_answers_info_with_cluster_wide_counts(server: ServerProcess) -> None:
    """``info`` on an event (the Node SDK sends it; the Python SDK's Request, used here,
    signs any parameters): the answer carries each channel's counts."""
    api = sdk(server)
    client = api._pusher_client
    with on_workers("app-key", server.ws_port, (0, 1)) as (first, second):
        first.subscribe("counted")
        second.subscribe("counted")
        params = {
            "name": "with-info",
            "channels": ["counted", "empty-one"],
            "data": "{}",
            "info": "subscription_count",
        }
        request = pusher.http.Request(client, "POST", f"/apps/{client.app_id}/events", params)
        answer = client.http.send_request(request)
        assert answer == {
            "channels": {
                "counted": {"subscription_count": 2},
                "empty-one": {"subscription_count": 0},
            }
        }
        first.expect("event", event="with-info")


def test_a_presence_subscription_waits_out_its_owners_restart(tmp_path: Path) -> None:
    room = presence_channel_owned_by(1, "r")
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        api = sdk(proc)

        async def scenario() -> None:
            ws, socket_id = await _raw_on_worker(proc, 0)
            try:
                kill_worker(proc, 1)  # the owner of the room
                signed = api.authenticate(room, socket_id, {"user_id": "patient"})
                subscribe = {"event": "pusher:subscribe", "data": {"channel": room, **signed}}
                await ws.send(json.dumps(subscribe))
                answer = await asyncio.wait_for(_next(ws), timeout(15))
                assert answer["event"] == "pusher_internal:subscription_succeeded", answer
                assert json.loads(answer["data"])["presence"]["ids"] == ["patient"]
            finally:
                await ws.close()

        run(scenario(), limit=60)


def test_more_bad_input_and_a_flood(tmp_path: Path) -> None:
    """Presence without channel_data and a binary frame get a pusher:error; a message
    flood is warned, then closed with 4301; the other clients are not disturbed."""
    limits = "[limits]\ncommands_per_second = 5\ncommand_burst = 5\nabuse_close_after = 3\n"
    with (
        ServerProcess(tmp_path, workers=1, extra=APPS + limits).start() as proc,
        pusher_clients("app-key", proc.ws_port, 1) as (bystander,),
    ):
        bystander.subscribe("calm")

        async def scenario() -> None:
            ws = await _raw(proc, "/app/app-key?protocol=7")
            await _next(ws)  # connection_established
            bare = {"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": "k:s"}}
            await ws.send(json.dumps(bare))
            error = await _next(ws)
            assert error["event"] == "pusher:error" and "channel_data" in error["data"]["message"]
            await ws.send(b"\x00binary")
            error = await _next(ws)
            assert error["event"] == "pusher:error" and "Binary" in error["data"]["message"]
            for _ in range(40):  # far past the burst: warned, then closed
                await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
            codes = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for _ in range(100):
                    message = await _next(ws)
                    if message["event"] == "pusher:error":
                        codes.append(message["data"]["code"])
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4301
            assert None in codes and codes[-1] == 4301  # "Too many messages", then the close

        run(scenario())
        sdk(proc).trigger("calm", "still-here", {})
        bystander.expect("event", event="still-here")


def _not_live_total(proc: ServerProcess) -> float:
    """``shardws_subscribe_not_live_total`` over every worker, from /metrics."""
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=timeout(5)) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shardws_subscribe_not_live_total"
    )


def test_no_subscription_succeeded_while_the_bus_cannot_confirm_it(tmp_path: Path) -> None:
    """A stopped bus forwarder (SIGSTOP) cannot confirm a subscription: a public and a
    presence channel are answered ``pusher:subscription_error`` (ServerError, 503; the
    native protocol's 108), undone and counted; once it runs again the same subscribes
    succeed and deliver."""
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        api = sdk(proc)
        forwarder = proc.wait_healthy()["bus_forwarder"]["pid"]
        room = "presence-starved"

        async def subscribe_both(ws: Any, socket_id: str) -> list[dict[str, Any]]:
            signed = api.authenticate(room, socket_id, {"user_id": "starved"})
            for data in ({"channel": "starved"}, {"channel": room, **signed}):
                await ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
            first = await asyncio.wait_for(_next(ws), timeout(15))
            return [first, await asyncio.wait_for(_next(ws), timeout(15))]

        async def scenario() -> None:
            ws = await _raw(proc, "/app/app-key?protocol=7")
            try:
                socket_id = json.loads((await _next(ws))["data"])["socket_id"]
                os.kill(forwarder, signal.SIGSTOP)
                try:
                    answers = await subscribe_both(ws, socket_id)
                finally:
                    os.kill(forwarder, signal.SIGCONT)
                assert {answer["channel"] for answer in answers} == {"starved", room}
                for answer in answers:
                    assert answer["event"] == "pusher:subscription_error", answer
                    assert answer["data"]["type"] == "ServerError", answer
                    assert answer["data"]["status"] == 503, answer
                answers = await subscribe_both(ws, socket_id)
                for answer in answers:
                    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
                await asyncio.to_thread(api.trigger, ["starved", room], "after", {"n": 1})
                got = {(await _next(ws))["channel"] for _ in range(2)}
                assert got == {"starved", room}
            finally:
                await ws.close()

        run(scenario(), limit=60)
        proc.wait_heartbeat()  # the counters reach /metrics
        assert _not_live_total(proc) == 2


def test_no_signin_success_while_the_bus_cannot_confirm_the_user_topic(tmp_path: Path) -> None:
    """``signin_success`` means the user's bus topic is live (``terminate_connections``
    reaches the connection): with the bus forwarder stopped (SIGSTOP) a signin signed by
    the SDK is answered ``pusher:error`` 4100 and closed with 4100 (back off, reconnect;
    the native 4506), counted; once it runs again a new connection signs in and is
    terminated through its user."""
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        api = sdk(proc)
        forwarder = proc.wait_healthy()["bus_forwarder"]["pid"]

        async def signin(ws: Any) -> None:
            socket_id = json.loads((await _next(ws))["data"])["socket_id"]
            signed = api.authenticate_user(socket_id, {"id": "starved"})
            await ws.send(json.dumps({"event": "pusher:signin", "data": signed}))

        async def scenario() -> None:
            ws = await _raw(proc, "/app/app-key?protocol=7")
            os.kill(forwarder, signal.SIGSTOP)
            try:
                await signin(ws)
                error = await _next(ws)
                assert error["event"] == "pusher:error", error
                assert error["data"]["code"] == 4100, error
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), timeout(5))
            finally:
                os.kill(forwarder, signal.SIGCONT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4100
            ws = await _raw(proc, "/app/app-key?protocol=7")
            try:
                await signin(ws)
                answer = await asyncio.wait_for(_next(ws), timeout(10))
                assert answer["event"] == "pusher:signin_success", answer
                assert await asyncio.to_thread(api.terminate_user_connections, "starved") == {}
                error = await _next(ws)
                assert error["event"] == "pusher:error" and error["data"]["code"] == 4009
            finally:
                await ws.close()

        run(scenario(), limit=60)
        proc.wait_heartbeat()  # the counters reach /metrics
        assert _not_live_total(proc) == 1


# -- presence through restarts, moves and blinks -------------------------------------------


@contextmanager
def _watcher_and_alice(
    proc: ServerProcess, watcher_slot: int, alice_slot: int
) -> Iterator[tuple[PusherJs, PusherJs]]:
    """pusher-js clients of users ``w`` (on worker ``watcher_slot``) and ``a`` (on
    ``alice_slot``), authorized by a real auth endpoint (the app's SDK)."""
    endpoint = AuthEndpoint(sdk(proc), sdk(proc, secret="not-the-app-secret-at-all"))
    with (
        endpoint,
        on_workers(
            "app-key",
            proc.ws_port,
            (watcher_slot,),
            auth_endpoint=endpoint.url,
            authParams={"user": "w"},
        ) as (watcher,),
        on_workers(
            "app-key",
            proc.ws_port,
            (alice_slot,),
            auth_endpoint=endpoint.url,
            authParams={"user": "a"},
        ) as (alice,),
    ):
        yield watcher, alice


def test_a_leave_while_the_owner_is_down_is_announced(tmp_path: Path) -> None:
    """Alice unsubscribes right after the room's owner (worker 1) is killed: her leave is
    asked again of the owner's next process, which announces ``member_removed`` once the
    watcher's membership is restored -- the watcher keeps no zombie member."""
    room = presence_channel_owned_by(1, "z")
    with ServerProcess(tmp_path, workers=2, extra=APPS).start() as proc:
        api = sdk(proc)
        with _watcher_and_alice(proc, 0, 0) as (watcher, alice):
            watcher.subscribe(room)
            alice.subscribe(room)
            watcher.expect("member_added", channel=room, id="a")
            pid = kill_worker(proc, 1)
            alice.command("unsubscribe", channel=room)
            watcher.expect("member_removed", limit=30, channel=room, id="a")
            proc.wait_healthy(exclude_pids={pid})

            def users() -> set[str] | None:
                try:
                    return {user["id"] for user in api.users_info(room)["users"]}
                except pusher.errors.PusherError:  # 503 while the owner restarts
                    return None

            assert wait_until(lambda: users() == {"w"}, timeout=20)
            assert _removed(watcher, room, "a") == 1


def test_a_reload_that_moves_a_presence_channel_keeps_its_roster_right(tmp_path: Path) -> None:
    """Growing from 2 to 3 workers moves the room's owner from worker 1 to worker 2 (the
    members are restored there) and replaces every worker (the clients reconnect and
    subscribe again): afterwards the room has exactly its two subscriptions -- no zombie
    left by a leave lost in the move -- and joins and leaves are announced."""
    room = next(
        name
        for name in (f"presence-moved{i}" for i in range(200))
        if owner_of(internal_name("1", name), [0, 1]) == 1
        and owner_of(internal_name("1", name), [0, 1, 2]) == 2
    )
    with ServerProcess(tmp_path, workers=2, extra=APPS, server="max_workers = 3").start() as proc:
        api = sdk(proc)
        with _watcher_and_alice(proc, 0, 1) as (watcher, alice):
            watcher.subscribe(room)
            alice.subscribe(room)
            watcher.expect("member_added", channel=room, id="a")
            proc.wait_log(r"all \d+ process\(es\) ready")
            text = proc.config_path.read_text()
            proc.config_path.write_text(text.replace("workers = 2", "workers = 3"))
            proc.signal(signal.SIGHUP)
            proc.wait_log("reload complete", 1, 90)

            def counts() -> dict[str, Any] | None:
                try:
                    return api.channel_info(room, ["subscription_count", "user_count"])
                except pusher.errors.PusherError:
                    return None

            expected = {"occupied": True, "subscription_count": 2, "user_count": 2}
            wait_until(lambda: counts() == expected, timeout=30, message=lambda: str(counts()))
            with (
                AuthEndpoint(api, sdk(proc, secret="not-the-app-secret-at-all")) as endpoint,
                pusher_clients(
                    "app-key", proc.ws_port, 1, auth_endpoint=endpoint.url, authParams={"user": "c"}
                ) as (carol,),
            ):
                assert carol.subscribe(room)["members"]["count"] == 3
                watcher.expect("member_added", limit=15, channel=room, id="c")
            watcher.expect("member_removed", limit=15, channel=room, id="c")
            assert wait_until(lambda: counts() == expected, timeout=15)


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (a server's workers, admin, bridge)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(line) for line in out.split()]


def test_a_host_that_blinks_out_of_the_view_keeps_its_members(tmp_path: Path, engine: str) -> None:
    """Host b is stopped (SIGSTOP) long enough to drop out of host a's view, then resumed:
    the room's owner, on host a, keeps b's members through the blink (``REMOTE_GRACE``),
    so a's watcher is never told that b's user left -- its connection never closed."""
    a, b = loopback_cluster(tmp_path, extra=APPS, engine=engine)
    on_a = member_id(host_number("a"), 0)
    on_b = member_id(host_number("b"), 0)
    room = next(
        name
        for name in (f"presence-blink{i}" for i in range(100))
        if owner_of(internal_name("1", name), [on_a, on_b]) == on_a
    )
    try:
        a.start()
        b.start()

        def hosts(proc: ServerProcess) -> list[str] | None:
            view = proc.health()[1].get("cluster", {}).get("hosts")
            return None if view is None else sorted(view)

        wait_until(lambda: hosts(a) == hosts(b) == ["a", "b"], timeout=30)
        with (
            AuthEndpoint(sdk(a), sdk(a, secret="not-the-app-secret-at-all")) as endpoint,
            _as_user(endpoint, a.ws_port, "w") as (watcher,),
            _as_user(endpoint, b.ws_port, "u") as (u_on_b,),
        ):
            watcher.subscribe(room)
            u_on_b.subscribe(room)
            watcher.expect("member_added", channel=room, id="u")
            assert b.proc is not None
            stopped = [b.proc.pid, *_children(b.proc.pid)]
            try:
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
                wait_until(lambda: hosts(a) == ["a"], timeout=30, message="b never left a's view")
                time.sleep(2)  # a few of the owner's heartbeats with b out of the view
            finally:
                for pid in reversed(stopped):  # the supervisor last
                    os.kill(pid, signal.SIGCONT)
            wait_until(lambda: hosts(a) == hosts(b) == ["a", "b"], timeout=30)
            on_b_api = sdk(b)
            on_b_api.trigger(room, "after", {"back": True})
            assert watcher.expect("event", limit=15, event="after")["data"] == {"back": True}
            assert _removed(watcher, room, "u") == 0
            assert {user["id"] for user in sdk(a).users_info(room)["users"]} == {"w", "u"}
    finally:
        b.stop()
        a.stop()


# -- users: signin, send_to_user, terminate_connections ------------------------------------


def test_signin_send_to_user_and_terminate_across_workers(server: ServerProcess) -> None:
    """pusher-js signs in through a real user-auth endpoint (the SDK's
    ``authenticate_user``); the SDK's ``send_to_user`` reaches every connection of that
    user, on both workers, and no one else; ``terminate_user_connections`` (``POST
    /users/{id}/terminate_connections``, no app prefix) closes them all with 4009 and
    leaves other users connected."""
    api = sdk(server)
    endpoint = AuthEndpoint(api, sdk(server, secret="not-the-app-secret-at-all"))
    with (
        endpoint,
        on_workers(
            "app-key", server.ws_port, (0, 1), auth_endpoint=endpoint.url, authParams={"user": "a"}
        ) as ann_clients,
        _as_user(endpoint, server.ws_port, "bob") as (bob,),
    ):
        for client in (*ann_clients, bob):
            client.command("signin")
            client.expect("signed_in")
        api.send_to_user("a", "note", {"n": 1})
        for client in ann_clients:
            assert client.expect("user_event", event="note")["data"] == {"n": 1}
        api.send_to_user("bob", "note", {"n": 2})
        assert bob.expect("user_event", event="note")["data"] == {"n": 2}
        assert all(m.get("type") != "user_event" for m in bob.seen[:-1])
        assert api.terminate_user_connections("a") == {}
        for client in ann_clients:
            error = client.expect("error")["error"]
            assert error["data"]["code"] == 4009, error
        api.send_to_user("bob", "still", "here")
        assert bob.expect("user_event", event="still")["data"] == "here"
        for client in ann_clients:
            assert all(m.get("event") != "still" for m in client.seen)
