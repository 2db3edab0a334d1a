"""Channels with history on one worker: the rings it owns, and what it has delivered.

No I/O. Two halves, both used by every worker:

* ``Sequencer`` — the owner side. For each channel this worker owns it keeps a
  ``history.Ring`` and turns a publication into the push subscribers receive, carrying
  the next offset and the ring's epoch. Answers position, recovery and history queries.
* ``Tracker`` — the subscriber side. For each channel with local subscribers it keeps
  the last (epoch, offset) delivered here and classifies each arriving publication as
  the next one, an old one (already delivered: skip), or one after a gap (repair it
  from the owner before delivering; never skip silently).

Guarantees: a ``Sequencer`` never reuses an offset within an epoch; rings survive a
planned replacement of the process through ``save``/``load`` (same epoch, same offsets),
and are handed to another owner with ``release``/``adopt``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from typing import Any

from shardws.config import NamespaceConfig
from shardws.pure.history import Ring, RingState
from shardws.pure.protocol import MAX_HISTORY_PAGE, encode_pub_at


class Sequencer:
    """The rings of the channels this worker owns, created on first use."""

    def __init__(
        self,
        options_of: Callable[[str], NamespaceConfig],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options_of = options_of
        self._clock = clock
        self._rings: dict[str, Ring] = {}
        self._used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._rings)

    def __contains__(self, channel: str) -> bool:
        return channel in self._rings

    def channels(self) -> list[str]:
        """The channels this worker holds rings for."""
        return list(self._rings)

    def ring(self, channel: str) -> Ring:
        """The channel's ring; a new one (new epoch) if this worker held none."""
        ring = self._rings.get(channel)
        if ring is None:
            options = self._options_of(channel)
            ring = self._rings[channel] = Ring(options.history_size, options.history_ttl)
        self._used[channel] = self._clock()
        return ring

    def publish(self, channel: str, data: bytes, idem: str | None) -> tuple[int, str, bytes | None]:
        """Sequence one publication of ``data`` (valid JSON). Returns (offset, epoch,
        push); push is None when ``idem`` repeats a publication still in the ring (its
        offset is returned and nothing new is stored or sent)."""
        ring = self.ring(channel)
        now = self._clock()
        earlier = ring.duplicate(idem, now)
        if earlier is not None:
            return earlier, ring.epoch, None
        offset = ring.next_offset
        push = encode_pub_at(channel, offset, ring.epoch, data)
        ring.append(push, now, idem)
        return offset, ring.epoch, push

    def position(self, channel: str, since: tuple[str, int] | None) -> dict[str, Any]:
        """The answer to a subscribe: the channel's current ``epoch`` and ``offset``, and
        with ``since`` = the client's (epoch, offset) also ``recovered`` and, when true,
        the missed ``pushes`` (as text, oldest first)."""
        ring = self.ring(channel)
        answer: dict[str, Any] = {"epoch": ring.epoch, "offset": ring.offset}
        if since is not None:
            missed = ring.recover(since[0], since[1], self._clock())
            answer["recovered"] = missed is not None
            answer["pushes"] = [entry.push.decode() for entry in missed or ()]
        return answer

    def positions(self, channels: Iterable[str]) -> dict[str, tuple[str, int]]:
        """The (epoch, offset) of those ``channels`` this worker holds a ring for (no
        ring is created: a channel without one has had nothing to lose)."""
        return {
            c: (self._rings[c].epoch, self._rings[c].offset) for c in channels if c in self._rings
        }

    def history(self, channel: str, since: int, limit: int, reverse: bool) -> dict[str, Any]:
        """A page of the ring (see ``Ring.page``): ``epoch``, ``offset`` and ``pushes``."""
        ring = self.ring(channel)
        entries = ring.page(since, min(max(limit, 0), MAX_HISTORY_PAGE), self._clock(), reverse)
        return {
            "epoch": ring.epoch,
            "offset": ring.offset,
            "pushes": [entry.push.decode() for entry in entries],
        }

    def sweep(self) -> int:
        """Expire old publications, then forget rings that are empty and unused for
        twice their TTL (a later publication starts a new epoch; a client whose position
        is that old gets ``recovered: false``). Without it an owner would keep a ring for
        every channel that ever had history. Returns how many rings were dropped."""
        now = self._clock()
        idle = []
        for channel, ring in self._rings.items():
            ring.expire(now)
            if not len(ring) and ring.ttl > 0 and now - self._used.get(channel, now) > 2 * ring.ttl:
                idle.append(channel)
        for channel in idle:
            del self._rings[channel]
            self._used.pop(channel, None)
        return len(idle)

    # -- hand-over ------------------------------------------------------------------------

    def release(self, keep: Callable[[str], bool]) -> dict[str, RingState]:
        """Remove and return the rings of the channels for which ``keep`` is false (they
        now belong to another owner)."""
        moving = [channel for channel in self._rings if not keep(channel)]
        released = {channel: self._rings.pop(channel).snapshot() for channel in moving}
        for channel in moving:
            self._used.pop(channel, None)
        return released

    def adopt(self, states: dict[str, RingState]) -> None:
        """Continue rings handed over by their previous owner. A ring this worker
        already holds for the channel is replaced unless it has stored more (a
        publication raced the hand-over: keep the newer history)."""
        now = self._clock()
        for channel, state in states.items():
            current = self._rings.get(channel)
            if (
                current is None
                or current.offset == 0
                or (current.epoch == state.epoch and current.offset <= state.offset)
            ):
                self._rings[channel] = Ring.restore(state)
                self._used[channel] = now

    def snapshot(self) -> dict[str, RingState]:
        """Every ring's state, for this slot's next process (``shardws.server.ringfile``)."""
        return {channel: ring.snapshot() for channel, ring in self._rings.items()}

    def adopt_mine(
        self, states: dict[str, RingState], mine: Callable[[str], bool]
    ) -> tuple[int, dict[str, RingState]]:
        """Adopt the rings of ``states`` for which ``mine`` is true. Returns (rings
        adopted, the other rings, to be handed to their owners)."""
        others = {channel: state for channel, state in states.items() if not mine(channel)}
        own = {channel: state for channel, state in states.items() if mine(channel)}
        self.adopt(own)
        return len(own), others


class Seen(enum.Enum):
    """How an arriving publication relates to what this worker delivered before."""

    NEXT = "next"  # deliver
    OLD = "old"  # delivered already (a recovery overlapped the live stream): skip
    GAP = "gap"  # publications before it are missing: repair from the owner first


class Tracker:
    """The last (epoch, offset) delivered on this worker, per channel with history."""

    def __init__(self) -> None:
        self._positions: dict[str, tuple[str, int]] = {}

    def position(self, channel: str) -> tuple[str, int] | None:
        return self._positions.get(channel)

    def channels(self) -> list[str]:
        """The channels with a known position (those with local subscribers)."""
        return list(self._positions)

    def check(self, channel: str, epoch: str, offset: int) -> Seen:
        """Classify a publication at (epoch, offset). NEXT also records it as delivered.
        A new epoch (the owner lost its history) starts over: its offset 1 is NEXT, a
        later offset is a GAP from (epoch, 0)."""
        known = self._positions.get(channel)
        if known is None or (known[0] != epoch and offset == 1):
            self._positions[channel] = (epoch, offset)
            return Seen.NEXT
        if known[0] != epoch:
            return Seen.GAP
        if offset <= known[1]:
            return Seen.OLD
        if offset == known[1] + 1:
            self._positions[channel] = (epoch, offset)
            return Seen.NEXT
        return Seen.GAP

    def gap_base(self, channel: str, epoch: str) -> int:
        """The offset to recover from for a GAP in ``epoch``."""
        known = self._positions.get(channel)
        return known[1] if known is not None and known[0] == epoch else 0

    def advance(self, channel: str, epoch: str, offset: int) -> None:
        """Record (epoch, offset) as delivered (after a repair or a recovery)."""
        known = self._positions.get(channel)
        if known is None or known[0] != epoch or offset > known[1]:
            self._positions[channel] = (epoch, offset)

    def forget(self, channel: str) -> None:
        """The last local subscriber left."""
        self._positions.pop(channel, None)
