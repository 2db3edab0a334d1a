"""shardws.pure.deflate: permessage-deflate negotiation (RFC 7692) and capped inflating."""

from __future__ import annotations

import zlib

import pytest

from shardws.config import CompressionConfig
from shardws.pure.deflate import (
    Agreement,
    BadCompressedData,
    Inflater,
    MessageTooBig,
    negotiate,
)

ON = CompressionConfig(enabled=True)
SMALL = CompressionConfig(enabled=True, max_window_bits=10)


@pytest.mark.parametrize(
    ("offer", "config", "expected"),
    [
        # Chrome and Firefox offer this: the client's window is ours to bound.
        (
            "permessage-deflate; client_max_window_bits",
            ON,
            Agreement(
                15,
                15,
                False,
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
            ),
        ),
        (
            "permessage-deflate; client_max_window_bits",
            SMALL,
            Agreement(
                10,
                10,
                False,
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            ),
        ),
        # No client_max_window_bits: the client may use 15 bits, the server must accept.
        (
            "permessage-deflate",
            SMALL,
            Agreement(10, 15, False, "permessage-deflate; server_no_context_takeover"),
        ),
        # Autobahn's default offer.
        (
            "permessage-deflate; client_no_context_takeover; client_max_window_bits",
            ON,
            Agreement(
                15,
                15,
                True,
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=15; "
                "client_no_context_takeover",
            ),
        ),
        (
            "permessage-deflate; server_max_window_bits=9",
            ON,
            Agreement(
                9,
                15,
                False,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
            ),
        ),
        (
            'permessage-deflate; server_max_window_bits="12"; client_max_window_bits=11',
            ON,
            Agreement(
                12,
                11,
                False,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
                "client_max_window_bits=11",
            ),
        ),
        # An 8-bit server window cannot be honoured by zlib: declined, next offer taken.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            ON,
            Agreement(15, 15, False, "permessage-deflate; server_no_context_takeover"),
        ),
        (
            "x-webkit-deflate-frame, permessage-deflate",
            ON,
            Agreement(15, 15, False, "permessage-deflate; server_no_context_takeover"),
        ),
    ],
)
def test_accepted_offers(offer: str, config: CompressionConfig, expected: Agreement) -> None:
    assert negotiate([offer], config) == expected


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
        "",
    ],
)
def test_declined_offers(offer: str) -> None:
    assert negotiate([offer], ON) is None


def test_disabled_declines_everything() -> None:
    assert negotiate(["permessage-deflate"], CompressionConfig()) is None


def test_offers_split_over_several_headers() -> None:
    agreement = negotiate(["foo", "permessage-deflate; client_max_window_bits=9"], ON)
    assert agreement is not None and agreement.client_window_bits == 9


def _compress(data: bytes, bits: int = 15, keep: zlib._Compress | None = None) -> bytes:
    compressor = keep or zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_inflater_with_context_takeover() -> None:
    inflater = Inflater(Agreement(15, 15, False, ""), max_size=10_000)
    client = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = b'{"op":"publish","data":"' + b"repeat " * 100 + b'"}'
    assert inflater.inflate(_compress(first, keep=client)) == first
    assert inflater.holds_state
    # The second message refers back to the first: the kept window resolves it.
    assert inflater.inflate(_compress(first, keep=client)) == first


def test_inflater_without_context_takeover_keeps_nothing() -> None:
    inflater = Inflater(Agreement(15, 9, True, ""), max_size=10_000)
    for _ in range(3):
        assert inflater.inflate(_compress(b"hello " * 50, bits=9)) == b"hello " * 50
        assert not inflater.holds_state


def test_zip_bomb_stops_at_the_cap() -> None:
    bomb = _compress(b"\x00" * 50_000_000)
    assert len(bomb) < 100_000
    inflater = Inflater(Agreement(15, 15, False, ""), max_size=65536)
    with pytest.raises(MessageTooBig):
        inflater.inflate(bomb)
    exact = Inflater(Agreement(15, 15, False, ""), max_size=1000)
    assert exact.inflate(_compress(b"a" * 1000)) == b"a" * 1000
    with pytest.raises(MessageTooBig):
        exact.inflate(_compress(b"a" * 1001))


def test_garbage_is_bad_compressed_data() -> None:
    inflater = Inflater(Agreement(15, 15, False, ""), max_size=1000)
    with pytest.raises(BadCompressedData):
        inflater.inflate(b"\xff\xff\xff\xff")
