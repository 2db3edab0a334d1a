"""Control messages between the processes of one host, carried by the bus (no I/O).

Two kinds, both sent by the admin process today and read by the workers:

* **User topics** (``bus.user_topic(user)``; a worker subscribes while the user has a
  connection there). Each payload is one tag byte and a body:

  - ``p`` + a client push: a user-targeted publication, written to every connection of
    the user as is (encoded once by the sender, never re-serialized);
  - ``d`` + u16 close code + UTF-8 reason: close every connection of the user.

* **Inboxes** (``bus.inbox_topic(member)``): one JSON object per payload. A request is
  ``{"op": ..., "id": N, "reply_to": M, ...arguments}``; the answer goes to the inbox of
  member ``M`` as ``{"id": N, "reply": {...}}``. ``shardws.bus.requests.Requests``
  sends a request to several members and collects their answers until a deadline.

Guarantees: decoders raise ``ValueError`` (never anything else) on a payload they do
not understand, so a receiver can count and skip it. Request/reply is at-most-once like
the bus itself: a member that is busy, dead or not yet attached simply does not answer
in time, and ``Requests.ask`` reports it as missing instead of waiting longer.

Ops:

* ``channels`` (arguments ``prefix``, ``limit``): the worker's channels whose name
  starts with ``prefix`` and their local subscriber counts, at most ``limit`` of them
  (the first by name); :func:`merge_channels` sums the answers.
"""

from __future__ import annotations

import heapq
import json
import logging
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

log = logging.getLogger("shardws.control")

_CODE = struct.Struct("!H")
_PUSH = b"p"
_DISCONNECT = b"d"

#: Most channels a ``channels`` answer (per worker, and merged) lists.
MAX_CHANNELS = 10_000


class Disconnect(NamedTuple):
    """Close every connection of the user with ``code`` and ``reason``."""

    code: int
    reason: str


def encode_user_push(push: bytes) -> bytes:
    """User-topic payload carrying ``push`` (the exact bytes each connection receives)."""
    return _PUSH + push


def encode_disconnect(code: int, reason: str) -> bytes:
    """User-topic payload: close the user's connections with ``code`` (0..65535) and
    ``reason``."""
    return _DISCONNECT + _CODE.pack(code) + reason.encode()


def decode_user_message(payload: bytes) -> bytes | Disconnect:
    """A user-topic payload -> the client push to deliver, or a :class:`Disconnect`."""
    tag = payload[:1]
    if tag == _PUSH:
        return payload[1:]
    if tag == _DISCONNECT and len(payload) >= 1 + _CODE.size:
        (code,) = _CODE.unpack_from(payload, 1)
        try:
            reason = payload[1 + _CODE.size :].decode()
        except UnicodeDecodeError:
            raise ValueError("disconnect reason is not UTF-8") from None
        return Disconnect(code, reason)
    raise ValueError(f"unknown user message tag {tag!r}")


# --------------------------------------------------------------------------- inboxes


def encode_request(op: str, request_id: int, reply_to: int, args: Mapping[str, Any]) -> bytes:
    """Inbox payload asking for ``op``; the answer goes to member ``reply_to``'s inbox."""
    return json.dumps({**args, "op": op, "id": request_id, "reply_to": reply_to}).encode()


def encode_reply(request_id: int, reply: Mapping[str, Any]) -> bytes:
    """Inbox payload answering request ``request_id``."""
    return json.dumps({"id": request_id, "reply": reply}, ensure_ascii=False).encode()


def decode_inbox(payload: bytes) -> dict[str, Any]:
    """An inbox payload -> a request (has ``op``, an int ``id`` and ``reply_to``) or a
    reply (has an int ``id`` and a dict ``reply``)."""
    message = json.loads(payload)  # ValueError (UnicodeDecodeError, JSONDecodeError)
    if not isinstance(message, dict) or not isinstance(message.get("id"), int):
        raise ValueError("inbox message without an integer id")
    if "op" in message:
        if not isinstance(message["op"], str) or not isinstance(message.get("reply_to"), int):
            raise ValueError("request without a string op and an integer reply_to")
    elif not isinstance(message.get("reply"), dict):
        raise ValueError("inbox message is neither a request nor a reply")
    return message


def inbox_messages(origin: int, payloads: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The decoded messages among ``payloads`` that member ``origin`` sent to an inbox;
    undecodable ones (a bug in the sender) are logged and skipped."""
    for payload in payloads:
        try:
            yield decode_inbox(payload)
        except ValueError as exc:
            log.warning("bus: bad inbox message from member %d: %s", origin, exc)


# --------------------------------------------------------------------------- channels


def channels_arguments(request: Mapping[str, Any]) -> tuple[str, int]:
    """The (prefix, limit) of a ``channels`` request; ValueError if mistyped."""
    prefix = request.get("prefix", "")
    limit = request.get("limit", MAX_CHANNELS)
    if not isinstance(prefix, str) or not isinstance(limit, int) or limit < 1:
        raise ValueError("channels: prefix must be a string and limit an integer >= 1")
    return prefix, min(limit, MAX_CHANNELS)


def channels_answer(counts: Mapping[str, int], limit: int) -> dict[str, Any]:
    """A worker's answer to ``channels`` from its local ``counts`` (already filtered by
    the request's prefix): ``{"channels": {name: count}, "truncated": bool}`` with at
    most ``limit`` names, the first by name (so a truncated answer is exact up to its
    last name)."""
    names = list(counts)
    truncated = len(names) > limit
    # nsmallest: O(n log limit), not a full sort, for a worker with very many channels.
    chosen = heapq.nsmallest(limit, names) if truncated else sorted(names)
    return {"channels": {name: counts[name] for name in chosen}, "truncated": truncated}


def merge_channels(answers: Iterable[Mapping[str, Any]], limit: int) -> tuple[dict[str, int], bool]:
    """Sum workers' ``channels`` answers -> (counts by name, truncated). Every count in
    the result is exact over the answers given: names past the last name of any
    truncated answer are dropped (that worker may have had them too), then at most
    ``limit`` names are kept, the first by name."""
    totals: dict[str, int] = {}
    cut: str | None = None
    truncated = False
    for answer in answers:
        counts = answer.get("channels")
        if not isinstance(counts, dict):
            continue
        for name, count in counts.items():
            if isinstance(count, int):
                totals[name] = totals.get(name, 0) + count
        if answer.get("truncated") and counts:
            truncated = True
            last = max(counts)
            cut = last if cut is None else min(cut, last)
    names = sorted(name for name in totals if cut is None or name <= cut)
    if len(names) > limit or len(names) < len(totals):
        truncated = True
    return {name: totals[name] for name in names[:limit]}, truncated
