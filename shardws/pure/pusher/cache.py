"""Cache channels' last events, as each channel's owner keeps them (no I/O).

A cache channel (``cache-``, ``private-cache-``, ``presence-cache-``,
``private-encrypted-cache-``) remembers its last event; a new subscriber gets it right
after ``subscription_succeeded``, or ``pusher:cache_miss`` when there is none (Pusher
"Cache channels"). Only events published to the channel are kept (Pusher's server
events; Soketi keeps HTTP API events only), each for the app's ``cache_ttl``.

Guarantees: :meth:`LastEvents.get` never returns an event older than the TTL, and
:meth:`LastEvents.expire` bounds memory to the channels written within the last TTL.
"""

from __future__ import annotations

from collections.abc import Callable


class LastEvents:
    """The last event (encoded, ready to send) of each cache channel of one app."""

    __slots__ = ("_events", "_ttl")

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        # channel -> (expires at, encoded event); insertion order is write order
        self._events: dict[str, tuple[float, bytes]] = {}

    def store(self, channel: str, event: bytes, now: float) -> None:
        """Keep ``event`` as ``channel``'s last one, from ``now`` (monotonic seconds)."""
        # Re-inserted at the end, so the dict stays in expiry order for expire().
        self._events.pop(channel, None)
        self._events[channel] = (now + self._ttl, event)

    def get(self, channel: str, now: float) -> bytes | None:
        """``channel``'s last event if it is younger than the TTL, else None."""
        entry = self._events.get(channel)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._events[channel]
            return None
        return entry[1]

    def expire(self, now: float) -> int:
        """Forget the events older than the TTL (call it now and then): how many."""
        expired = 0
        for channel, (expires, _) in list(self._events.items()):
            if expires > now:
                break  # write order is expiry order: the rest are younger
            del self._events[channel]
            expired += 1
        return expired

    def forget(self, which: Callable[[str], bool]) -> int:
        """Forget the events of the channels ``which`` says (their owner changed): how
        many."""
        gone = [channel for channel in self._events if which(channel)]
        for channel in gone:
            del self._events[channel]
        return len(gone)

    def __len__(self) -> int:
        return len(self._events)
