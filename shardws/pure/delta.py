"""Fossil delta subscriptions: what each delta subscriber of a channel is sent (no I/O).

A subscriber that asked for ``"delta": "fossil"`` (in a namespace whose
``allowed_delta_types`` has ``"fossil"``) receives a channel's publications either
**full** or as a **fossil delta** (``core.delta_create``) against the data of the
publication it received just before on the channel. Its pushes carry the data as the
bytes of its encoding, so the client can keep them as the next base (docs/protocol.md,
"Delta subscriptions"):

* JSON: ``"data":"<the data's JSON text, as a JSON string>"``, a delta with
  ``"delta":true`` and the delta as a JSON string (Centrifugo's form);
* MessagePack: ``"data":<bin: the data's MessagePack bytes>``, a delta with
  ``"delta":true`` and the delta's bytes.

Guarantees (one :class:`Deltas` per worker, fed every publication the worker delivers):

* **Exact**: a subscriber gets a delta only if it received the previous publication
  this worker delivered on the channel, in the same form, and nothing since; anyone
  else (it just subscribed or subscribed again, it was skipped by the ``drop`` rule,
  the data has no delta form) gets the publication full. A recovering subscriber's
  missed publications go full outside this path (they reach it before it is active);
  when it becomes active, :meth:`Deltas.resume` compares the data of the last one it was
  sent with the channel's base: the same bytes, and deltas resume from the next
  publication; else that one goes full.
* **Once per publication**: one delta per publication per form per worker, whatever the
  number of subscribers; the steady state (the same subscribers, nothing dropped) costs
  no work per subscriber.
* A delta is sent only when smaller than the full data (and, for JSON, valid UTF-8, so
  it can travel as a JSON string).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from shardws.core import delta_create, total_drops, utf8_valid
from shardws.pure import wiredata
from shardws.pure.publication import Kind, Publication
from shardws.pure.wiredata import packb

#: The delta types a subscribe may ask for (``"delta"``) and a namespace may allow.
DELTA_TYPES = ("fossil",)


def parse_delta(raw: bytes | None) -> str | None:
    """The ``delta`` member of a subscribe (JSON bytes): absent -> None, ``"fossil"`` ->
    ``"fossil"``; anything else -> ValueError naming what is accepted."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if value not in DELTA_TYPES:
        raise ValueError(
            f"delta must be one of {list(DELTA_TYPES)}, got {raw.decode(errors='replace')}"
        )
    return str(value)


# ------------------------------------------------------------------ the two forms


def _json_text(data: bytes) -> bytes | None:
    # The JSON text of carried data; None for whole-binary data (it has none).
    if not wiredata.is_msgpack(data):
        return data
    value = wiredata.unpack(data[1:])
    if isinstance(value, bytes):
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _head_json(channel: str, publication: Publication) -> bytes:
    position = publication.position
    if position is None:
        return b'{"type":"pub","channel":"%s",' % channel.encode()
    return b'{"type":"pub","channel":"%s","offset":%d,"epoch":"%s",' % (
        channel.encode(),
        position.offset,
        position.epoch.encode(),
    )


def _encode_json(channel: str, publication: Publication, payload: bytes, delta: bool) -> bytes:
    text = json.dumps(payload.decode(), ensure_ascii=False).encode()
    flag = b'"delta":true,' if delta else b""
    return _head_json(channel, publication) + flag + b'"data":' + text + b"}"


_PUB = packb("type") + packb("pub") + packb("channel")


def _encode_msgpack(channel: str, publication: Publication, payload: bytes, delta: bool) -> bytes:
    position = publication.position
    members = 3 + (position is not None) * 2 + delta
    parts = [bytes((0x80 | members,)), _PUB, packb(channel)]
    if position is not None:
        parts += [packb("offset"), packb(position.offset), packb("epoch"), packb(position.epoch)]
    if delta:
        parts += [packb("delta"), b"\xc3"]
    parts += [packb("data"), packb(payload)]
    return b"".join(parts)


class DeltaForm(NamedTuple):
    """How a delta subscriber's pushes look in one wire format: ``data_of(carried)`` is
    the base the deltas are made against (None: no delta form, the push goes out as
    ``fallback`` makes it); ``encode(channel, publication, payload, is_delta)``;
    ``text``: a delta must be valid UTF-8."""

    name: str
    data_of: Callable[[bytes], bytes | None]
    encode: Callable[[str, Publication, bytes, bool], bytes]
    text: bool


JSON = DeltaForm("json", _json_text, _encode_json, True)
MSGPACK = DeltaForm("msgpack", wiredata.msgpack_of, _encode_msgpack, False)


# ------------------------------------------------------------------ per worker state


class _Base:
    """A channel's last delivered publication in one form, and who received it."""

    __slots__ = ("data", "synced", "synced_set")

    def __init__(self) -> None:
        self.data: bytes | None = None
        # Who received ``data``: the hub's sink list itself while that is everyone (the
        # steady state, compared by identity), else a set.
        self.synced: list[Any] | None = None
        self.synced_set: set[Any] = set()

    def split(self, sinks: list[Any]) -> tuple[list[Any], list[Any]]:
        if self.synced is sinks:
            return sinks, []
        have = set(self.synced) if self.synced is not None else self.synced_set
        synced = [sink for sink in sinks if sink in have]
        if len(synced) == len(sinks):
            return sinks, []
        return synced, [sink for sink in sinks if sink not in have]


class Deltas:
    """One worker's delta subscriptions, by channel and form (see the module doc).
    Unbounded only by the channels with local delta subscribers: ``forget`` a channel
    when its last local subscriber leaves."""

    __slots__ = ("_bases", "computed")

    def __init__(self) -> None:
        self._bases: dict[tuple[str, str], _Base] = {}
        self.computed = 0  # deltas made (one per publication per form at most)

    def publish(
        self,
        channel: str,
        publication: Publication,
        wire: Any,
        sinks: list[Any],
        drop: bool,
        write: Callable[[bytes, list[Any], bool, bool], None],
    ) -> None:
        """Write ``publication`` to the delta subscribers ``sinks`` (``Hub.groups``'
        list, not copied) of ``wire`` (a ``WireFormat`` whose ``delta`` is set) through
        ``write(message, sinks, drop, binary)`` (``Delivery.push``): a delta to those
        that received the previous one, full to the others; then remember who received
        it (under ``drop``, not those the fan-out skipped: their ``drops`` grew)."""
        form: DeltaForm = wire.delta
        binary: bool = wire.binary
        fallback: Callable[[str, Publication], bytes] = wire.encode

        def push(message: bytes, to: list[Any]) -> None:
            write(message, to, drop, binary)

        key = (channel, form.name)
        base = self._bases.get(key)
        if base is None:
            base = self._bases[key] = _Base()
        if publication.kind is not Kind.PUB:
            push(fallback(channel, publication), sinks)  # a join or leave: no data
            return
        data = form.data_of(publication.data)
        if data is None:
            push(fallback(channel, publication), sinks)
            base.data = None
            return
        synced, behind = base.split(sinks) if base.data is not None else ([], sinks)
        before = [sink.drops for sink in sinks] if drop else None
        drops = total_drops()
        full = None  # made only for those that need it (steady state: nobody)
        if synced:
            assert base.data is not None
            delta = delta_create(base.data, data)
            self.computed += 1
            if len(delta) < len(data) and (not form.text or utf8_valid(delta)):
                push(form.encode(channel, publication, delta, True), synced)
            else:
                full = form.encode(channel, publication, data, False)
                push(full, synced)
        if behind:
            push(full or form.encode(channel, publication, data, False), behind)
        base.data = data
        if before is None or total_drops() == drops:
            base.synced = sinks
        else:
            base.synced = None
            base.synced_set = {
                sink for sink, seen in zip(sinks, before, strict=True) if sink.drops == seen
            }

    def unsync(self, channel: str, sink: Any) -> None:
        """``sink`` (re)subscribed to ``channel``: it has no base there; its next
        publication goes full."""
        for form in (JSON, MSGPACK):
            base = self._bases.get((channel, form.name))
            if base is not None:
                if base.synced is not None:
                    base.synced_set = set(base.synced)
                    base.synced = None
                base.synced_set.discard(sink)

    def resume(self, channel: str, form: DeltaForm, sink: Any, data: bytes) -> None:
        """``sink``, active again on ``channel``, holds ``data`` as its base (the last
        publication sent to it alone): if the channel's deltas in ``form`` are made
        against the same bytes, it gets deltas from the next publication on."""
        base = self._bases.get((channel, form.name))
        if base is None or base.data != data:
            return  # its next publication goes full
        if base.synced is not None:
            base.synced_set = set(base.synced)
            base.synced = None
        base.synced_set.add(sink)

    def forget(self, channel: str) -> None:
        """The channel has no local subscribers any more: drop its bases."""
        for form in (JSON, MSGPACK):
            self._bases.pop((channel, form.name), None)
