"""Channel history on its owner: ordered offsets, an epoch, a bounded ring, idempotency.

No I/O. The owner of a channel (``owner_of``: rendezvous hashing over the members of the
view) keeps one ``Ring`` per channel with history and is its sequencer: every
publication gets the next offset, is stored, and only then goes to subscribers.

Guarantees of a ``Ring``:

* Offsets are strictly increasing by one per stored publication, starting at 1, for
  as long as the ring's ``epoch`` stays the same. A new ring (owner restarted, history
  lost) gets a new random epoch, so a client's old position can never be mistaken for
  a position in the new history.
* The ring holds at most ``size`` publications, none older than ``ttl`` seconds
  (``ttl`` 0 = no age limit); ``recover`` answers ``None`` (not recoverable) when any
  publication after the client's position has left it, and ``unrecoverable`` says why
  (an :class:`Unrecovered` reason, the ``reason`` of a ``recovered: false`` reply). Never
  a silent gap: a position is either fully recoverable or reported as not.
* ``duplicate(idem, now)`` finds the offset of a publication stored with the same
  idempotency key while it is still in the ring, so the owner answers a client's retry
  with the first offset and stores nothing.
* ``snapshot``/``restore`` carry a ring unchanged (epoch, offsets, entries, idempotency
  keys) to another process: the hand-over on planned moves.

A place in a history is a :class:`Position`, always (epoch, offset) in that order: on the
owner, in the subscriber workers' trackers, in owner requests and replies, and in what a
client sends to recover.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import itertools
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple


class Position(NamedTuple):
    """A place in a channel's history: the ``epoch`` of its ring and the last ``offset``
    up to which it goes (0: before the first publication of that epoch)."""

    epoch: str
    offset: int


class Unrecovered(enum.StrEnum):
    """Why a client's position cannot be recovered: the ``reason`` member of a subscribe
    reply with ``recovered: false`` (docs/protocol.md, "History and recovery")."""

    #: The position is of another epoch: the history it numbered is gone (its owner was
    #: killed, the ring was forgotten after being idle, the other side of a partition
    #: numbered it). Offsets of the new epoch mean nothing against the old one.
    EPOCH_CHANGED = "epoch_changed"
    #: Same epoch, but publications after the position have left the ring
    #: (``history_size`` or ``history_ttl``).
    LEFT_RING = "left_ring"
    #: Same epoch, but past the ring's last offset: the ring that continues this epoch
    #: is behind the one the client followed (after a partition healed, the kept history
    #: had fewer publications of that epoch than the client saw).
    AHEAD = "ahead"


def new_epoch() -> str:
    """A fresh epoch: 8 random bytes as hex (collisions need ~4 billion restarts)."""
    return secrets.token_hex(8)


def _weight(channel: bytes, member: int) -> int:
    digest = hashlib.blake2b(channel + struct.pack("!I", member), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(channel: str, members: Iterable[int]) -> int:
    """The owner of ``channel`` among ``members`` (rendezvous / highest-random-weight
    hashing): every process computing it over the same members agrees, and removing a
    member moves only the channels it owned. Raises ValueError for no members."""
    key = channel.encode()
    return max(members, key=lambda member: (_weight(key, member), member))


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored publication: its offset, when it was stored (monotonic seconds), its
    data (the publisher's JSON text) and the publisher's idempotency key."""

    offset: int
    stored_at: float
    data: bytes
    idem: str | None = None


class Ring:
    """The history of one channel (owner only)."""

    __slots__ = ("_entries", "_idem", "epoch", "offset", "size", "ttl")

    def __init__(self, size: int, ttl: float, epoch: str | None = None, offset: int = 0) -> None:
        if size < 1:
            raise ValueError("a ring holds at least one publication")
        self.size = size
        self.ttl = ttl
        self.epoch = epoch or new_epoch()
        self.offset = offset  # the last offset assigned (0: none yet)
        self._entries: collections.deque[Entry] = collections.deque()
        self._idem: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_offset(self) -> int:
        """The oldest offset still held; ``offset + 1`` when the ring is empty."""
        return self._entries[0].offset if self._entries else self.offset + 1

    @property
    def position(self) -> Position:
        """Where the history stands: this ring's epoch and its last offset."""
        return Position(self.epoch, self.offset)

    @property
    def next_offset(self) -> int:
        """The offset the next ``append`` assigns (so the push can carry it)."""
        return self.offset + 1

    def duplicate(self, idem: str | None, now: float) -> int | None:
        """The offset of the publication stored with ``idem`` if it is still held."""
        if idem is None:
            return None
        self.expire(now)
        return self._idem.get(idem)

    def append(self, data: bytes, now: float, idem: str | None = None) -> int:
        """Store ``data`` as the next publication (at ``next_offset``); returns its
        offset. Check ``duplicate(idem, now)`` first: a key already held is a ValueError
        here."""
        if idem is not None and idem in self._idem:
            raise ValueError(f"idempotency key {idem!r} already stored")
        self.expire(now)
        self.offset += 1
        self._entries.append(Entry(self.offset, now, data, idem))
        if idem is not None:
            self._idem[idem] = self.offset
        while len(self._entries) > self.size:
            self._evict()
        return self.offset

    def expire(self, now: float) -> None:
        """Drop publications older than ``ttl``."""
        if self.ttl > 0:
            horizon = now - self.ttl
            while self._entries and self._entries[0].stored_at < horizon:
                self._evict()

    def _evict(self) -> None:
        entry = self._entries.popleft()
        if entry.idem is not None and self._idem.get(entry.idem) == entry.offset:
            del self._idem[entry.idem]

    def recover(self, epoch: str, offset: int, now: float) -> list[Entry] | None:
        """The publications after position ``(epoch, offset)``, oldest first, or None if
        that position cannot be recovered (other epoch, a position from the future, or
        publications after it have left the ring; ``unrecoverable`` says which)."""
        if self.unrecoverable(epoch, offset, now) is not None:
            return None
        return list(self._since(offset))

    def unrecoverable(self, epoch: str, offset: int, now: float) -> Unrecovered | None:
        """Why ``(epoch, offset)`` cannot be recovered, or None when ``recover`` answers
        every publication after it."""
        self.expire(now)
        if epoch != self.epoch:
            return Unrecovered.EPOCH_CHANGED
        if offset > self.offset:
            return Unrecovered.AHEAD
        if offset < 0 or offset + 1 < self.first_offset:
            return Unrecovered.LEFT_RING
        return None

    def _since(self, offset: int) -> Iterator[Entry]:
        start = max(0, offset + 1 - self.first_offset)
        return itertools.islice(self._entries, start, None)

    def page(self, since: int, limit: int, now: float, reverse: bool = False) -> list[Entry]:
        """Up to ``limit`` publications with offsets above ``since`` (oldest first), or
        with ``reverse`` the newest ``limit`` with offsets below ``since`` (0 = from the
        newest), newest first."""
        self.expire(now)
        if not reverse:
            return list(itertools.islice(self._since(since), limit))
        below = self.offset + 1 if since <= 0 else since
        newer_first = (e for e in reversed(self._entries) if e.offset < below)
        return list(itertools.islice(newer_first, limit))

    def snapshot(self) -> RingState:
        """Everything needed to continue this history in another process."""
        return RingState(self.size, self.ttl, self.epoch, self.offset, tuple(self._entries))

    @classmethod
    def restore(cls, state: RingState) -> Ring:
        """A ring continuing ``state`` (stored times are CLOCK_MONOTONIC, which is
        system-wide on Linux, so they stay valid in another process of the host)."""
        ring = cls(state.size, state.ttl, state.epoch, state.offset)
        for entry in state.entries:
            ring._entries.append(entry)
            if entry.idem is not None:
                ring._idem[entry.idem] = entry.offset
        return ring


@dataclass(frozen=True, slots=True)
class RingState:
    """A ring's contents in transit (``Ring.snapshot`` / ``Ring.restore``)."""

    size: int
    ttl: float
    epoch: str
    offset: int
    entries: tuple[Entry, ...]
