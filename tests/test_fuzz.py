"""Hostile bytes against a real 2-worker server: random upgrade requests, random frames.

The property: whatever arrives, no worker crashes or restarts, other clients keep
working, and memory does not grow with the attack. CI runs a bounded number of examples;
a longer local run: ``SHARDWS_FUZZ_EXAMPLES=5000 SHARDWS_FUZZ_RANDOM=1 pytest tests/test_fuzz.py
--timeout=0`` (the per-test timeout is sized for CI).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverproc import ServerProcess
from toolkit import run, timeout
from wsclient import Client

EXAMPLES = int(os.environ.get("SHARDWS_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("SHARDWS_FUZZ_RANDOM") != "1",
)


SERVER = {"workers": 2, "server": "handshake_timeout = 1"}


@pytest.fixture(scope="module", autouse=True)
def no_worker_crashed(server: ServerProcess) -> Iterator[None]:
    """After the module's tests, before the server stops: both workers ran throughout."""
    yield
    _, body = server.health()
    assert body["workers_alive"] == 2
    assert [w["restarts"] for w in body["per_worker"]] == [0, 0], "a worker crashed"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _exchange(port: int, data: bytes, wait: float = 0.05) -> bytes:
    """Send ``data`` on a fresh TCP connection, read what comes back briefly, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(2)) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may close early: that is a valid answer
            return b""
        sock.settimeout(wait)
        received = b""
        try:
            while len(received) < 1 << 16:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, OSError):
            pass
        return received


def _upgrade(path: bytes = b"/ws", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def _frame(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool, lie: int) -> bytes:
    """A client frame (RFC 6455 5.2), optionally unmasked, with reserved bits, or with a
    length field that lies by ``lie`` bytes."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    length = max(0, len(payload) + lie)
    if length < 126:
        header = struct.pack("!BB", first, (0x80 if masked else 0) | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
).map(lambda v: repr(v).replace("'", '"').encode())

commands = st.one_of(
    json_ish,
    st.binary(max_size=300),
    st.sampled_from(
        [
            b'{"id":1,"op":"subscribe","channel":"news"}',
            b'{"id":2,"op":"publish","channel":"news","data":{"x":[1,2,{"y":null}]}}',
            b'{"op":"publish","channel":"news"}',
            b'{"id":1e400,"op":"ping"}',
            b'{"id":1,"op":"connect","token":"' + b"A" * 5000 + b'"}',
            b"[" * 10000,
            b'{"a":' * 40 + b"1" + b"}" * 40,
        ]
    ),
)

frames = st.builds(
    _frame,
    opcode=st.sampled_from([0, 1, 1, 1, 2, 3, 8, 9, 10, 11, 15]),
    payload=commands,
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 4, 7]),
    masked=st.sampled_from([True, True, True, False]),
    lie=st.sampled_from([0, 0, 0, -1, 1, 200, 70_000]),
)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_garbage_instead_of_http(server: ServerProcess, data: bytes) -> None:
    _exchange(server.ws_port, data)


@FUZZ
@given(
    path=st.sampled_from([b"/ws", b"/ws?token=", b"/ws?token=%ff%00", b"/x", b"*", b"/ws?" * 50]),
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"Origin",
                    b"Authorization",
                    b"X-Forwarded-For",
                    b"Sec-WebSocket-Version",
                    b"Sec-WebSocket-Extensions",
                    b"Content-Length",
                    b"Transfer-Encoding",
                    b"X",
                ]
            ),
            st.binary(max_size=64).filter(lambda v: b"\r" not in v and b"\n" not in v),
        ),
        max_size=6,
    ),
    tail=st.binary(max_size=256),
)
def test_hostile_upgrade_requests(
    server: ServerProcess, path: bytes, headers: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    _exchange(server.ws_port, _upgrade(path, extra) + tail)


@FUZZ
@given(sequence=st.lists(frames, min_size=1, max_size=6))
def test_hostile_frames_after_upgrade(server: ServerProcess, sequence: list[bytes]) -> None:
    _exchange(server.ws_port, _upgrade() + b"".join(sequence))


def test_service_unharmed_after_fuzzing(server: ServerProcess) -> None:
    """Runs last in this module: clients still work and memory did not balloon."""
    _, body = server.health()
    pids = [w["pid"] for w in body["per_worker"]]
    before = sum(_rss_kb(pid) for pid in pids)
    for _ in range(300):  # one more burst, then compare memory
        _exchange(server.ws_port, _upgrade() + _frame(1, b"{" * 1000, True, 0, True, 0), 0)

    async def main() -> None:
        sub = await Client.connect(server.url)
        pub = await Client.connect(server.url)
        await sub.call("subscribe", channel="after-fuzz")
        await pub.call("publish", channel="after-fuzz", data="still here")
        assert (await sub.next_push())["data"] == "still here"
        await sub.close()
        await pub.close()

    run(main(), 30)
    after = sum(_rss_kb(pid) for pid in pids)
    assert after - before < 20_000, f"RSS grew {after - before} KB over 300 hostile connections"
