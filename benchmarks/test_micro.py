"""Micro benchmarks of the hot path: the Cython ``shardws._core`` against its pure-Python
reference ``shardws._core_ref``, with stdlib/transport yardsticks.

    pytest benchmarks/test_micro.py --benchmark-enable

* parse: ``parse_envelope`` of a subscribe command, a 100-byte publish and a 1.3 KB
  publish; ``json.loads`` of the same bytes is the yardstick (it builds the whole Python
  object tree, which ``parse_envelope`` avoids, but it is what the peers do per command).
* frame: ``build_text_frame`` of a 100-byte and a 1.3 KB payload.
* fanout: one 100-byte frame to N = 10, 100, 1000 subscribers, each the server end of a
  real AF_UNIX socketpair wrapped in a uvloop transport, then ``flush()`` (the
  per-loop-iteration call the coalescing ``fanout`` needs). The yardstick is the plain
  ``for transport in subscribers: transport.write(frame)`` loop of a raw server.
  Receivers are drained between rounds, outside the timed region, so every round
  starts with empty kernel buffers and the direct-send path is what gets measured.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import uvloop

IMPLS = {"core": "shardws._core", "ref": "shardws._core_ref"}


def _module(impl: str) -> ModuleType:
    return importlib.import_module(IMPLS[impl])


def _exactly(template: str, size: int, **fields: Any) -> bytes:
    """``template`` with its ``{pad}`` field filled so the result is ``size`` bytes."""
    bare = template.format(pad="", **fields).encode()
    assert len(bare) <= size, (len(bare), size)
    return template.format(pad="x" * (size - len(bare)), **fields).encode()


SUBSCRIBE = b'{"id":1,"op":"subscribe","channel":"news"}'
PUBLISH_100 = _exactly(
    '{{"id":2,"op":"publish","channel":"news","data":{{"t":1732752000.123456,"p":"{pad}"}}}}',
    100,
)
# A realistic market-data style publication: nested objects, arrays of numbers, strings.
_BOOK = {
    "symbol": "BTC-USD",
    "seq": 918273645,
    "ts": 1732752000.123456,
    "bids": [[round(97000.5 - i * 0.5, 2), round(0.125 * (i + 1), 4)] for i in range(20)],
    "asks": [[round(97001.0 + i * 0.5, 2), round(0.1 * (i + 2), 4)] for i in range(20)],
    "meta": {"venue": "example", "snapshot": False, "levels": 20, "tags": ["l2", "spot"]},
}
PUBLISH_1300 = _exactly(
    '{{"id":3,"op":"publish","channel":"md:BTC-USD","data":{book},"note":"{pad}"}}',
    1300,
    book=json.dumps(_BOOK, separators=(",", ":")),
)
assert json.loads(PUBLISH_1300)["data"] == _BOOK

PARSE_CASES = {
    "subscribe": SUBSCRIBE,
    "publish_100B": PUBLISH_100,
    "publish_1300B": PUBLISH_1300,
}


@pytest.mark.parametrize("impl", ["core", "ref", "json.loads"])
@pytest.mark.parametrize("case", list(PARSE_CASES))
def test_parse(benchmark: Any, case: str, impl: str) -> None:
    buf = PARSE_CASES[case]
    benchmark.group = f"parse {case} ({len(buf)} B)"
    if impl == "json.loads":
        result = benchmark(json.loads, buf)
        assert result["op"] in ("subscribe", "publish")
        return
    envelope = benchmark(_module(impl).parse_envelope, buf)
    assert envelope.op in ("subscribe", "publish")
    if envelope.op == "publish":
        assert json.loads(envelope.data) == json.loads(buf)["data"]


PUSH_100 = _exactly('{{"type":"pub","channel":"news","data":"{pad}"}}', 100)
FRAME_PAYLOADS = {"100B": PUSH_100, "1300B": PUBLISH_1300}


@pytest.mark.parametrize("impl", ["core", "ref"])
@pytest.mark.parametrize("size", list(FRAME_PAYLOADS))
def test_build_text_frame(benchmark: Any, size: str, impl: str) -> None:
    payload = FRAME_PAYLOADS[size]
    benchmark.group = f"build_text_frame {size}"
    frame = benchmark(_module(impl).build_text_frame, payload)
    assert frame.endswith(payload) and frame[0] == 0x81


class _Silent(asyncio.Protocol):
    """Server side of a subscriber socket: the subscriber never sends anything."""


class _Subscribers:
    """N socketpairs: the server ends as uvloop transports, the client ends drained."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.transports: list[asyncio.Transport] = []
        self.receivers: list[socket.socket] = []
        self.received = 0
        self._buf = bytearray(1 << 16)
        for _ in range(count):
            server_end, client_end = socket.socketpair()
            client_end.setblocking(False)
            transport, _ = loop.run_until_complete(
                loop.create_unix_connection(_Silent, sock=server_end)
            )
            self.transports.append(transport)
            self.receivers.append(client_end)

    def drain(self) -> None:
        """Read everything the receivers have, so kernel buffers never fill."""
        buf = self._buf
        for receiver in self.receivers:
            while True:
                try:
                    n = receiver.recv_into(buf)
                except BlockingIOError:
                    break
                if n == 0:
                    break
                self.received += n

    def settle(self) -> None:
        """Let the loop write out anything a transport buffered, then drain."""
        for _ in range(100):  # bounded: each pass runs one loop iteration
            self.loop.run_until_complete(asyncio.sleep(0))
            self.drain()
            if not any(t.get_write_buffer_size() for t in self.transports):
                break
        self.drain()

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        for receiver in self.receivers:
            receiver.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()


# A whole 100-byte frame: 2-byte header (final text frame, 98-byte payload) + payload.
FRAME_100 = bytes([0x81, 98]) + _exactly('{{"type":"pub","channel":"news","data":"{pad}"}}', 98)
assert len(FRAME_100) == 100


def _fanout_round(impl: str, transports: list[asyncio.Transport]) -> Callable[[], int]:
    """One publication to every subscriber, as the server does it per loop iteration."""
    if impl == "transport.write":
        writers = [t.write for t in transports]

        def plain_loop() -> int:
            for write in writers:
                write(FRAME_100)
            return len(writers)

        return plain_loop
    module = _module(impl)
    sinks = [module.Sink(t) for t in transports]
    fanout = module.fanout
    # fanout coalesces per loop iteration: the server calls flush() once per iteration,
    # so it is part of the cost of a publication. Older builds without it need none.
    flush = getattr(module, "flush", None)
    if flush is None:
        return lambda: int(fanout(FRAME_100, sinks))

    def fanout_and_flush() -> int:
        count = fanout(FRAME_100, sinks)
        flush()
        return int(count)

    return fanout_and_flush


@pytest.mark.parametrize("impl", ["core", "ref", "transport.write"])
@pytest.mark.parametrize("subscribers", [10, 100, 1000])
def test_fanout(
    benchmark: Any, loop: asyncio.AbstractEventLoop, subscribers: int, impl: str
) -> None:
    benchmark.group = f"fanout 100 B frame x {subscribers} subscribers"
    subs = _Subscribers(loop, subscribers)
    try:
        one_round = _fanout_round(impl, subs.transports)
        delivered = 0

        def timed() -> None:
            nonlocal delivered
            delivered += one_round()

        # One publication per round, receivers drained (untimed) before each; more
        # rounds for small N, where one round takes only microseconds.
        benchmark.pedantic(
            timed,
            setup=subs.drain,
            rounds=max(100, 20_000 // subscribers),
            warmup_rounds=10,
            iterations=1,
        )
        subs.settle()
        # Every delivery counted by fanout really reached its receiver, byte for byte.
        assert delivered > 0 and delivered % subscribers == 0
        assert subs.received == delivered * len(FRAME_100)
    finally:
        subs.close()


# -- fossil deltas ------------------------------------------------------------------------


def _dashboard(changed: dict[int, float]) -> bytes:
    records = [
        {
            "id": i,
            "name": f"sensor-{i:03d}",
            "value": changed.get(i, round((i * 7919 % 100000) / 100, 2)),
            "status": "ok",
            "unit": "kPa",
        }
        for i in range(40)
    ]
    state = {"dashboard": "plant-3", "records": records}
    return json.dumps(state, separators=(",", ":")).encode()


#: The dashboard state of issue 32 (2,893 bytes) and the same with 3 values changed.
DELTA_SOURCE = _dashboard({})
DELTA_TARGET = _dashboard({3: 512.25, 17: 0.5, 31: 999.99})


@pytest.mark.parametrize("impl", ["core", "ref"])
def test_delta_create(benchmark: Any, impl: str) -> None:
    """One publication's delta (made once per publication per worker)."""
    create = _module(impl).delta_create
    delta = benchmark(create, DELTA_SOURCE, DELTA_TARGET)
    assert len(delta) < len(DELTA_TARGET) // 10


@pytest.mark.parametrize("impl", ["core", "ref"])
def test_delta_apply(benchmark: Any, impl: str) -> None:
    """A client rebuilding the whole data from its base and a delta."""
    module = _module(impl)
    delta = module.delta_create(DELTA_SOURCE, DELTA_TARGET)
    assert benchmark(module.delta_apply, DELTA_SOURCE, delta) == DELTA_TARGET
