"""Which processes have subscribers of a channel, as a channel's owner knows it: the
decisions behind the ``channel_occupied`` and ``channel_vacated`` webhooks (no I/O).

Each worker tells a channel's owner when the channel gets its first subscriber there and
when it loses its last (its hub's first- and last-subscriber rule); the owner keeps the
set of such workers per channel. Keyed by member id (``pure.cluster``), so the set is
cluster-wide.

Guarantees:

* :meth:`Occupancy.occupy` is true exactly when a channel goes from no worker to one,
  :meth:`Occupancy.vacate` exactly when it goes from one to none: two workers getting a
  first subscriber make one occupied, and the channel is vacated once, after the last.
* Telling the same thing twice changes nothing (a retried notice is harmless).
* :meth:`Occupancy.restore` puts a worker back without deciding anything (an owner that
  restarted, or a channel that moved to it, is told what already was).
* :meth:`Occupancy.drop_member` removes a process that is gone and returns the channels
  it leaves vacated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class Occupancy:
    """channel (internal name) -> the members with subscribers of it."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, set[int]] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._channels

    def __len__(self) -> int:
        return len(self._channels)

    def occupy(self, channel: str, member: int) -> bool:
        """``member`` has subscribers of ``channel``; true if the channel was vacant."""
        members = self._channels.get(channel)
        if members is None:
            self._channels[channel] = {member}
            return True
        members.add(member)
        return False

    def restore(self, channel: str, member: int) -> None:
        """Like :meth:`occupy`, deciding nothing."""
        self._channels.setdefault(channel, set()).add(member)

    def vacate(self, channel: str, member: int) -> bool:
        """``member`` has no subscriber of ``channel`` left; true if it was the last."""
        members = self._channels.get(channel)
        if members is None or member not in members:
            return False
        members.discard(member)
        if members:
            return False
        del self._channels[channel]
        return True

    def members(self) -> set[int]:
        """Every member with subscribers of some channel."""
        return {member for members in self._channels.values() for member in members}

    def channels_of(self, member: int) -> Iterator[str]:
        """The channels ``member`` has subscribers of."""
        return (channel for channel, members in self._channels.items() if member in members)

    def drop_member(self, member: int) -> list[str]:
        """Forget ``member`` (its process is gone); the channels now vacated."""
        vacated = []
        for channel in list(self.channels_of(member)):
            if self.vacate(channel, member):
                vacated.append(channel)
        return vacated

    def forget(self, moved: Callable[[str], bool]) -> None:
        """Forget the channels for which ``moved(channel)`` (no longer this owner's)."""
        for channel in [c for c in self._channels if moved(c)]:
            del self._channels[channel]
