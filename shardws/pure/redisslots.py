"""Redis Cluster's key space, no I/O: the slot a key or a shard channel hashes to, the
hub's channel names, and the slot map (which master serves which slots).

* :func:`key_slot` is Redis Cluster's own rule: CRC16 (XMODEM) of the name's hash tag
  (what lies between its first ``{`` and the first ``}`` after it, when not empty) or
  of the whole name, modulo 16384.
* :func:`redis_channel` names a bus topic's Redis channel ``prefix + kind + "{" + name
  + "}"``: the topic's name is the hash tag, so a channel's pub/sub lands on the slot
  of its keys (``<prefix>{<channel>}:...``, the history, presence and Pusher state),
  and a Lua script that touches them may publish to it. The prefix holds no brace
  (``config.RedisConfig`` checks it with ``cluster_nodes``) and a channel's name none
  (``protocol.channel_error``, and Pusher's rule), so the tag is the whole name. (A user
  id may hold braces: its topic then hashes by its own rule, the same on every host.)
  :func:`topic_of` is its inverse.
* :class:`SlotMap` is what ``CLUSTER SLOTS`` answers: the master of each slot range.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def key_slot(name: bytes) -> int:
    """The slot of a key or shard channel ``name`` (Redis Cluster's hash tag rule)."""
    start = name.find(b"{")
    if start >= 0:
        end = name.find(b"}", start + 1)
        if end > start + 1:
            name = name[start + 1 : end]
    return crc16(name) % SLOTS


def redis_channel(prefix: bytes, topic: bytes) -> bytes:
    """The Redis channel of bus ``topic`` (kind byte, name, NUL): ``prefix + kind + "{" +
    name + "}"``."""
    return prefix + topic[:1] + b"{" + topic[1:-1] + b"}"


def topic_of(prefix_length: int, channel: bytes) -> bytes:
    """The bus topic of a Redis channel named by :func:`redis_channel`."""
    return channel[prefix_length : prefix_length + 1] + channel[prefix_length + 2 : -1] + b"\0"


class SlotMap:
    """The master (``"HOST:PORT"``) serving each slot, from ``CLUSTER SLOTS``; a slot no
    range covers has none (the cluster is resharding or lost it)."""

    def __init__(self, ranges: Iterable[tuple[int, int, str]] = ()) -> None:
        self._ranges = sorted(ranges)
        self._starts = [first for first, _, _ in self._ranges]

    @classmethod
    def from_cluster_slots(cls, answer: Sequence[Any]) -> SlotMap:
        """Parse ``CLUSTER SLOTS``: ``[first, last, [host, port, id, ...], replicas...]``
        per range. A host given as ``""`` or ``"?"`` (the node answering does not know
        its own address) is not usable: its ranges are left out."""
        ranges = []
        for entry in answer:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if host in ("", "?"):
                continue
            address = f"[{host}]:{int(master[1])}" if ":" in host else f"{host}:{int(master[1])}"
            ranges.append((first, last, address))
        return cls(ranges)

    def owner(self, slot: int) -> str | None:
        """The master serving ``slot``, or None."""
        index = bisect.bisect_right(self._starts, slot) - 1
        if index < 0:
            return None
        first, last, address = self._ranges[index]
        return address if first <= slot <= last else None

    def owner_of(self, name: bytes) -> str | None:
        """The master serving the slot of key or shard channel ``name``."""
        return self.owner(key_slot(name))

    @property
    def masters(self) -> frozenset[str]:
        return frozenset(address for _, _, address in self._ranges)

    @property
    def covered(self) -> int:
        """How many slots have a master."""
        return sum(last - first + 1 for first, last, _ in self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotMap) and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(tuple(self._ranges))

    def __repr__(self) -> str:
        return f"SlotMap({self._ranges!r})"
