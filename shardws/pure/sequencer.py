"""Channels with history on one worker: the rings it owns, and what it has delivered.

No I/O. Two halves, both used by every worker:

* ``Sequencer`` — the owner side. For each channel this worker owns it keeps a
  ``history.Ring`` and gives a publication its position: the next offset and the
  ring's epoch. Answers position, recovery and history queries.
* ``Tracker`` — the subscriber side. For each channel with local subscribers it keeps
  the last position delivered here and classifies each arriving publication as
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

from shardws.config import NamespaceConfig
from shardws.pure.control import HistoryPageReply, HistoryPositionReply
from shardws.pure.history import Entry, Position, Ring, RingState
from shardws.pure.protocol import MAX_HISTORY_PAGE
from shardws.pure.publication import Publication


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

    def publish(
        self, channel: str, data: bytes, idem: str | None
    ) -> tuple[Position, Publication | None]:
        """Sequence one publication of ``data`` (valid JSON). Returns (its position, the
        publication at that position); the publication is None when ``idem`` repeats one
        still in the ring (its position is returned and nothing new is stored or sent)."""
        ring = self.ring(channel)
        now = self._clock()
        earlier = ring.duplicate(idem, now)
        if earlier is not None:
            return Position(ring.epoch, earlier), None
        position = Position(ring.epoch, ring.append(data, now, idem))
        return position, Publication(data, position=position)

    def position(self, channel: str, since: Position | None) -> HistoryPositionReply:
        """The answer to a subscribe: the channel's current position, and with ``since``
        (the client's position) also whether it is ``recovered``: when it is, the missed
        publications (oldest first); when not, the ``reason``."""
        ring = self.ring(channel)
        if since is None:
            return HistoryPositionReply(ring.position)
        reason = ring.unrecoverable(since.epoch, since.offset, self._clock())
        if reason is not None:
            return HistoryPositionReply(ring.position, False, reason=reason)
        missed = ring.recover(since.epoch, since.offset, self._clock())
        assert missed is not None  # unrecoverable() just said it is recoverable
        return HistoryPositionReply(ring.position, True, _publications(ring.epoch, missed))

    def positions(self, channels: Iterable[str]) -> dict[str, Position]:
        """The positions of those ``channels`` this worker holds a ring for (no ring is
        created: a channel without one has had nothing to lose)."""
        return {c: self._rings[c].position for c in channels if c in self._rings}

    def history(self, channel: str, since: int, limit: int, reverse: bool) -> HistoryPageReply:
        """A page of the ring (see ``Ring.page``) and the channel's current position."""
        ring = self.ring(channel)
        entries = ring.page(since, min(max(limit, 0), MAX_HISTORY_PAGE), self._clock(), reverse)
        return HistoryPageReply(ring.position, _publications(ring.epoch, entries))

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


def _publications(epoch: str, entries: Iterable[Entry]) -> tuple[Publication, ...]:
    return tuple(Publication(e.data, position=Position(epoch, e.offset)) for e in entries)


class Seen(enum.Enum):
    """How an arriving publication relates to what this worker delivered before."""

    NEXT = "next"  # deliver
    OLD = "old"  # delivered already (a recovery overlapped the live stream): skip
    GAP = "gap"  # publications before it are missing: repair from the owner first


class Tracker:
    """The last position delivered on this worker, per channel with history."""

    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}

    def position(self, channel: str) -> Position | None:
        return self._positions.get(channel)

    def channels(self) -> list[str]:
        """The channels with a known position (those with local subscribers)."""
        return list(self._positions)

    def check(self, channel: str, at: Position) -> Seen:
        """Classify a publication at position ``at``. NEXT also records it as delivered.
        A new epoch (the owner lost its history) starts over: its offset 1 is NEXT, a
        later offset is a GAP from (epoch, 0)."""
        known = self._positions.get(channel)
        if known is None or (known.epoch != at.epoch and at.offset == 1):
            self._positions[channel] = at
            return Seen.NEXT
        if known.epoch != at.epoch:
            return Seen.GAP
        if at.offset <= known.offset:
            return Seen.OLD
        if at.offset == known.offset + 1:
            self._positions[channel] = at
            return Seen.NEXT
        return Seen.GAP

    def gap_base(self, channel: str, epoch: str) -> int:
        """The offset to recover from for a GAP in ``epoch``."""
        known = self._positions.get(channel)
        return known.offset if known is not None and known.epoch == epoch else 0

    def advance(self, channel: str, to: Position) -> None:
        """Record ``to`` as delivered (after a repair or a recovery)."""
        known = self._positions.get(channel)
        if known is None or known.epoch != to.epoch or to.offset > known.offset:
            self._positions[channel] = to

    def forget(self, channel: str) -> None:
        """The last local subscriber left."""
        self._positions.pop(channel, None)
