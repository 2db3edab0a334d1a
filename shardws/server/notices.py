"""Fire-and-forget owner requests (the ingress's PUSH form), held while the channel's owner
is being replaced.

The admin tells a history channel's owner to store an ingress publication without
waiting for an answer (``history.publish`` with id 0). A request published on an inbox
nobody subscribes to vanishes, and one that reaches a draining owner after it closed its
bus is lost with nothing to tell: so a request for an owner that is not READY (its
process draining, exited, or its next one booting: a reload, a restart) is held here and
sent once the channel's owner -- computed again then, since a change of the worker count
moves channels -- is READY, when the next process has continued the saved rings.

Guarantees:

* Order: a channel's requests leave in the order they came (a channel whose requests
  are held holds its later ones behind them, even for an owner that is READY).
* Bounded: a request is held at most ``HOLD_LIMIT`` seconds and at most ``MAX_HELD``
  are held; past either it is sent as it would have been without holding (and may be
  lost, as before: counted by no one, see docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shardws.pure.history import owner_of

#: Seconds a request is held at most.
HOLD_LIMIT = 15.0
#: Requests held at most (beyond that they are sent at once).
MAX_HELD = 100_000
#: Seconds between checks of the held channels' owners.
CHECK_INTERVAL = 0.02


class HeldNotices:
    """Sends ``(channel, payload)`` to the channel's owner, holding it while the owner is
    not READY. ``owners()`` gives the members owning channels (``Members.owners``),
    ``ready(member)`` whether it is READY (``Members.inbox_live``), ``send(member,
    payload)`` publishes on its inbox."""

    def __init__(
        self,
        owners: Callable[[], tuple[int, ...]],
        ready: Callable[[int], bool],
        send: Callable[[int, bytes], None],
    ) -> None:
        self._owners = owners
        self._ready = ready
        self._send = send
        self._held: dict[str, list[tuple[float, bytes]]] = {}
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.held = 0  # requests that had to wait (a counter, for the stats)

    def send(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to ``channel``'s owner now, or once it is READY."""
        queue = self._held.get(channel)
        if queue is None:
            owner = owner_of(channel, self._owners())
            if self._ready(owner) or self._count >= MAX_HELD:
                self._send(owner, payload)
                return
            queue = self._held[channel] = []
        queue.append((time.monotonic(), payload))
        self._count += 1
        self.held += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(CHECK_INTERVAL, self._check)

    def _check(self) -> None:
        self._timer = None
        owners = self._owners()
        expired = time.monotonic() - HOLD_LIMIT
        for channel in list(self._held):
            queue = self._held[channel]
            owner = owner_of(channel, owners)
            if not self._ready(owner) and queue[0][0] > expired:
                continue
            del self._held[channel]
            self._count -= len(queue)
            for _at, payload in queue:
                self._send(owner, payload)
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(CHECK_INTERVAL, self._check)

    def close(self) -> None:
        """Send what is held as it is (the admin is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        owners = self._owners()
        for channel, queue in self._held.items():
            for _at, payload in queue:
                self._send(owner_of(channel, owners), payload)
        self._held.clear()
        self._count = 0
