"""publication.py: the protocol-neutral publication and its bus record; the native
encoding of it (protocol.encode_publication); ring files of the previous format."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardws.pure import protocol
from shardws.pure.history import Entry, Position, RingState
from shardws.pure.publication import Kind, Publication, decode, encode
from shardws.server.ringfile import load_rings, save_rings

texts = st.text(max_size=40)
positions = st.none() | st.builds(Position, st.text(min_size=1, max_size=16), st.integers(0, 2**63))
publications = st.builds(
    Publication,
    st.binary(max_size=200),
    st.sampled_from(Kind),
    texts,
    texts,
    texts,
    positions,
)


@given(publications)
def test_a_record_decodes_to_the_publication_it_encodes(publication: Publication) -> None:
    assert decode(encode(publication)) == publication


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_publication_or_a_value_error(record: bytes) -> None:
    try:
        decode(record)
    except ValueError:
        pass


def test_bad_records_and_fields() -> None:
    good = encode(Publication(b"{}", event="e", origin="c1", position=Position("ep", 3)))
    for bad in (b"", good[:10], good[:18], b"\x07" + good[1:], b'{"type":"pub"}'):
        with pytest.raises(ValueError):
            decode(bad)
    with pytest.raises(ValueError):
        encode(Publication(b"1", event="x" * 70_000))
    with pytest.raises(ValueError):
        encode(Publication(b"1", position=Position("", 1)))


def test_the_native_encoding_is_the_native_push() -> None:
    channel = "chat:a"
    assert protocol.encode_publication(channel, Publication(b'{"x":1}')) == protocol.encode_pub(
        channel, b'{"x":1}'
    )
    at = Publication(b"[1]", position=Position("e1", 7), origin="w1.2", event="ignored")
    push = protocol.encode_publication(channel, at)
    assert push == protocol.encode_pub_at(channel, 7, "e1", b"[1]")
    assert protocol.decode_pub_at(push, channel) == Publication(b"[1]", position=Position("e1", 7))
    assert protocol.decode_pub_at(protocol.encode_pub(channel, b"1"), channel) is None
    join = Publication(b"", Kind.JOIN, origin="w1.2", user="ann")
    leave = join._replace(kind=Kind.LEAVE)
    assert protocol.encode_publication(channel, join) == protocol.encode_presence_event(
        "join", channel, "ann", "w1.2"
    )
    assert protocol.encode_publication(channel, leave) == protocol.encode_presence_event(
        "leave", channel, "ann", "w1.2"
    )


def test_ring_files_of_the_previous_format_are_converted(tmp_path: Path) -> None:
    """A ring file saved by the previous version (entries held the native push) loads with
    each entry's data; a ring whose entry is not such a push is left out."""
    path = str(tmp_path / "rings-0.pickle")
    push = protocol.encode_pub_at("h:a", 2, "ep", b'{"n":2}')
    old = {
        "h:a": RingState(4, 0.0, "ep", 2, (Entry(2, 1.0, push, "k"),)),
        "h:b": RingState(4, 0.0, "ep", 1, (Entry(1, 1.0, b"not a push", None),)),
    }
    with open(path, "wb") as file:
        pickle.dump(old, file)
    assert load_rings(path) == {
        "h:a": RingState(4, 0.0, "ep", 2, (Entry(2, 1.0, b'{"n":2}', "k"),))
    }
    current = {"h:c": RingState(4, 0.0, "ep", 1, (Entry(1, 1.0, b"[]", None),))}
    assert save_rings(path, current) == 1
    assert load_rings(path, keep=True) == current == load_rings(path)
    assert load_rings(path) == {}  # removed by the load without keep
