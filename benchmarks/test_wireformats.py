"""Micro benchmarks of the MessagePack wire format against JSON, on the three payloads
of issue 32 (``benchmarks.wireformats.PAYLOADS``):

    pytest benchmarks/test_wireformats.py --benchmark-enable

* encode / decode: ``json.dumps`` / ``json.loads`` against ``msgpack.packb`` /
  ``unpackb`` of the data (what a client does per message);
* parse: a publish command, ``core.parse_envelope`` (JSON) against
  ``msgpackwire.parse_command`` (MessagePack, data checked), both with the Cython core;
* push: the publication push a worker builds once per publication per format,
  ``protocol.encode_publication`` and ``msgpackwire.encode_publication`` of data in the
  subscribers' own format (embedded as it is);
* transcode: the same push built from data of the other format (the conversion a worker
  makes at most once per publication for the subscribers of the other format).
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from benchmarks.wireformats import PAYLOADS
from shardws.core import parse_envelope
from shardws.pure import msgpackwire, protocol
from shardws.pure.publication import Publication
from shardws.pure.wiredata import carried

_JSON = {name: json.dumps(v, separators=(",", ":")).encode() for name, v in PAYLOADS.items()}
_MSGPACK = {name: msgpack.packb(v) for name, v in PAYLOADS.items()}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_encode(benchmark: Any, payload: str, fmt: str) -> None:
    benchmark.group = f"encode {payload}"
    value = PAYLOADS[payload]
    if fmt == "json":
        benchmark(json.dumps, value, separators=(",", ":"))
    else:
        benchmark(msgpack.packb, value)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_decode(benchmark: Any, payload: str, fmt: str) -> None:
    benchmark.group = f"decode {payload}"
    if fmt == "json":
        assert benchmark(json.loads, _JSON[payload]) == PAYLOADS[payload]
    else:
        assert benchmark(msgpack.unpackb, _MSGPACK[payload]) == PAYLOADS[payload]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_parse(benchmark: Any, payload: str, fmt: str) -> None:
    benchmark.group = f"parse publish {payload}"
    command = {"id": 7, "op": "publish", "channel": "c", "data": PAYLOADS[payload]}
    if fmt == "json":
        env = benchmark(parse_envelope, json.dumps(command).encode())
    else:
        env = benchmark(msgpackwire.parse_command, msgpack.packb(command))
    assert env.op == "publish"


@pytest.mark.parametrize("route", ["json→json", "msgpack→msgpack", "msgpack→json", "json→msgpack"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_push(benchmark: Any, payload: str, route: str) -> None:
    benchmark.group = f"push {payload}"
    source, target = route.split("→")
    data = _JSON[payload] if source == "json" else carried(_MSGPACK[payload])
    encode = protocol.encode_publication if target == "json" else msgpackwire.encode_publication
    push = benchmark(encode, "c", Publication(data))
    decoded = json.loads(push) if target == "json" else msgpack.unpackb(push)
    assert decoded["data"] == PAYLOADS[payload]
