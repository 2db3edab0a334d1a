"""``pure.delta``: the subscribe member, the two push forms, and who gets a delta (no I/O:
the pushes are recorded, sinks are plain objects with the ``drops`` counter a sink has)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from shardws.core import delta_apply
from shardws.pure import delta, wiredata
from shardws.pure.history import Position
from shardws.pure.publication import Kind, Publication
from shardws.server.delivery import NATIVE_DELTA, NATIVE_MSGPACK_DELTA


class Sink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.drops = 0

    def __repr__(self) -> str:
        return self.name


def test_parse_delta() -> None:
    assert delta.parse_delta(None) is None
    assert delta.parse_delta(b'"fossil"') == "fossil"
    for bad in (b'"xdelta"', b"true", b"1", b"{"):
        with pytest.raises(ValueError, match="fossil"):
            delta.parse_delta(bad)


def _state(i: int) -> bytes:
    records = [{"id": r, "value": (r * 7 + (i if r in (3, 9) else 0)) % 100} for r in range(30)]
    return json.dumps({"records": records}, separators=(",", ":")).encode()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list[Any]]] = []

    def __call__(self, message: bytes, sinks: list[Any], drop: bool, binary: bool) -> None:
        self.sent.append((message, list(sinks)))


def _decoded(message: bytes, binary: bool) -> dict[str, Any]:
    return msgpack.unpackb(message) if binary else json.loads(message)


@pytest.mark.parametrize("wire", [NATIVE_DELTA, NATIVE_MSGPACK_DELTA], ids=["json", "msgpack"])
def test_deltas_go_to_those_that_have_the_base(wire: Any) -> None:
    deltas = delta.Deltas()
    a, b, c = Sink("a"), Sink("b"), Sink("c")
    sinks = [a, b]
    record = Recorder()
    position = Position("e1", 1)
    deltas.publish("ch", Publication(_state(0), position=position), wire, sinks, False, record)
    first = _decoded(record.sent[-1][0], wire.binary)
    assert "delta" not in first and first["offset"] == 1  # nobody had a base: full
    base = first["data"].encode() if isinstance(first["data"], str) else first["data"]
    assert base == (wiredata.msgpack_of(_state(0)) if wire.binary else _state(0))
    # Same subscribers: one delta to both, computed once.
    record.sent.clear()
    deltas.publish("ch", Publication(_state(1)), wire, sinks, False, record)
    assert deltas.computed == 1
    [(message, to)] = record.sent
    assert to == [a, b]
    push = _decoded(message, wire.binary)
    assert push["delta"] is True
    payload = push["data"].encode() if isinstance(push["data"], str) else push["data"]
    target = delta_apply(base, payload)
    assert (msgpack.unpackb(target) if wire.binary else json.loads(target)) == json.loads(_state(1))
    # c joins, b re-subscribes: both get the next one full, a a delta.
    record.sent.clear()
    deltas.unsync("ch", b)
    sinks = [a, b, c]
    deltas.publish("ch", Publication(_state(2)), wire, sinks, False, record)
    assert [to for _message, to in record.sent] == [[a], [b, c]]
    assert "delta" in _decoded(record.sent[0][0], wire.binary)
    assert "delta" not in _decoded(record.sent[1][0], wire.binary)
    # A join or leave goes as the wire's ordinary push and leaves the base alone.
    record.sent.clear()
    deltas.publish(
        "ch", Publication(b"", Kind.JOIN, user="u", origin="o"), wire, sinks, False, record
    )
    assert _decoded(record.sent[0][0], wire.binary)["type"] == "join"
    record.sent.clear()
    deltas.publish("ch", Publication(_state(3)), wire, sinks, False, record)
    assert [to for _message, to in record.sent] == [[a, b, c]]
    assert deltas.computed == 3


def test_larger_deltas_and_binary_data_go_full() -> None:
    deltas = delta.Deltas()
    a = Sink("a")
    record = Recorder()
    deltas.publish("ch", Publication(b'"x"'), NATIVE_DELTA, [a], False, record)
    deltas.publish("ch", Publication(b'"y"'), NATIVE_DELTA, [a], False, record)
    assert "delta" not in json.loads(record.sent[-1][0])  # a 2-byte delta is not smaller
    binary = wiredata.carried(msgpack.packb(b"\x00\x01"))
    deltas.publish("ch", Publication(binary), NATIVE_DELTA, [a], False, record)
    assert "b64data" in json.loads(record.sent[-1][0])
    deltas.publish("ch", Publication(_state(0)), NATIVE_DELTA, [a], False, record)
    assert "delta" not in json.loads(record.sent[-1][0])  # no base after binary data
    deltas.forget("ch")
    deltas.publish("ch", Publication(_state(1)), NATIVE_DELTA, [a], False, record)
    assert "delta" not in json.loads(record.sent[-1][0])


def test_a_recovered_subscriber_resumes_deltas_from_the_data_it_was_sent() -> None:
    deltas = delta.Deltas()
    a, late, stale = Sink("a"), Sink("late"), Sink("stale")
    record = Recorder()
    deltas.publish("ch", Publication(_state(0)), NATIVE_DELTA, [a], False, record)
    deltas.publish("ch", Publication(_state(1)), NATIVE_DELTA, [a], False, record)
    # Both were sent publications alone while pending (recovery): "late" up to the
    # state the deltas are now made against, "stale" one behind it.
    deltas.resume("ch", delta.JSON, late, _state(1))
    deltas.resume("ch", delta.JSON, stale, _state(0))
    record.sent.clear()
    deltas.publish("ch", Publication(_state(2)), NATIVE_DELTA, [a, late, stale], False, record)
    assert [to for _message, to in record.sent] == [[a, late], [stale]]
    assert json.loads(record.sent[0][0])["delta"] is True
