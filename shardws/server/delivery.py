"""Delivery: the one path from a publication to the sockets of a worker's subscribers.

Every publication a worker writes to its clients — published here, received from the
bus, sequenced by a channel's owner — arrives as a protocol-neutral
``pure.publication.Publication`` at :meth:`Delivery.publish`, which encodes it **once per
wire format** that has subscribers on the channel (the hub groups a channel's sinks by
their connection's :class:`WireFormat`) and hands each encoding to :meth:`Delivery.push`
(user-targeted messages, already encoded, go to ``push`` directly):

* **Frame once**: the push becomes one RFC 6455 text frame, the same bytes for every
  subscriber (``core.build_text_frame``).
* **Compress once per window size**: when a local connection agreed permessage-deflate
  and the push reaches ``[compression] threshold``, one ``core.Deflated`` compresses it
  once and frames it once per window size in use.
* **The slow-consumer rule**: ``drop`` skips the push for a subscriber whose unsent
  bytes would pass ``max_pending_bytes`` (counted in ``drops``); otherwise that
  subscriber is closed with 4501 at the flush (counted in ``slow_consumers``). A
  channel's rule comes from its namespace, looked up once per channel
  (:meth:`drop_for`); user-targeted pushes follow the rule named :data:`USER_PUSHES`.
* **Coalesced flush**: writes are corked; one flush per event-loop iteration with
  output sends every subscriber's frames in one syscall each, then closes the sinks
  that overflowed.

Replies and a connection's own pushes are not publications: they go to one connection
(``Connection.send``), are counted here through :meth:`wrote` and leave with the same
flush, so they stay in order with the publications.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from shardws.config import Config, NamespaceConfig
from shardws.core import Deflated, build_frame, fanout, flush, take_overflowed
from shardws.log import RateLimitedLogger
from shardws.pure import delta, msgpackwire
from shardws.pure.delta import DeltaForm, Deltas
from shardws.pure.protocol import CloseCode, encode_publication, namespace_of
from shardws.pure.publication import Kind, Publication
from shardws.shm.scoreboard import Column


class WireFormat(NamedTuple):
    """A client protocol as delivery sees it: how a publication on a channel becomes the
    message its connections receive (a binary one when ``binary``). A connection names
    its format in its ``wire`` attribute; the hub groups a channel's sinks by it.
    ``excludes_origin``: a publication never goes back to the connection it came from
    (Pusher's client events and ``socket_id`` exclusion; the native protocol echoes).
    ``delta``: the form of a delta subscription (``pure.delta``), whose publications
    :class:`~shardws.pure.delta.Deltas` writes (``encode`` makes its joins and leaves)."""

    name: str
    encode: Callable[[str, Publication], bytes]
    excludes_origin: bool = False
    binary: bool = False
    delta: DeltaForm | None = None


#: The native protocol (``pure.protocol``).
NATIVE = WireFormat("native", encode_publication)
#: The native protocol in MessagePack (``pure.msgpackwire``), binary frames.
NATIVE_MSGPACK = WireFormat("native.msgpack", msgpackwire.encode_publication, binary=True)

#: The native protocols' delta subscriptions (``"delta": "fossil"``).
NATIVE_DELTA = WireFormat("native.delta", encode_publication, delta=delta.JSON)
NATIVE_MSGPACK_DELTA = WireFormat(
    "native.msgpack.delta", msgpackwire.encode_publication, binary=True, delta=delta.MSGPACK
)
_DELTA_WIRES = {NATIVE: NATIVE_DELTA, NATIVE_MSGPACK: NATIVE_MSGPACK_DELTA}


def delta_wire(wire: WireFormat) -> WireFormat:
    """The delta subscription form of the native ``wire`` (``wire`` for others)."""
    return _DELTA_WIRES.get(wire, wire)


#: The namespace whose ``slow_consumer`` rule user-targeted pushes follow (a user's
#: messages belong to no channel; the default namespace is the one every server has).
USER_PUSHES = "default"

_OPTIONS_CACHE = 65536  # channels whose options are remembered (bounded)


class Delivery:
    """One worker's delivery path (see the module doc). ``stats`` is the worker's local
    counter list (indexed by ``Column``), copied to the scoreboard by the worker."""

    __slots__ = (
        "_config",
        "_flush_scheduled",
        "_level",
        "_log",
        "_options",
        "_stats",
        "_threshold",
        "deflating",
        "deltas",
        "origin_sinks",
        "user_drop",
    )

    def __init__(self, config: Config, stats: list[int], peer_log: RateLimitedLogger) -> None:
        self._config = config
        self._stats = stats
        self._log = peer_log
        self._level = config.compression.level
        self._threshold = config.compression.threshold
        self._options: dict[str, NamespaceConfig] = {}
        self._flush_scheduled = False
        self.deflating = 0  # open connections that negotiated permessage-deflate
        self.deltas = Deltas()  # the delta subscriptions' bases (pure.delta)
        # The sinks of this worker's connections whose wire format excludes the origin,
        # by their client id (Pusher socket id): kept by the worker.
        self.origin_sinks: dict[str, Any] = {}
        default = config.namespaces.get(USER_PUSHES) or NamespaceConfig()
        self.user_drop = default.slow_consumer == "drop"

    def options_for(self, channel: str) -> NamespaceConfig:
        """``channel``'s namespace options (the default options for an unconfigured
        namespace), cached per channel: asked for every bus batch on the fan-out path.
        The config never changes inside a process (a reload replaces the process)."""
        options = self._options.get(channel)
        if options is None:
            options = self._config.namespaces.get(namespace_of(channel)) or NamespaceConfig()
            if len(self._options) < _OPTIONS_CACHE:
                self._options[channel] = options
        return options

    def drop_for(self, channel: str) -> bool:
        """``channel``'s slow-consumer rule: True drops, False disconnects. Always False
        for a history namespace (the config refuses ``drop`` there)."""
        return self.options_for(channel).slow_consumer == "drop"

    def publish(
        self,
        channel: str,
        publication: Publication,
        groups: list[tuple[WireFormat, list[Any]]],
        drop: bool,
    ) -> None:
        """Write ``publication`` on ``channel`` to the sinks of ``groups`` (``Hub.groups``:
        ``[(WireFormat, sinks)]``), encoded once per wire format, under the rule
        ``drop``; never to the connection ``publication.origin`` in a format that
        excludes the origin."""
        for wire, sinks in groups:
            if wire.delta is not None:
                self.deltas.publish(channel, publication, wire, sinks, drop, self.push)
                continue
            if wire.excludes_origin and publication.origin:
                # Only the origin's own worker finds it here: one copy of the list there
                # (the fan-out after it is O(n) anyway), nothing on the other workers.
                origin = self.origin_sinks.get(publication.origin)
                if origin is not None:
                    sinks = [sink for sink in sinks if sink is not origin]
                    if not sinks:
                        continue
            self.push(wire.encode(channel, publication), sinks, drop, wire.binary)

    @staticmethod
    def whole_push(
        wire: WireFormat, channel: str, publication: Publication
    ) -> tuple[bytes, bytes] | None:
        """The full push of ``publication`` for one delta subscriber in ``wire`` (a
        recovering subscriber's missed ones, sent before it is active), and the data
        bytes it carries (the client's next base, ``pure.delta``); None when it has no
        delta form (a join or leave, whole-binary data on JSON, not a native wire):
        then send the ordinary push."""
        form = delta_wire(wire).delta
        if form is None or publication.kind is not Kind.PUB:
            return None
        data = form.data_of(publication.data)
        return None if data is None else (form.encode(channel, publication, data, False), data)

    def resume_deltas(self, conn: Any, channel: str) -> None:
        """``conn`` became active on ``channel``: if the last publication it was sent
        alone (``whole_push``) carried the data this worker's deltas are now made
        against, it gets deltas from the next publication on."""
        data = conn.delta_sent.pop(channel, None)
        if data is not None and channel in conn.delta_channels:
            form = delta_wire(conn.wire).delta
            if form is not None:
                self.deltas.resume(channel, form, conn.sink, data)

    def push_user(self, push: bytes, sinks: list[Any]) -> None:
        """Write a user-targeted JSON ``push`` (``protocol.encode_user_pub``) to the user's
        ``sinks`` under the rule named :data:`USER_PUSHES`; MessagePack sinks get its
        MessagePack form, converted once."""
        native = [sink for sink in sinks if not sink.owner.wire.binary]
        if native:
            self.push(push, native, self.user_drop)
        if len(native) < len(sinks):
            binary = [sink for sink in sinks if sink.owner.wire.binary]
            self.push(msgpackwire.from_json(push), binary, self.user_drop, True)

    def push(self, push: bytes, sinks: list[Any], drop: bool, binary: bool = False) -> None:
        """Write the encoded ``push`` to ``sinks`` under the rule ``drop`` (see the
        module doc), as a binary message when ``binary``; returns at once, the bytes
        leave at this iteration's flush."""
        frame = build_frame(push, binary)
        deflated = (
            Deflated(push, self._level, binary)
            if self.deflating and len(push) >= self._threshold
            else None
        )
        written = fanout(frame, sinks, drop, deflated)
        self._stats[Column.MESSAGES_OUT] += written
        self.wrote(written * len(frame) - (deflated.saved if deflated is not None else 0))

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written to sinks and make sure they leave this iteration."""
        self._stats[Column.BYTES_OUT] += nbytes
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Once per loop iteration with output: every subscriber's corked frames leave in
        # one syscall, then slow consumers are disconnected.
        self._flush_scheduled = False
        flush()
        for sink in take_overflowed():
            self._stats[Column.SLOW_CONSUMERS] += 1
            self._log.info("client %s: slow consumer, disconnecting", sink.owner.client_id)
            sink.owner.close(CloseCode.SLOW_CONSUMER, "slow consumer")
