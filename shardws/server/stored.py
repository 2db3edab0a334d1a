"""Stored publications: a backend's publication to history channels, answered only once
each channel's owner has stored it (the HTTP API's ``POST /api/publish``).

The admin asks each channel's owner (``history.publish``, ``pure.control``) through its
bus inbox and waits for the answer, which carries the offset and epoch. An owner that
does not answer -- being replaced by a reload (its inbox is not live while the next
process boots), killed, moved by a change of the worker count -- is asked again, with
the same idempotency key, until ``STORE_TIMEOUT`` passes.

Guarantees:

* A position returned for a channel means that channel's owner stored the publication
  in its ring (a later owner crash loses it with the whole history: a new epoch, which
  subscribers are told of).
* No double: every attempt for a request carries one ``idem`` key, so an owner that
  stored an earlier attempt (whose answer was lost or came late) answers the first
  offset and stores nothing new (``Ring.duplicate``).
* Bounded: at most ``STORE_TIMEOUT`` seconds and ``MAX_ATTEMPTS`` requests per channel;
  a channel not confirmed by then is reported, and may or may not have been stored --
  the caller must say so (503) and the backend retry with the same ``idem``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from shardws.pure.busframe import inbox_topic
from shardws.pure.control import HistoryPublishReply, HistoryPublishRequest
from shardws.pure.history import Position, owner_of

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.bus.requests import Requests

#: Seconds a publication waits for its channels' owners before it is reported unconfirmed
#: (a reload's replacement of an owner takes about a second; a Publisher's HTTP timeout
#: is 10 s).
STORE_TIMEOUT = 5.0
#: Seconds one request to an owner waits for its answer before it is asked again (an
#: owner that closed its bus while draining never answers).
ATTEMPT_TIMEOUT = 1.0
#: Pause between attempts (an owner that refused is being replaced or moved).
RETRY_PAUSE = 0.05
#: Requests per channel at most (the time bound usually ends the attempts first).
MAX_ATTEMPTS = 50


class StoredPublisher:
    """Stores publications through their channels' owners and waits for the answers.

    ``owners()`` gives the members that own channels now (``Members.owners``), ``bus()``
    this process's bus (for ``when_subscribed``; None before it started), ``requests``
    the process's request/reply table, fed with its inbox's replies."""

    def __init__(
        self,
        requests: Requests,
        owners: Callable[[], tuple[int, ...]],
        bus: Callable[[], Bus | None],
        timeout: float = STORE_TIMEOUT,
    ) -> None:
        self._requests = requests
        self._owners = owners
        self._bus = bus
        self._timeout = timeout
        self.stored = 0  # channel publications confirmed stored
        self.unconfirmed = 0  # channel publications given up on (answered 503)

    async def store(
        self, channels: Iterable[str], data: bytes, idem: str
    ) -> tuple[dict[str, Position], list[str]]:
        """Store ``data`` in every channel of ``channels`` (each with history) under
        ``idem``. Returns (the position of each confirmed channel, the channels not
        confirmed within the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        wanted = list(dict.fromkeys(channels))  # a channel named twice is stored once
        results = await asyncio.gather(
            *(self._store_one(HistoryPublishRequest(c, data, idem), deadline) for c in wanted)
        )
        positions = {c: p for c, p in zip(wanted, results, strict=True) if p is not None}
        missing = [c for c, p in zip(wanted, results, strict=True) if p is None]
        self.stored += len(positions)
        self.unconfirmed += len(missing)
        return positions, missing

    async def _store_one(self, request: HistoryPublishRequest, deadline: float) -> Position | None:
        loop = asyncio.get_running_loop()
        for _ in range(MAX_ATTEMPTS):
            remaining = deadline - loop.time()
            bus = self._bus()
            if remaining <= 0 or bus is None:
                return None
            # Recomputed at every attempt: a change of the worker count moves channels.
            owner = owner_of(request.channel, self._owners())
            waiting = bus.when_subscribed(inbox_topic(owner))
            if waiting is not None:
                # A request to an inbox nobody subscribes to (the owner's next process
                # still booting) vanishes: wait for it instead of timing out.
                try:
                    await asyncio.wait_for(asyncio.shield(waiting), remaining)
                except TimeoutError:
                    return None
                continue
            replies, _missing = await self._requests.call(
                {owner}, request, min(ATTEMPT_TIMEOUT, remaining)
            )
            reply = replies.get(owner)
            if isinstance(reply, HistoryPublishReply):
                return reply.position
            # A refusal (not the owner any more, or not yet) or no answer: ask again.
            await asyncio.sleep(min(RETRY_PAUSE, max(deadline - loop.time(), 0.0)))
        return None
