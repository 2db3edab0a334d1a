"""Request/reply between bus members: send one request to several members' inboxes
and collect their answers until a deadline (the message codecs are
``shardws.pure.control``).

At most once, like the bus: a member that is busy, dead or not yet attached does not
answer in time, and :meth:`Requests.ask` reports it as missing instead of waiting longer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shardws.pure.control import OwnerRefusal, OwnerReply, OwnerRequest, encode_request

log = logging.getLogger("shardws.requests")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)


@dataclass(eq=False)
class _Pending:
    expected: set[int]
    done: asyncio.Future[None]
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)


class Requests:
    """One member's outstanding requests, matched with their replies by id.

    ``send(member, payload)`` must queue ``payload`` for ``member``'s inbox (the bus).
    Feed every reply that reaches this member's inbox to :meth:`on_reply`.
    """

    def __init__(self, member: int, send: Callable[[int, bytes], None]) -> None:
        self._member = member
        self._send = send
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}

    async def ask(
        self, members: Iterable[int], op: str, args: Mapping[str, Any], timeout: float
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """Send request ``op`` to every member in ``members`` and wait until all have
        answered or ``timeout`` seconds passed. Returns (the answers by member, the
        members that did not answer in time)."""
        expected = set(members)
        if not expected:
            return {}, set()
        request_id = next(self._ids)
        pending = _Pending(expected, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        payload = encode_request(op, request_id, self._member, args)
        for member in sorted(expected):
            self._send(member, payload)
        try:
            await asyncio.wait_for(asyncio.shield(pending.done), timeout)
        except TimeoutError:
            pass
        finally:
            del self._pending[request_id]
        return pending.answers, expected - pending.answers.keys()

    async def call(
        self, members: Iterable[int], request: OwnerRequest[_ReplyT], timeout: float
    ) -> tuple[dict[int, _ReplyT | OwnerRefusal], set[int]]:
        """:meth:`ask` for an owner operation: the answers decoded into the request's
        reply type (or a refusal). An answer that does not decode (a bug in the sender)
        is logged and its member reported as missing."""
        answers, missing = await self.ask(members, request.op, request.fields(), timeout)
        replies: dict[int, _ReplyT | OwnerRefusal] = {}
        for member, fields in answers.items():
            try:
                replies[member] = request.decode_reply(fields)
            except ValueError as exc:
                log.warning("bad %s answer from member %d: %s", request.op, member, exc)
                missing.add(member)
        return replies, missing

    def on_reply(self, origin: int, message: Mapping[str, Any]) -> None:
        """A decoded reply from member ``origin``; late and unexpected ones are ignored."""
        pending = self._pending.get(message["id"])
        if pending is None or origin not in pending.expected:
            return
        pending.answers[origin] = message["reply"]
        if pending.expected <= pending.answers.keys() and not pending.done.done():
            pending.done.set_result(None)
