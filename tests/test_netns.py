"""tests/netns.py: hosts in network namespaces reach each other, and a partition cuts them off."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from netns import NETNS_DIR, Network
from toolkit import run, timeout, wait_until

needs_netns = pytest.mark.needs("netns")

PORT = 8000


def _namespaces() -> set[str]:
    """What `ip netns list` shows."""
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


def _wait_http(net: Network, host: str, address: str) -> tuple[int, bytes]:
    def answered() -> tuple[int, bytes] | None:
        try:
            return net.http_get(host, address, PORT, "/", timeout=1)
        except OSError:
            return None

    return wait_until(answered, 10, message=f"no HTTP answer from {address} on {host}")


@pytest.fixture
def net() -> Iterator[Network]:
    with Network(["a", "b"]) as network:
        made = {network.switch, *map(network.ns, network.hosts)}
        assert made <= _namespaces()
        yield network
    assert not made & _namespaces()  # all deleted on the way out


@needs_netns
def test_hosts_talk_until_partitioned(net: Network) -> None:
    assert (net.address("a"), net.address("b")) == ("10.77.0.10", "10.77.0.11")
    server = net.popen(
        "a",
        [sys.executable, "-m", "http.server", "--bind", net.address("a"), str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        status, body = _wait_http(net, "b", net.address("a"))
        assert status == 200 and b"Directory listing" in body
        status, _ = net.http_post("b", net.address("a"), PORT, "/", b"x", {"X-Test": "1"})
        assert status == 501  # http.server has no POST: the request got there all the same
        with pytest.raises(OSError):  # the server listens on a's address only, not b's loopback
            net.connect("b", "127.0.0.1", PORT, timeout=1).close()

        net.link_down("a")
        with pytest.raises(OSError):  # a timeout, or "no route to host" once ARP gave up
            net.connect("b", net.address("a"), PORT, timeout=0.5).close()

        net.link_up("a")
        assert net.http_get("b", net.address("a"), PORT, "/", timeout=2)[0] == 200
    finally:
        server.kill()
        server.wait(timeout(5))


@needs_netns
def test_websocket_survives_a_short_partition(net: Network) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def listen() -> socket.socket:
        sock = socket.create_server((net.address("a"), 0))
        sock.setblocking(False)
        return sock

    async def main() -> None:
        listener = net.call_in("a", listen)  # a listener in a, served by this event loop
        port = listener.getsockname()[1]
        async with serve(echo, sock=listener):
            ws = await net.ws_connect("b", net.address("a"), port, path="/")
            try:
                await ws.send("before")
                assert await asyncio.wait_for(ws.recv(), timeout(5)) == "before"
                net.link_down("a")
                await ws.send("during")
                echo_back = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait({echo_back}, timeout=0.3)
                assert not done  # the frame is stuck in b's send queue, retransmitted in vain
                net.link_up("a")  # the next retransmission gets through
                assert await asyncio.wait_for(echo_back, timeout(5)) == "during"
            finally:
                await ws.close()

    run(main())


@needs_netns
def test_networks_side_by_side_do_not_collide_and_clean_up() -> None:
    with Network(["a"]) as first, Network(["a"]) as second:
        assert first.ns("a") != second.ns("a")
        assert first.address("a") == second.address("a")  # separate switches, same subnet
        left_running = first.popen("a", ["sleep", "60"])
        made = {first.switch, first.ns("a"), second.switch, second.ns("a")}
        assert made <= _namespaces()
    assert left_running.poll() is not None  # killed on the way out
    assert not made & _namespaces()


def test_host_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unique"):
        Network(["a", "a"])
    with pytest.raises(ValueError, match="lowercase"):
        Network(["a-very-long-host-name"])
