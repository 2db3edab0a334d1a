"""The hub: channel -> this worker's local subscribers.

No I/O. The hub tells its owner when a channel gets its first local subscriber
(``on_first``: subscribe on the bus, returns a future that resolves once that is live)
and when it loses its last (``on_last``: unsubscribe on the bus).

Guarantees:

* ``add`` returns an awaitable that resolves True once publications from every worker
  reach this subscriber, or False if that could not be confirmed (a caller that
  promises liveness removes the subscriber instead of reporting it live). Subscribers
  joining while the channel's bus subscription is still pending share that same pending
  future, so none is told "live" too early; once every subscriber of a failed round is
  removed, the next one starts a new bus subscription and barrier.
* ``sinks`` returns the subscribers' sinks in subscription order; the list is cached and
  rebuilt only after membership changed, so fan-out pays nothing per publication and a
  mass disconnect costs O(1) per connection.
* ``groups`` returns the same sinks grouped by their member's wire format on the
  channel (``wire_of(member, channel)``, given to the hub), one group per format in order of first
  subscription, cached like ``sinks``: delivery encodes a publication once per group.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio  # only the type of the bus's liveness future


class _Channel:
    __slots__ = ("groups", "live", "members", "sinks")

    def __init__(self, live: asyncio.Future[bool]) -> None:
        self.members: dict[Hashable, Any] = {}
        self.sinks: list[Any] | None = None
        self.groups: list[tuple[Any, list[Any]]] | None = None
        self.live = live


def _no_wire(_member: Hashable, _channel: str) -> None:
    return None


class Hub:
    """Local subscriptions of one worker."""

    def __init__(
        self,
        on_first: Callable[[str], asyncio.Future[bool]],
        on_last: Callable[[str], None],
        wire_of: Callable[[Any, str], Hashable] = _no_wire,
    ) -> None:
        """``wire_of(member, channel)`` names a member's wire format on a channel (any
        hashable; members without one share the group ``None``)."""
        self._on_first = on_first
        self._wire_of = wire_of
        self._on_last = on_last
        self._channels: dict[str, _Channel] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, channel: str) -> bool:
        return channel in self._channels

    def add(self, channel: str, member: Hashable, sink: Any) -> asyncio.Future[bool]:
        """Add ``member`` (writing through ``sink``) to ``channel``; returns the channel's
        liveness future (see module docstring). Adding an existing member is a no-op.
        A ``sink`` of None makes a *pending* member: it counts as a subscriber (the bus
        subscription is made and kept) but receives nothing until ``activate`` (used
        while a recovering subscriber's missed publications are fetched)."""
        state = self._channels.get(channel)
        if state is None:
            state = _Channel(self._on_first(channel))
            self._channels[channel] = state
        if member not in state.members:
            state.members[member] = sink
            state.sinks = state.groups = None
        return state.live

    def remove(self, channel: str, member: Hashable) -> bool:
        """Remove ``member`` from ``channel``; returns whether it was there."""
        state = self._channels.get(channel)
        if state is None or member not in state.members:
            return False
        del state.members[member]
        state.sinks = state.groups = None
        if not state.members:
            del self._channels[channel]
            self._on_last(channel)
        return True

    def sinks(self, channel: str) -> list[Any]:
        """The sinks of ``channel``'s local subscribers (empty if none). Do not mutate."""
        state = self._channels.get(channel)
        if state is None:
            return []
        if state.sinks is None:
            state.sinks = [sink for sink in state.members.values() if sink is not None]
        return state.sinks

    def groups(self, channel: str) -> list[tuple[Any, list[Any]]]:
        """``channel``'s sinks grouped by wire format: ``[(wire, sinks)]``, no empty
        group (empty if no sinks). Do not mutate."""
        state = self._channels.get(channel)
        if state is None:
            return []
        groups = state.groups
        if groups is None:
            by_wire: dict[Hashable, list[Any]] = {}
            wire_of = self._wire_of
            for member, sink in state.members.items():
                if sink is not None:
                    by_wire.setdefault(wire_of(member, channel), []).append(sink)
            groups = state.groups = list(by_wire.items())
        return groups

    def activate(self, channel: str, member: Hashable, sink: Any) -> bool:
        """Start delivering to a pending ``member`` through ``sink``; False if it is no
        longer subscribed."""
        state = self._channels.get(channel)
        if state is None or member not in state.members:
            return False
        state.members[member] = sink
        state.sinks = state.groups = None
        return True

    def members(self, channel: str) -> list[Any]:
        """The members of ``channel`` (pending ones included), in subscription order."""
        state = self._channels.get(channel)
        return [] if state is None else list(state.members)

    def channel_counts(self, prefix: str = "") -> dict[str, int]:
        """Local subscriber count of every channel whose name starts with ``prefix``."""
        return {
            name: len(state.members)
            for name, state in self._channels.items()
            if name.startswith(prefix)
        }

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state.members)
