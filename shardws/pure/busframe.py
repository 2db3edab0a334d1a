"""The host bus's wire format: topics and frames (no I/O).

One format for every process that reads or writes the bus: the host bus
(``shardws.bus.host``) encodes and decodes it, the cluster bridge checks frames from
peers with :func:`well_formed` before they can reach a worker.

Topics are terminated byte prefixes, so ``news`` never matches ``news2``:

* ``c<channel>\\0`` — publications of a channel,
* ``u<user>\\0``    — messages for a user's connections,
* ``i<member>\\0``  — a member's inbox,
* ``s<member>.<n>\\0`` — subscription barriers.

A frame is ``topic + HEADER + (u32 length + payload)*``. ``HEADER`` is the origin member
id (cluster-wide, ``shardws.pure.cluster.member_id``), the origin's incarnation (random
per process start), the per-(origin, topic) sequence number of the first payload, the
payload count, and the wall-clock ns at which the batch's first payload was published.
"""

from __future__ import annotations

import struct

KIND_CHANNEL = ord("c")
KIND_INBOX = ord("i")
KIND_SYNC = ord("s")
KIND_USER = ord("u")

#: origin member id, incarnation, first seq, count, stamp (wall-clock ns)
HEADER = struct.Struct("!IIQIQ")
ORIGIN = struct.Struct("!I")  # the header's first field, read alone by the bridge
LENGTH = struct.Struct("!I")

_CHECKED_KINDS = frozenset({KIND_CHANNEL, KIND_USER, KIND_INBOX, KIND_SYNC})


def channel_topic(channel: str) -> bytes:
    """Bus topic of a channel's publications."""
    return b"c" + channel.encode() + b"\0"


def user_topic(user: str) -> bytes:
    """Bus topic of the messages for ``user``'s connections (``user`` must pass
    ``auth.user_id_error``: no NUL, so the topic stays terminated)."""
    return b"u" + user.encode() + b"\0"


def inbox_topic(member: int) -> bytes:
    """Bus topic of a member's inbox."""
    return b"i%d\0" % member


def well_formed(frame: bytes, end: int) -> bool:
    """True if ``frame`` is a bus frame a bus reader can parse: a terminated topic of a
    channel, user, inbox or barrier kind, the header, and exactly ``count``
    length-prefixed payloads (``end`` is the offset after the topic's NUL, 0 if none)."""
    if end < 2 or frame[0] not in _CHECKED_KINDS or len(frame) < end + HEADER.size:
        return False
    count = HEADER.unpack_from(frame, end)[3]
    offset = end + HEADER.size
    size = len(frame)
    for _ in range(count):
        if offset + 4 > size:
            return False
        offset += 4 + LENGTH.unpack_from(frame, offset)[0]
    return offset == size
